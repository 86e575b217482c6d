"""The LoRA stage's settings: rank, alpha, learning rates, steps, batch, and the fast/full presets.

Pure (no torch, no ComfyUI), so the terminal client's `train --lora` checks its options against the same ranges and
presets as the node; `lora.settings` re-exports them for the server side.

Presets, from the anchors' defaults (docs/pivotal.md has the sources):
- full: rank 32, alpha 16, lr 1e-4, 1000 steps of batch 4: replicate cog-sdxl's `trainer_pti` LoRA (rank 32,
  lr 1e-4, 1000 steps, batch 4); alpha = rank / 2 halves the update as cog's and kohya's scaled networks do.
- fast: rank 16, alpha 16, lr 1e-4, 300 steps of batch 4: the update budget steps x lr x alpha/rank is
  300 x 1e-4 x 1 = 0.03, 60 % of full's 1000 x 1e-4 x 0.5 = 0.05, in under a third of the steps (as the
  token's fast preset keeps a third of its budget); rank 16 is OneTrainer's LoRA default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import InvalidInputError
from .settings import BATCH_SIZE, LEARNING_RATE_MAX, RESOLUTION, SEED, STEPS, IntRange, TrainingSettings

MODES = ("fast", "full", "custom")
RANK = IntRange(1, 128)
ALPHA_MAX = 1024.0
TOKEN_LEARNING_RATE_MAX = 1.0


@dataclass(frozen=True)
class LoraSettings:
    """One LoRA run. `token_learning_rate` 0 keeps the token at its pivot; above 0 it trains on (AdamW), pulled
    toward its Cross-Init start by the loss settings' reg_weight."""

    rank: int = 16
    alpha: float = 16.0
    learning_rate: float = 1e-4
    token_learning_rate: float = 0.0
    steps: int = 300
    batch_size: int = 4
    seed: int = 0
    resolution: int = 512

    @property
    def scale(self) -> float:
        """The LoRA's output scale alpha / rank (kohya's and ComfyUI's rule)."""
        return self.alpha / self.rank

    @property
    def trains_token(self) -> bool:
        return self.token_learning_rate > 0

    def validated(self) -> LoraSettings:
        if self.rank not in RANK:
            raise InvalidInputError(f"rank: got {self.rank}; use {RANK.describe()} (8-32 is usual for a face).")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and 0 < self.alpha <= ALPHA_MAX):
            raise InvalidInputError(f"alpha: got {self.alpha}; use a value above 0 and at most {ALPHA_MAX:g} "
                                    "(the LoRA is scaled by alpha / rank; alpha = rank gives 1).")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= LEARNING_RATE_MAX):
            raise InvalidInputError(f"learning_rate: got {self.learning_rate}; use a value above 0 and at most "
                                    f"{LEARNING_RATE_MAX:g} (1e-4 is the anchors' default for a LoRA).")
        if not (math.isfinite(self.token_learning_rate) and 0 <= self.token_learning_rate <= TOKEN_LEARNING_RATE_MAX):
            raise InvalidInputError(f"token_learning_rate: got {self.token_learning_rate}; use 0 (the token stays at "
                                    f"its pivot) or a value up to {TOKEN_LEARNING_RATE_MAX:g} (e.g. 1e-4).")
        for name, value, allowed in (("steps", self.steps, STEPS), ("batch_size", self.batch_size, BATCH_SIZE),
                                     ("seed", self.seed, SEED), ("resolution", self.resolution, RESOLUTION)):
            if value not in allowed:
                raise InvalidInputError(f"{name}: got {value!r}; use {allowed.describe()}.")
        return self

    def training(self) -> TrainingSettings:
        """The trainer's settings for the shared run setup (draws, latents); its learning rate is the token's when
        it trains, else the LoRA's (only checked there, never used)."""
        rate = self.token_learning_rate if self.trains_token else self.learning_rate
        return TrainingSettings(steps=self.steps, batch_size=self.batch_size, learning_rate=rate, seed=self.seed,
                                resolution=self.resolution)

    def as_metadata(self) -> dict[str, str]:
        return {"lora_rank": str(self.rank), "lora_alpha": f"{self.alpha:g}", "lora_learning_rate": f"{self.learning_rate:g}",
                "token_learning_rate": f"{self.token_learning_rate:g}", "lora_steps": str(self.steps),
                "lora_batch_size": str(self.batch_size), "lora_seed": str(self.seed), "lora_resolution": str(self.resolution)}


PRESETS: dict[str, LoraSettings] = {
    "full": LoraSettings(rank=32, alpha=16.0, learning_rate=1e-4, steps=1000, batch_size=4),
    "fast": LoraSettings(rank=16, alpha=16.0, learning_rate=1e-4, steps=300, batch_size=4),
}


def resolve(mode: str, custom: LoraSettings) -> LoraSettings:
    """The preset (keeping the custom seed, resolution and token learning rate) or the custom settings."""
    if mode == "custom":
        return custom.validated()
    if mode not in PRESETS:
        raise InvalidInputError(f"mode: got {mode!r}; use one of {', '.join(MODES)}.")
    return replace(PRESETS[mode], seed=custom.seed, resolution=custom.resolution,
                   token_learning_rate=custom.token_learning_rate).validated()
