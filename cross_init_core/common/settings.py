"""Settings the nodes and the terminal client share: the training inputs, their ranges, the presets `fast` and
`full`, and the face detectors (pure: no torch, no ComfyUI)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from .errors import InvalidInputError
from .families import SD1, SDXL

MODES = ("fast", "full", "custom")
# Cross-Init Face Prep's detector option; values saved by earlier versions still run, as their replacement
DETECTORS = ("auto", "insightface", "mtcnn")
LEGACY_DETECTORS = {"opencv": "mtcnn"}
DEFAULT_REG_WEIGHT = 1e-5
# the trainer's resolution input: 0 = auto, the base resolution of the model family
AUTO_RESOLUTION = 0


@dataclass(frozen=True)
class IntRange:
    """A training input's allowed whole numbers: low..high, a multiple of `multiple`."""

    low: int
    high: int
    multiple: int = 1

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high \
            and value % self.multiple == 0

    def describe(self) -> str:
        return f"{self.low}..{self.high}" + (f", a multiple of {self.multiple}" if self.multiple > 1 else "")


# The training inputs' ranges, read by the trainer node's schema, the validation below and the batch runner's
# arguments. The learning rate is above 0 and at most LEARNING_RATE_MAX (the node's widget starts at
# LEARNING_RATE_WIDGET_MIN, the smallest value its step can show).
STEPS = IntRange(1, 100_000)
BATCH_SIZE = IntRange(1, 64)
RESOLUTION = IntRange(64, 2048, multiple=64)
SEED = IntRange(0, 2**63 - 1)
LEARNING_RATE_MAX = 1.0
LEARNING_RATE_WIDGET_MIN = 1e-6


def learning_rate_ok(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= LEARNING_RATE_MAX


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
        if self.steps not in STEPS:
            raise InvalidInputError(f"steps: got {self.steps}; use a whole number from {STEPS.low} to {STEPS.high} "
                                    "(full mode uses 320).")
        if self.batch_size not in BATCH_SIZE:
            raise InvalidInputError(f"batch_size: got {self.batch_size}; use a whole number from {BATCH_SIZE.low} to "
                                    f"{BATCH_SIZE.high} (the method uses 8).")
        if not learning_rate_ok(self.learning_rate):
            raise InvalidInputError(
                f"learning_rate: got {self.learning_rate}; use a value above 0 and at most {LEARNING_RATE_MAX:g} "
                "(full mode uses 0.005)."
            )
        if self.resolution not in RESOLUTION:
            raise InvalidInputError(
                f"resolution: got {self.resolution}; use a multiple of {RESOLUTION.multiple} from {RESOLUTION.low} to "
                f"{RESOLUTION.high} (512 for SD 1.5/2.1-base, 1024 for SDXL, 768 or 512 for SDXL on less memory; the "
                "trainer node's 0 picks automatically)."
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


def checkpoint_steps(steps: int, save_every: int, previous: int = 0) -> list[int]:
    """The step counts of a run's checkpoints: every `save_every` steps and the end (`previous`: the steps of the
    file a continued run starts from; the counts go on from there)."""
    every = [k for k in range(save_every, steps, save_every)] if save_every > 0 else []
    return [previous + k for k in [*every, steps]]


def auto_resolution(resolution: int, sdxl: bool) -> int:
    """The trainer's `resolution` input: 0 (auto) -> the family's base resolution (SDXL 1024, SD 1.x/2.x 512)."""
    if resolution == AUTO_RESOLUTION:
        return SDXL.resolution if sdxl else SD1.resolution
    return resolution


# The trainer node's steps/batch_size/learning_rate: 0 = the preset's value (custom: the paper's, as `full`); any other
# value overrides it. Before 0.3.0 the preset modes ignored these fields, and a new node showed 320 / 8 / 0.005: that
# exact triple in `fast` mode is such an untouched 0.2 node (saved in a workflow) and still means the fast preset.
USE_PRESET = 0
LEGACY_NODE_DEFAULTS = (320, 8, 0.005)


@dataclass(frozen=True)
class Choice:
    """What a trainer node's mode and fields resolve to, and which fields override the preset (for the log)."""

    settings: TrainingSettings
    overrides: dict[str, int | float]
    legacy: bool = False

    def describe(self, mode: str) -> str:
        s = self.settings
        text = f"{mode}: {s.steps} steps, batch {s.batch_size}, lr {s.learning_rate:g}"
        if self.overrides:
            base = PRESETS["full" if mode == "custom" else mode]
            changed = ", ".join(f"{k} {v:g} (preset {getattr(base, k):g})" for k, v in self.overrides.items())
            text += f"; set on the node: {changed}"
        if self.legacy:
            text += ("; the node shows 320 / 8 / 0.005, the defaults of 0.2 that fast mode ignored, so the fast preset "
                     "runs (set a field to 0 or another value, or choose full)")
        return text


def resolve_choice(mode: str, steps: int, batch_size: int, learning_rate: float, seed: int, resolution: int = 512) -> Choice:
    """`fast`/`full`: the preset, with each field that is not 0 overriding it; `custom`: the fields, with 0 taking the
    paper's value (the full preset's)."""
    if mode not in MODES:
        raise InvalidInputError(f"mode: got {mode!r}; use one of {', '.join(MODES)}.")
    base = PRESETS["full" if mode == "custom" else mode]
    legacy = mode == "fast" and (steps, batch_size, learning_rate) == LEGACY_NODE_DEFAULTS
    given = {} if legacy else {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate}
    overrides = {k: v for k, v in given.items() if v != USE_PRESET and (mode == "custom" or v != getattr(base, k))}
    if any(not isinstance(v, (int, float)) or v < 0 for v in given.values()):
        bad = next(k for k, v in given.items() if not isinstance(v, (int, float)) or v < 0)
        raise InvalidInputError(f"{bad}: got {given[bad]}; use 0 for the preset's value, or a value above 0.")
    chosen = replace(base, seed=seed, resolution=resolution, **{k: v for k, v in given.items() if v != USE_PRESET})
    return Choice(chosen.validated(), overrides, legacy)


def resolve(mode: str, steps: int, batch_size: int, learning_rate: float, seed: int, resolution: int = 512) -> TrainingSettings:
    """The settings a trainer node runs with (`resolve_choice`)."""
    return resolve_choice(mode, steps, batch_size, learning_rate, seed, resolution).settings
