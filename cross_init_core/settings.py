"""Training settings and the presets `fast` and `full`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .errors import InvalidInputError
from .families import SD1, SDXL

MODES = ("fast", "full", "custom")
DEFAULT_REG_WEIGHT = 1e-5
# the trainer's resolution input: 0 = auto, the base resolution of the model family
AUTO_RESOLUTION = 0


@dataclass(frozen=True)
class LossSettings:
    """reg_weight: weight of mean_j ||v_j - v_init_j||_2. background_weight: loss weight outside the
    face mask (1.0 = masks ignored, 0.0 = only the face counts); used when masks are given."""

    reg_weight: float = DEFAULT_REG_WEIGHT
    background_weight: float = 1.0

    def validated(self) -> LossSettings:
        if not math.isfinite(self.reg_weight) or self.reg_weight < 0:
            raise InvalidInputError(f"reg_weight: got {self.reg_weight}; use a value >= 0 (the method's default is 1e-5).")
        if not math.isfinite(self.background_weight) or not 0.0 <= self.background_weight <= 1.0:
            raise InvalidInputError(f"background_weight: got {self.background_weight}; use a value from 0 to 1 (1 = off).")
        return self


@dataclass(frozen=True)
class TrainingSettings:
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    resolution: int = 512

    def validated(self) -> TrainingSettings:
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise InvalidInputError(f"steps: got {self.steps}; use a whole number from 1 to 100000 (full mode uses 320).")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 64:
            raise InvalidInputError(f"batch_size: got {self.batch_size}; use a whole number from 1 to 64 (the method uses 8).")
        if not math.isfinite(self.learning_rate) or not 0 < self.learning_rate <= 1.0:
            raise InvalidInputError(
                f"learning_rate: got {self.learning_rate}; use a value above 0 and at most 1 (full mode uses 0.005)."
            )
        if self.resolution % 64 or not 64 <= self.resolution <= 2048:
            raise InvalidInputError(
                f"resolution: got {self.resolution}; use a multiple of 64 from 64 to 2048 (512 for SD 1.5/2.1-base, "
                "1024 for SDXL, 768 or 512 for SDXL on less memory; the trainer node's 0 picks automatically)."
            )
        return self

    def as_metadata(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


# full: the reference run (320 steps, batch 8, lr 0.000625 x 8 = 0.005).
# fast: 25 steps, batch 8. With Adam each step moves a coordinate by at most about lr, so the total
# movement budget is steps x lr: 320 x 0.005 = 1.6 for full. 25 x 0.02 = 0.5 keeps a third of that budget
# in 13x fewer steps while staying well below the ~1.0 per-element scale of the Cross-Initialized vectors,
# so the regularized start is refined rather than left behind.
PRESETS: dict[str, TrainingSettings] = {
    "full": TrainingSettings(steps=320, batch_size=8, learning_rate=0.005),
    "fast": TrainingSettings(steps=25, batch_size=8, learning_rate=0.02),
}


def auto_resolution(resolution: int, sdxl: bool) -> int:
    """The trainer's `resolution` input: 0 (auto) -> the family's base resolution (SDXL 1024, SD 1.x/2.x 512)."""
    if resolution == AUTO_RESOLUTION:
        return SDXL.resolution if sdxl else SD1.resolution
    return resolution


def resolve(mode: str, steps: int, batch_size: int, learning_rate: float, seed: int, resolution: int = 512) -> TrainingSettings:
    """`fast`/`full` take steps, batch and lr from the preset; `custom` takes every field as given."""
    if mode not in MODES:
        raise InvalidInputError(f"mode: got {mode!r}; use one of {', '.join(MODES)}.")
    if mode == "custom":
        chosen = TrainingSettings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed, resolution=resolution)
    else:
        chosen = replace(PRESETS[mode], seed=seed, resolution=resolution)
    return chosen.validated()
