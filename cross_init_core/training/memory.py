"""Fitting training into device memory: the `memory` input, the activation estimate and the plan.

A step's batch may run as micro-batches (gradients accumulated) and with UNet gradient checkpointing;
neither changes the result beyond float round-off. The plan picks both from a budget: the user's, or
what the host reports free on a CUDA device. What touches the host (model sizes, free memory, the
compute dtype) comes from the host layer (`host`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import host
from ..common.errors import CrossInitError, InvalidInputError

MEMORY_CHOICES = ("auto", "4", "6", "8", "10", "12", "16", "24", "none")

# What autograd keeps for one sample's UNet forward, in elements of the compute dtype, as a function of
# the number of latent pixels P (64x64 = 4096 at 512 px): elements = LINEAR x P + QUADRATIC x P^2.
# Fitted to the real UNets measured with `python bench/activation_memory.py` (docs/benchmarks.md):
#   SD 1.5 (SD 2.1-base needs 10-20 % less), latents 16/32/64:
#     plain 26.7 M / 128.5 M / 944 M elements; checkpointed 5.0 M / 26.0 M / 205 M
#   SDXL (no attention at full latent resolution, deep transformers below), latents 16/32/64:
#     plain 52.0 M / 177.9 M / 803 M elements; checkpointed 7.9 M / 26.5 M / 110 M
# The quadratic part is attention state; it was measured with the sub-quadratic attention ComfyUI picks on
# the CPU, which keeps more than the SDPA/flash kernels picked on CUDA, so the estimate errs high there.
ACTIVATION_ELEMENTS = {
    "sd": {"plain": (90_500.0, 34.5), "checkpointed": (17_300.0, 8.0)},
    "sdxl": {"plain": (170_000.0, 7.2), "checkpointed": (26_000.0, 0.3)},
}
# fixed working memory on top of weights and saved activations (CUDA context, cuBLAS workspace, the
# transient gradient buffers of the largest layer in backward)
WORKSPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class MemorySettings:
    """How training fits a memory budget; none of these change the result (to float round-off).

    budget_gb: device memory training may use (weights + activations), None = auto (the free memory of a
    CUDA device; no limit on the CPU), 0 = no limit. micro_batch: force this many samples per
    forward/backward (gradients are accumulated over the step's batch), None = chosen from the budget.
    checkpointing: force UNet gradient checkpointing on/off, None = chosen from the budget.
    """

    budget_gb: float | None = None
    micro_batch: int | None = None
    checkpointing: bool | None = None

    def validated(self) -> MemorySettings:
        if self.budget_gb is not None and (not math.isfinite(self.budget_gb) or self.budget_gb < 0):
            raise InvalidInputError(f"memory: got {self.budget_gb} GB; use 'auto' or a budget in GB such as 8.")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise InvalidInputError(f"micro_batch: got {self.micro_batch}; use a whole number >= 1.")
        return self


def parse_memory(text: str | float | None) -> MemorySettings:
    """The trainer node's `memory` input: 'auto', 'none' (no limit) or a budget in GB ('8', '12.5')."""
    if text is None:
        return MemorySettings()
    value = str(text).strip().lower().removesuffix("gb").strip()
    if value in ("", "auto"):
        return MemorySettings()
    if value in ("none", "off", "unlimited", "0"):
        return MemorySettings(budget_gb=0.0)
    try:
        budget = float(value)
    except ValueError:
        raise InvalidInputError(f"memory: got {text!r}; use 'auto', 'none' or a budget in GB such as 8.") from None
    if not math.isfinite(budget) or budget <= 0:
        raise InvalidInputError(f"memory: got {text!r}; use 'auto', 'none' or a budget in GB above 0, such as 8.")
    return MemorySettings(budget_gb=budget)


@dataclass(frozen=True)
class MemoryPlan:
    micro_batch: int
    checkpointing: bool
    reason: str


def plan_memory(batch: int, available_bytes: int | None, plain_bytes: int, checkpointed_bytes: int,
                forced: MemorySettings | None = None) -> MemoryPlan:
    """Picks samples per forward/backward and checkpointing so `micro x per-sample bytes <= available`.

    Prefers no checkpointing (it costs ~1/3 more compute) with the largest micro-batch that fits; turns
    checkpointing on only when not even one sample fits without it. `available_bytes` None = no limit.
    """
    forced = forced or MemorySettings()
    if forced.micro_batch is not None or forced.checkpointing is not None:
        micro = min(batch, forced.micro_batch or batch)
        return MemoryPlan(micro, bool(forced.checkpointing), "set by the caller")
    if available_bytes is None:
        return MemoryPlan(batch, False, "no memory limit")
    for checkpointing, per_sample in ((False, plain_bytes), (True, checkpointed_bytes)):
        fits = available_bytes // max(per_sample, 1)
        if fits >= 1:
            return MemoryPlan(int(min(batch, fits)), checkpointing,
                              f"{available_bytes / 2**30:.1f} GiB for activations, ~{per_sample / 2**30:.2f} GiB per sample")
    return MemoryPlan(1, True, f"only {available_bytes / 2**30:.1f} GiB for activations; may not fit")


def activation_bytes_per_sample(model: Any, latent_hw: tuple[int, int], checkpointed: bool) -> int:
    """Estimated activation memory of one sample's UNet forward+backward (text-encoder activations are small).

    bytes = (LINEAR x P + QUADRATIC x P^2) x (model_channels / 320) x bytes per element of the compute
    dtype, with P = latent_h x latent_w and the family's constants of `ACTIVATION_ELEMENTS`.
    """
    width = float(host.unet_model_channels(model)) / 320.0
    family = ACTIVATION_ELEMENTS["sdxl" if host.is_sdxl_model(model) else "sd"]
    linear, quadratic = family["checkpointed" if checkpointed else "plain"]
    pixels = float(latent_hw[0] * latent_hw[1])
    return int((linear * pixels + quadratic * pixels**2) * width * host.compute_dtype_size(model))


def plan_for_run(model: Any, clip: Any, batch: int, latent_hw: tuple[int, int], memory: MemorySettings,
                 device: torch.device | None) -> tuple[MemoryPlan, int]:
    """The micro-batch/checkpointing plan and the activation bytes to ask the host to keep free.

    available for activations = budget - UNet and text-encoder weights - a fixed workspace (budget given), or
    free device memory after loading - workspace (auto on CUDA); no limit on the CPU in auto or with budget 0.
    """
    plain = activation_bytes_per_sample(model, latent_hw, checkpointed=False)
    ckpt = activation_bytes_per_sample(model, latent_hw, checkpointed=True)
    available: int | None = None
    if memory.budget_gb:
        budget = int(memory.budget_gb * 2**30)
        available = max(0, budget - host.weights_bytes(model, clip) - WORKSPACE_BYTES)
    elif memory.budget_gb is None and device is not None:
        free = host.free_device_bytes(device)
        available = None if free is None else max(0, free - WORKSPACE_BYTES)
    plan = plan_memory(batch, available, plain, ckpt, memory)
    return plan, plan.micro_batch * (ckpt if plan.checkpointing else plain)


def out_of_memory_error(step: int, total: int, plan: MemoryPlan) -> CrossInitError:
    """The message for an out-of-memory error at `step` (1-based), raised after the host is restored."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return CrossInitError(
        f"out of GPU memory at step {step}/{total} (micro-batch {plan.micro_batch}, UNet checkpointing "
        f"{'on' if plan.checkpointing else 'off'}). Set the trainer's memory input to your card's VRAM in GB "
        "(e.g. 8) so training uses micro-batches and checkpointing, or lower batch_size or resolution, "
        "and close other programs that use the GPU."
    )


class DevicePeak:
    """The peak device memory of one run: CUDA's max allocated from `start` on (None on other devices)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.tracked = self.device.type == "cuda" and torch.cuda.is_available()

    def start(self) -> DevicePeak:
        if self.tracked:
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def mib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.tracked else None
