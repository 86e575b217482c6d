"""Going on with a trained embedding (a loaded file, or a trainer's output in the same graph): its vectors are where
training starts again, the regularizer still pulls toward the run's original Cross-Init start (carried by a trainer's
output; for a file, recomputed from the names it records, with the same CLIP), `steps` in the metadata counts every
step, and the draws go on where the earlier run's would have (same seed and batch size). AdamW's moments are not
stored in embedding files: the optimizer state starts fresh."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from . import names as name_lists
from .embedding import CrossInitEmbedding
from .embedding_names import trained_steps
from .errors import InvalidInputError
from .initialization import cross_initialize

log = logging.getLogger(__name__)

# a file's own run figures, which a further run must not carry over (it sets its own where they apply)
STALE_RUN_KEYS = frozenset({"peak_vram_mib", "stopped_at_step", "fp16_skipped_steps", "continued_from_steps", "source_file"})
# the earlier run's draws are replayed one by one; no real run comes near this
MAX_PREVIOUS_STEPS = 100_000


@dataclass(frozen=True)
class Continuation:
    embedding: CrossInitEmbedding  # what this run trains: the vectors it starts from, the start it pulls toward
    previous_steps: int  # steps the embedding was already trained for (0: a fresh start)


def recorded_names(metadata: dict[str, str]) -> list[str] | None:
    """The names the file's start was averaged from, as its metadata records them (None: not recorded)."""
    label = metadata.get("init_names")
    if label in name_lists.NAME_LIST_FILES:
        return list(name_lists.builtin_names(label))
    if label == name_lists.TYPED and metadata.get("init_names_text"):
        return name_lists.parse_name_lines(metadata["init_names_text"])
    return None


def continue_from(clip: Any, embedding: CrossInitEmbedding) -> Continuation:
    """Where a run on `embedding` starts: Cross-Init Embedding Init's output as it is; a trained embedding (a Cross-Init
    run's output or file: metadata `method` and `steps`) with its step count and its original start, recomputed with
    `clip` for a file; any other file pulls toward its own vectors. The embedding must match the CLIP's encoders."""
    metadata = embedding.metadata
    previous = (trained_steps(metadata) or 0) if metadata.get("method") == "cross_initialization" else 0
    if not previous and embedding.init_vectors is not None:
        return Continuation(embedding, 0)
    source = metadata.get("source_file", "the embedding")
    if previous > MAX_PREVIOUS_STEPS:
        raise InvalidInputError(
            f"embedding: {source} says it was trained for {previous} steps (metadata steps), more than the "
            f"{MAX_PREVIOUS_STEPS} a run can go on from; train from Cross-Init Embedding Init instead."
        )
    start = embedding.init_vectors
    names = recorded_names(metadata)
    if start is None and previous and names is not None:
        with torch.inference_mode():
            start = cross_initialize(clip, embedding.num_tokens, names, metadata.get("init_source", "names")).vectors
        log.info("Cross-Init: continuing %s from step %d; its start is recomputed from its %s names; the optimizer "
                 "state starts fresh", source, previous, metadata.get("init_names"))
    elif start is not None:
        log.info("Cross-Init: continuing %s from step %d toward the start it carries; the optimizer state starts fresh",
                 source, previous)
    else:
        log.warning("Cross-Init: %s does not record its Cross-Init start (init_names); the regularizer pulls toward "
                    "the loaded vectors instead", source)
    kept = {k: v for k, v in metadata.items() if k not in STALE_RUN_KEYS}
    return Continuation(CrossInitEmbedding(embedding.vectors, start, kept), previous)
