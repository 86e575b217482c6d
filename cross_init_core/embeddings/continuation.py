"""Going on with a trained embedding (a loaded file, or a trainer's output in the same graph): its vectors are where
training starts again, the regularizer still pulls toward the run's original Cross-Init start (carried by a trainer's
output; for a file, recomputed from the names it records, with the same CLIP layer, or refused), `steps` in the
metadata counts every step, the draws go on where the earlier run's would have (same seed and batch size), and the
optimizer goes on from the state the file carries (`optimizer_state`), so 6 + 6 steps equal 12. A file without that
state (written before 0.3.0, or by another tool) goes on with a fresh optimizer, which is logged."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from .. import host
from ..common.embedding_names import continued_steps
from ..common.errors import InvalidInputError
from ..common.families import FAMILIES, family_of
from ..method import names as name_lists
from ..method.initialization import cross_initialize
from . import optimizer_state
from .embedding import CrossInitEmbedding
from .optimizer_state import SavedOptimizerState

log = logging.getLogger(__name__)

# a file's own run figures, which a further run must not carry over (it sets its own where they apply)
STALE_RUN_KEYS = frozenset({"peak_vram_mib", "stopped_at_step", "fp16_skipped_steps", "continued_from_steps", "source_file",
                            optimizer_state.METADATA_KEY})


@dataclass(frozen=True)
class Continuation:
    embedding: CrossInitEmbedding  # what this run trains: the vectors it starts from, the start it pulls toward
    previous_steps: int  # steps the embedding was already trained for (0: a fresh start)
    optimizer: SavedOptimizerState | None = None  # where the optimizer goes on from (None: it starts fresh)


def recorded_names(metadata: dict[str, str]) -> list[str] | None:
    """The names the file's start was averaged from, as its metadata records them (None: not recorded)."""
    label = metadata.get("init_names")
    if label in name_lists.NAME_LIST_FILES:
        return list(name_lists.builtin_names(label))
    if label == name_lists.TYPED and metadata.get("init_names_text"):
        return name_lists.parse_name_lines(metadata["init_names_text"])
    return None


def _layer(name: str) -> str:
    # CLIP Set Last Layer -1 takes the last layer's output through the final LayerNorm: what "last" names
    return "last" if name.strip() == "-1" else name.strip()


def check_same_encoder(clip: Any, embedding: CrossInitEmbedding, source: str) -> None:
    """A trained run goes on only with the CLIP layer and family it was trained with: its start (the regularizer's
    target) is what that layer made of the names, and its vectors were learned for that conditioning."""
    metadata = embedding.metadata
    recorded_family = str(metadata.get("base_model", "")).split("-")[0]
    family = family_of(embedding.vectors)
    known = {f.tag: f.name for f in FAMILIES}
    if family is not None and recorded_family in known and recorded_family != family.tag:
        raise InvalidInputError(
            f"clip: {source} was trained for {known[recorded_family]} (metadata base_model {metadata['base_model']}), but "
            f"the connected CLIP is {family.name}; continue it with an {known[recorded_family]} checkpoint's CLIP, or start "
            "a new run from Cross-Init Embedding Init."
        )
    recorded_layer = metadata.get("clip_layer")
    if recorded_layer is None:
        return
    layer = host.clip_layer(clip)
    if _layer(recorded_layer) != _layer(layer):
        raise InvalidInputError(
            f"clip: {source} was trained on the text encoder's layer {recorded_layer} (metadata clip_layer), but the "
            f"connected CLIP uses layer {layer}; going on would pull toward a different start. Connect the CLIP with "
            f"the same layer (CLIP Set Last Layer, or none if the file says last), or start a new run from Cross-Init "
            "Embedding Init."
        )


def continue_from(clip: Any, embedding: CrossInitEmbedding) -> Continuation:
    """Where a run on `embedding` starts: Cross-Init Embedding Init's output as it is; a trained embedding (a Cross-Init
    run's output or file: metadata `method` and `steps`) with its step count, its original start (recomputed with
    `clip` for a file) and its optimizer state; any other file pulls toward its own vectors. The embedding must match
    the CLIP's encoders."""
    metadata = embedding.metadata
    source = metadata.get("source_file", "the embedding")
    previous = continued_steps(metadata, source)
    if not previous and embedding.init_vectors is not None:
        return Continuation(embedding, 0)
    if previous:
        check_same_encoder(clip, embedding, source)
    saved = optimizer_state.unpack(metadata, embedding.vectors, source) if previous else None
    optimizer_note = (f"the optimizer goes on from its state at step {saved.step}" if saved is not None else
                      "the optimizer state starts fresh (the file carries none)")
    start = embedding.init_vectors
    names = recorded_names(metadata)
    if start is None and previous and names is not None:
        with torch.inference_mode():
            start = cross_initialize(clip, embedding.num_tokens, names, metadata.get("init_source", "names")).vectors
        log.info("Cross-Init: continuing %s from step %d; its start is recomputed from its %s names; %s", source, previous,
                 metadata.get("init_names"), optimizer_note)
    elif start is not None:
        log.info("Cross-Init: continuing %s from step %d toward the start it carries; %s", source, previous, optimizer_note)
    else:
        log.warning("Cross-Init: %s does not record its Cross-Init start (init_names); the regularizer pulls toward "
                    "the loaded vectors instead", source)
    kept = {k: v for k, v in metadata.items() if k not in STALE_RUN_KEYS}
    return Continuation(CrossInitEmbedding(embedding.vectors, start, kept), previous, saved)
