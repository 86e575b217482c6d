"""The training session: the host's MODEL and CLIP loaded and differentiable, put back exactly as they were.

ComfyUI runs nodes under `torch.inference_mode()`, so host weights are inference tensors that autograd cannot
save for backward. For the session every parameter and buffer is swapped for a zero-copy alias autograd may
save, and the CLIP layers run out of place (`encoding`); every host object is restored on exit, exceptions
included. No weight is ever written or copied (except dtypes DLPack cannot carry).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .devices import compute_device
from .encoding import clip_options_state, out_of_place_clip
from .models import inner_encoders

log = logging.getLogger(__name__)


def _non_inference_alias(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor sharing `tensor`'s memory that autograd may save (zero copy via DLPack when possible)."""
    if not tensor.is_inference():
        return tensor.detach()
    try:
        return torch.utils.dlpack.from_dlpack(tensor.detach())
    except (BufferError, RuntimeError, TypeError):
        # dtypes DLPack cannot carry (e.g. fp8): a copy is correct, but costs that weight's memory again
        _warn_once(f"Cross-Init: {tensor.dtype} weights cannot be shared with autograd; they are copied for "
                   "training, which needs that much extra memory (set the trainer's memory input if it runs out)")
        return tensor.detach().clone()


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


@contextlib.contextmanager
def _aliased_weights(modules: Sequence[torch.nn.Module]) -> Iterator[int]:
    """Swaps every parameter/buffer for a frozen autograd-safe alias; restores the original objects."""
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for root in modules:
            for module in root.modules():
                for store in (module._parameters, module._buffers):
                    for name, value in list(store.items()):
                        if value is None:
                            continue
                        saved.append((store, name, value))
                        alias = _non_inference_alias(value)
                        store[name] = torch.nn.Parameter(alias, requires_grad=False) if store is module._parameters else alias
        yield len(saved)
    finally:
        for store, name, value in reversed(saved):
            store[name] = value


@contextlib.contextmanager
def training_session(model: Any, clip: Any, memory_required: int = 0) -> Iterator[torch.device]:
    """Loads MODEL and CLIP onto the compute device and makes them differentiable; yields the device.

    `memory_required` (bytes, the training activations) is passed to the host's loader, which unloads
    other models (the VAE, whatever else is loaded) as far as needed to leave that much free.
    Host weights are never written: parameters are swapped for zero-copy aliases and the original
    objects are put back on exit, as are the CLIP's layer options and layer forwards.
    """
    import comfy.model_management as mm

    mm.load_models_gpu([model, clip.patcher], memory_required=int(memory_required), force_full_load=True)
    device = compute_device(model)
    options = clip_options_state(clip)
    modules = [model.model] + [enc.transformer for _key, enc in inner_encoders(clip)]
    in_training = getattr(mm, "in_training", None)  # newer hosts' memory manager flag for training nodes
    try:
        if in_training is not None:
            mm.in_training = True
        with torch.inference_mode(False), torch.enable_grad(), _aliased_weights(modules) as count, \
                out_of_place_clip(clip) as layers:
            log.debug("training session: %d host tensors aliased, %d CLIP layers out of place", count, layers)
            yield device
    finally:
        if in_training is not None:
            mm.in_training = in_training
        for enc, values in options:
            for name, value in values.items():
                setattr(enc, name, value)
