"""Devices and memory as the host sees them: model sizes, free memory, out-of-memory errors."""

from __future__ import annotations

from typing import Any

import torch


def compute_device(model: Any) -> torch.device:
    """The device the host loads MODEL onto to compute (the CPU for an object that is not a host model)."""
    return torch.device(getattr(model, "load_device", None) or "cpu")


def weights_bytes(model: Any, clip: Any) -> int:
    """Bytes of the UNet and text encoder weights as loaded (what stays on the device during training)."""
    return int(model.model_size() + clip.patcher.model_size())


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA-like device as the host sees it; None on the CPU (no budget applies there)."""
    import comfy.model_management as mm

    if device.type in ("cpu", "mps"):
        return None
    return int(mm.get_free_memory(device))


def evaluation_devices() -> tuple[torch.device, torch.device]:
    """(compute, offload) devices for the models the pack loads itself for scoring (the CLIP prompt score)."""
    import comfy.model_management as mm

    return mm.get_torch_device(), mm.unet_offload_device()


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types torch raises when device memory runs out (names differ across torch versions)."""
    kinds = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(kind for kind in kinds if kind is not None)
