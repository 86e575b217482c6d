"""The host UNet: its compute dtype, its own `apply_model` and noise schedule, SDXL's extra conditioning, and
gradient checkpointing of its block layers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .forwards import instance_forwards
from .models import unet_config


def unet_compute_dtype(model: Any) -> torch.dtype:
    """The dtype the UNet's activations, and so its backward's gradients, flow in.

    Not the weight dtype: `apply_model` casts the input and the text context to the manual-cast dtype when
    the host set one (e.g. fp8 or fp16 weights computed in fp16/bf16/fp32), else to the weight dtype.
    Newer hosts name this `get_dtype_inference()`; older ones (0.3.75) compute it inline the same way.
    The text encoder needs no such check: ComfyUI's CLIP runs in float32 whatever its weight dtype.
    """
    inner = model.model
    inference = getattr(inner, "get_dtype_inference", None)
    if callable(inference):
        return inference()
    return getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()


def compute_dtype_size(model: Any) -> int:
    """Bytes per element of the dtype the UNet computes in (its manual-cast dtype if it has one)."""
    return torch.empty((), dtype=unet_compute_dtype(model)).element_size()


def dtype_name(dtype: torch.dtype) -> str:
    """'float16', 'bfloat16', 'float32', ... (as saved in file metadata)."""
    return str(dtype).removeprefix("torch.")


def unet_model_channels(model: Any) -> int:
    """The UNet's base channel count (320 for SD 1.x/2.x and SDXL), which activation sizes scale with."""
    return unet_config(model).get("model_channels", 320)


def denoised(model: Any, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, **extra: Any) -> torch.Tensor:
    """The host's own `apply_model` (k-diffusion convention: takes sigma, returns denoised x0)."""
    return model.model.apply_model(x_noisy, sigma, c_crossattn=cond, **extra)


def sigmas_for_timesteps(model: Any, timesteps: torch.Tensor) -> torch.Tensor:
    ms = model.model.model_sampling
    with torch.inference_mode(False):
        return ms.sigma(timesteps.float().to(ms.sigmas.device)).detach().clone()


def num_train_timesteps(model: Any) -> int:
    return int(model.model.model_sampling.sigmas.shape[0])


def process_latent_in(model: Any, latent: torch.Tensor) -> torch.Tensor:
    return model.model.process_latent_in(latent)


def sdxl_adm(model: Any, pooled: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """SDXL's pooled + size/crop conditioning, built by the host's own code (crop (0, 0))."""
    return model.model.encode_adm(pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0,
                                  target_width=width, target_height=height)


def unet_blocks(model: Any) -> list[torch.nn.Module]:
    """The layers of the UNet's input, middle and output blocks (what `forward_timestep_embed` calls)."""
    unet = model.model.diffusion_model
    blocks: list[torch.nn.Module] = []
    for seq in [*getattr(unet, "input_blocks", []), getattr(unet, "middle_block", None), *getattr(unet, "output_blocks", [])]:
        if seq is not None:
            blocks.extend(seq.children())
    return blocks


def _checkpointed_forward(module: torch.nn.Module) -> Callable[..., Any]:
    original = type(module).forward.__get__(module)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return original(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(original, *args, use_reentrant=False, **kwargs)

    return forward


@contextlib.contextmanager
def unet_checkpointing(model: Any, enabled: bool = True) -> Iterator[int]:
    """Gradient checkpointing of every UNet block layer (ResBlock, SpatialTransformer, up/down samplers).

    Each layer's activations are dropped after its forward and recomputed in backward: the same
    arithmetic (no dropout in these models; layers are deterministic), about one extra UNet forward of
    compute, and only the layer inputs stay in memory. Instance `forward`s are set for the duration and
    removed on exit; the host's classes and modules are otherwise untouched. Yields the layer count.
    """
    with instance_forwards(unet_blocks(model) if enabled else [], _checkpointed_forward) as count:
        yield count
