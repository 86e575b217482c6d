"""Going on with a saved run: the loaded file's vectors are where training starts again, the regularizer still
pulls toward the run's original Cross-Init start (recomputed from the names the file records, with the same
CLIP), `steps` in the metadata counts every step, and the draws go on where the earlier run's would have.
AdamW's moments are not stored in embedding files: the optimizer state starts fresh."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from . import host
from . import names as name_lists
from .embedding import CrossInitEmbedding, check_matches_slots
from .initialization import cross_initialize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Continuation:
    previous_steps: int  # steps the file was trained for
    start: dict[str, torch.Tensor] | None  # the original Cross-Init start; None when the file does not record it


def recorded_names(metadata: dict[str, str]) -> list[str] | None:
    """The names the file's start was averaged from, as its metadata records them (None: not recorded)."""
    label = metadata.get("init_names")
    if label in name_lists.NAME_LIST_FILES:
        return list(name_lists.builtin_names(label))
    if label == name_lists.TYPED and metadata.get("init_names_text"):
        return name_lists.parse_name_lines(metadata["init_names_text"])
    return None


def continuation_of(clip: Any, embedding: CrossInitEmbedding) -> Continuation | None:
    """None for a fresh start (Cross-Init Embedding Init's output, which carries its start). For a loaded file that a
    Cross-Init run saved: its step count and its original start, recomputed with `clip`."""
    if embedding.init_vectors is not None:
        return None
    check_matches_slots(embedding, host.encoder_slots(clip))  # a file for another model family: refused here
    metadata = embedding.metadata
    try:
        previous = int(metadata.get("steps", "0"))
    except ValueError:
        previous = 0
    names = recorded_names(metadata)
    source = metadata.get("init_source", "names")
    if previous <= 0 or names is None or metadata.get("method") != "cross_initialization":
        log.warning("Cross-Init: %s does not record its Cross-Init start (init_names); the regularizer pulls toward "
                    "the loaded vectors instead", metadata.get("source_file", "the loaded embedding"))
        return Continuation(max(previous, 0), None)
    with torch.inference_mode():
        start = cross_initialize(clip, embedding.num_tokens, names, source)
    log.info("Cross-Init: continuing %s from step %d; its start is recomputed from its %s names; the optimizer "
             "state starts fresh", metadata.get("source_file", "the loaded embedding"), previous, metadata.get("init_names"))
    return Continuation(previous, start.vectors)
