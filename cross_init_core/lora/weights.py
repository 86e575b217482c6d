"""The LoRA's tensors in the kohya/A1111 layout, which ComfyUI's LORA_MODEL type, A1111 and diffusers all read.

Per module `lora_unet_<diffusers path with _>`: `.lora_down.weight` [rank, in], `.lora_up.weight` [out, rank] and
`.alpha` (a 0-d tensor); the layer's output gains (alpha / rank) * up(down(x)). `LoraModel` is that state dict
(a plain `dict` for ComfyUI's *Load LoRA Model* and *Save LoRA Weights*) that also carries the run's metadata and
the token it was trained around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..common.errors import InvalidInputError
from ..embeddings.embedding import CrossInitEmbedding

DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


class LoraModel(dict):  # type: ignore[type-arg]
    """A kohya-layout LoRA state dict (ComfyUI's LORA_MODEL value) with the run's `metadata` (file metadata:
    rank, alpha, steps, ...), the `embedding` (the token at the same step) it was trained around, and the loss history
    up to its step as a token's (`loss_history` (loss, reg) pairs, `loss_steps` their steps), for the checkpoint
    report."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 embedding: CrossInitEmbedding | None = None) -> None:
        super().__init__(tensors)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.embedding = embedding
        self.loss_history: list[tuple[float, float]] = []
        self.loss_steps: list[int] = []


def initial_weights(targets: Sequence[Any], rank: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(down, up) for each target: down ~ kaiming-uniform (a = sqrt(5), as torch's Linear and peft), up = 0, so the
    LoRA starts as the identity edit; seeded on the CPU, so a run is reproducible on any device."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    down, up = {}, {}
    for target in targets:
        bound = 1.0 / math.sqrt(target.in_features)  # kaiming_uniform_(a=sqrt(5)) on [rank, in]
        down[target.name] = (torch.rand((rank, target.in_features), generator=gen) * 2 - 1) * bound
        up[target.name] = torch.zeros((target.out_features, rank))
    return down, up


def to_state_dict(down: dict[str, torch.Tensor], up: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """The kohya layout, float32 on the CPU, modules in name order."""
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(down):
        tensors[name + DOWN] = down[name].detach().float().cpu().contiguous().clone()
        tensors[name + UP] = up[name].detach().float().cpu().contiguous().clone()
        tensors[name + ALPHA] = torch.tensor(float(alpha))
    return tensors


def module_shapes(state_dict: dict[str, torch.Tensor], what: str = "lora") -> dict[str, tuple[int, int, int, float]]:
    """{module: (rank, in, out, alpha)} of a kohya-layout LoRA; each module must have both matrices of one rank."""
    shapes: dict[str, tuple[int, int, int, float]] = {}
    for key in state_dict:
        if not key.endswith(DOWN):
            continue
        name = key[: -len(DOWN)]
        down, up = state_dict[key], state_dict.get(name + UP)
        if up is None or down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise InvalidInputError(f"{what}: module {name} has lora_down {tuple(down.shape)} and lora_up "
                                    f"{None if up is None else tuple(up.shape)}, which do not form a LoRA; the file is "
                                    "damaged or not a LoRA of linear layers.")
        alpha = state_dict.get(name + ALPHA)
        shapes[name] = (int(down.shape[0]), int(down.shape[1]), int(up.shape[0]),
                        float(alpha) if alpha is not None else float(down.shape[0]))
    return shapes
