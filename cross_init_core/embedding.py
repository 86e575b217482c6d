"""The learned embedding as it travels between nodes (CROSS_INIT_EMBEDDING)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InvalidInputError

KNOWN_WIDTHS = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280}


@dataclass
class CrossInitEmbedding:
    """`vectors[key]` is float32 [n, width] on the CPU, one entry per text encoder ('clip_l', 'clip_h', 'clip_g').

    `init_vectors` are the Cross Initialization start (the regularizer's target); `metadata` is what
    goes into the file's `__metadata__`; `loss_history` is filled by training.
    """

    vectors: dict[str, torch.Tensor]
    init_vectors: dict[str, torch.Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    loss_history: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise InvalidInputError("embedding: it holds no vectors.")
        counts = {v.shape[0] for v in self.vectors.values()}
        if len(counts) != 1 or any(v.ndim != 2 for v in self.vectors.values()):
            shapes = {k: tuple(v.shape) for k, v in self.vectors.items()}
            raise InvalidInputError(f"embedding: every encoder needs the same number of [n, width] vectors; got {shapes}.")

    @property
    def num_tokens(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.vectors.items()}

    def describe(self) -> str:
        return ", ".join(f"{k} [{v.shape[0]}, {v.shape[1]}]" for k, v in self.vectors.items())

    def with_vectors(self, vectors: dict[str, torch.Tensor], **metadata: str) -> CrossInitEmbedding:
        return CrossInitEmbedding(
            vectors={k: v.detach().float().cpu().clone() for k, v in vectors.items()},
            init_vectors=self.init_vectors,
            metadata={**self.metadata, **metadata},
            loss_history=list(self.loss_history),
        )


def check_matches_slots(embedding: CrossInitEmbedding, slots: list, what: str = "embedding") -> None:
    """The embedding must have exactly the CLIP's encoders with the same widths."""
    expected = {s.key: s.width for s in slots}
    got = embedding.widths()
    if got != expected:
        want = ", ".join(f"{k} {w}" for k, w in expected.items())
        have = ", ".join(f"{k} {w}" for k, w in got.items())
        raise InvalidInputError(
            f"{what}: it was made for a different model ({have}); this CLIP needs {want}. "
            "Use an embedding trained on the same model family (SD1 768, SD2 1024, SDXL 768 + 1280)."
        )
