"""The LoRA stage's settings (rank, alpha, learning rates, steps, batch, the fast/full presets): defined in the pure
`common.lora_settings`, which the terminal client reads too, and re-exported here for the server side."""

from __future__ import annotations

from ..common.lora_settings import ALPHA_MAX, MODES, PRESETS, RANK, TOKEN_LEARNING_RATE_MAX, LoraSettings, resolve

__all__ = ["ALPHA_MAX", "MODES", "PRESETS", "RANK", "TOKEN_LEARNING_RATE_MAX", "LoraSettings", "resolve"]
