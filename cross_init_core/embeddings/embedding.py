"""The learned embedding as it travels between nodes (CROSS_INIT_EMBEDDING)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..common.errors import InvalidInputError
from ..common.families import ENCODER_WIDTHS, SDXL, family_of


@dataclass
class CrossInitEmbedding:
    """`vectors[key]` is float32 [n, width] on the CPU, one entry per text encoder ('clip_l', 'clip_h', 'clip_g').

    `init_vectors` are the Cross Initialization start (the regularizer's target); `metadata` is what
    goes into the file's `__metadata__`; `loss_history` (and the step of each entry, `loss_steps`) is filled by
    training.
    """

    vectors: dict[str, torch.Tensor]
    init_vectors: dict[str, torch.Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    loss_history: list[tuple[float, float]] = field(default_factory=list)
    loss_steps: list[int] = field(default_factory=list)  # the step of each loss_history entry (fp16 skips leave gaps)

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
            loss_steps=list(self.loss_steps),
        )


def _family_name(keys: Iterable[str]) -> str | None:
    family = family_of(keys)
    return family.name if family else None


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def check_matches_slots(embedding: CrossInitEmbedding, slots: list, what: str = "embedding") -> None:
    """The embedding must have exactly the CLIP's encoders with the same widths.

    The host would use a partial match silently (SDXL: a clip_l-only file is spliced into clip_l while
    clip_g prints "embedding will be ignored"), so every mismatch is an error that says what is missing.
    """
    expected = {s.key: s.width for s in slots}
    got = embedding.widths()
    if got == expected:
        return
    family = _family_name(expected)
    clip_name = f"this {family} CLIP" if family else "this CLIP"
    needs = _and([f"{k} {w}" for k, w in expected.items()])
    shapes = ", ".join(f"{k} [{embedding.vectors[k].shape[0]}, {w}]" for k, w in got.items())
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [f"{k} is {got[k]} wide, not {w}" for k, w in expected.items() if k in got and got[k] != w]
    has = f"only {shapes}" if missing and not extra else shapes
    details = []
    if missing:
        details.append(f"{_and(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    if extra:
        details.append(f"{_and(extra)} {'is' if len(extra) == 1 else 'are'} not used by this model")
    details += wrong
    made_for = _family_name(got)
    if made_for and made_for != family:
        hint = f"The embedding was made for {made_for}: connect an {made_for} CLIP, or train one for this model"  # every family is "SD..."
    else:
        hint = "Train or load an embedding for this model"
    if family == SDXL.name and missing and not extra:
        hint = "An SDXL embedding holds both clip_l and clip_g (the host would silently ignore the missing half). " + hint
    raise InvalidInputError(
        f"{what}: {clip_name} needs {needs}; the embedding has {has} ({'; '.join(details)}). {hint} ({ENCODER_WIDTHS})."
    )
