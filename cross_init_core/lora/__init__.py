"""Pivotal tuning: a UNet LoRA trained around a Cross-Init token, its files and bundled tokens.

- `settings`: rank, alpha, learning rates, steps and the fast/full presets;
- `weights`: the LoRA's tensors in the kohya/A1111 layout (ComfyUI's LORA_MODEL value);
- `stage`: the training loop on the host models (the trainer's run setup, loss, memory plan and fp16 scaling);
- `files`: the bundled LoRA file (`bundle_emb.NAME.*`), its metadata, and reading bundles of other trainers.
"""

from __future__ import annotations

from . import files, settings, stage, weights

__all__ = ["files", "settings", "stage", "weights"]
