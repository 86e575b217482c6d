"""LoRA on the host UNet: which layers it trains, how it joins the training forward, and the patched MODEL.

Training adds each LoRA layer's output beside the host layer's own (a forward hook on the module, removed on exit:
`y = W x + b + scale * up(down(x))`), so no weight is written, copied or wrapped and the host's patcher never
sees the LoRA. The `model` the stage hands on, and every file loaded back, go through the host's own LoRA loader
(`comfy.sd.load_lora_for_models`, what core *Load LoRA* and *LoraModelLoader* call): a patched clone, the same
patches a user gets from the saved file.

Module names are the kohya/A1111 ones the host itself maps (`comfy.lora.model_lora_keys_unet`):
`lora_unet_` + the diffusers module path with `.` -> `_`, from `comfy.utils.unet_to_diffusers`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .models import unet_config

UNET_PREFIX = "lora_unet_"
# the attention projections of every transformer block (self- and cross-attention), as diffusers names them
_ATTENTION = re.compile(r"\.transformer_blocks\.\d+\.attn[12]\.to_(q|k|v|out\.0)\.weight$")


@dataclass(frozen=True)
class LoraTarget:
    """One host layer the LoRA trains: its kohya name, its path under the UNet, and its widths."""

    name: str
    module_path: str
    in_features: int
    out_features: int


def lora_targets(model: Any) -> list[LoraTarget]:
    """The UNet's attention projections (to_q, to_k, to_v, to_out.0 of attn1 and attn2), in diffusers name order."""
    import comfy.utils

    unet = model.model.diffusion_model
    mapping = comfy.utils.unet_to_diffusers(unet_config(model))
    targets = []
    for diffusers_key, ldm_key in sorted(mapping.items()):
        if not _ATTENTION.search(diffusers_key):
            continue
        path = ldm_key[: -len(".weight")]
        module = unet.get_submodule(path)
        targets.append(LoraTarget(UNET_PREFIX + diffusers_key[: -len(".weight")].replace(".", "_"), path,
                                  int(module.in_features), int(module.out_features)))
    return targets


def _lora_hook(down: torch.Tensor, up: torch.Tensor, scale: float) -> Any:
    def hook(_module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        # float32 LoRA whatever the UNet computes in: the fp16 backward reaches it through the output's dtype cast
        delta = F.linear(F.linear(x.to(down.dtype), down), up) * scale
        return output + delta.to(output.dtype)

    return hook


@contextlib.contextmanager
def lora_layers(model: Any, targets: list[LoraTarget], down: dict[str, torch.Tensor], up: dict[str, torch.Tensor],
                scale: float) -> Iterator[int]:
    """Adds `scale * up(down(x))` to each target layer's output for the duration (forward hooks, removed on exit).

    Differentiable in `down` and `up`; the host's weights and modules are otherwise untouched. Yields the count.
    """
    unet = model.model.diffusion_model
    handles = []
    try:
        for target in targets:
            module = unet.get_submodule(target.module_path)
            handles.append(module.register_forward_hook(_lora_hook(down[target.name], up[target.name], scale)))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class AppliedLora:
    """What the host's loader made of a LoRA state dict: the patched clones and the file modules it used."""

    model: Any
    clip: Any
    unet_modules: int  # LoRA modules of the file patched into the UNet
    clip_modules: int  # ... into the text encoders
    unused: list[str]  # LoRA module names of the file that match no layer of these models
    misfits: list[str]  # modules whose matrices do not fit their layer's weight ("name: file [out, in], layer [out, in]")


def lora_modules(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The LoRA module names of a kohya-layout state dict (the part before `.lora_down.weight`)."""
    return sorted({k.split(".", 1)[0] for k in state_dict if k.endswith(".lora_down.weight")})


def apply_lora(model: Any, clip: Any | None, state_dict: dict[str, torch.Tensor], strength_model: float,
               strength_clip: float) -> AppliedLora:
    """Patched clones of MODEL (and CLIP when given) by the host's own LoRA loader, as core Load LoRA makes them."""
    import comfy.lora
    import comfy.sd

    unet_keys = comfy.lora.model_lora_keys_unet(model.model, {})
    clip_keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}) if clip is not None else {}
    modules = lora_modules(state_dict)
    unet_modules = [m for m in modules if m in unet_keys]
    clip_modules = [m for m in modules if m in clip_keys]
    unused = [m for m in modules if m not in unet_keys and m not in clip_keys]
    misfits = [*_misfits(model.model, unet_modules, unet_keys, state_dict)]
    if clip is not None:
        misfits += _misfits(clip.cond_stage_model, clip_modules, clip_keys, state_dict)
    lora = {k: v for k, v in state_dict.items() if not k.startswith("bundle_emb.")}  # bundles are no patches
    new_model, new_clip = comfy.sd.load_lora_for_models(model, clip if clip_modules else None, lora,
                                                        strength_model, strength_clip)
    return AppliedLora(new_model, new_clip if clip_modules else clip, len(unet_modules), len(clip_modules), unused, misfits)


def _misfits(root: torch.nn.Module, modules: list[str], key_map: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The modules whose up @ down is not the shape of the layer weight they patch (the host would only log it)."""
    found = []
    for name in modules:
        target = key_map[name]
        key = target[0] if isinstance(target, tuple) else target  # some host maps give (key, slice) for fused layers
        try:
            weight = root.get_parameter(key)
        except AttributeError:
            continue
        down, up = state_dict[name + ".lora_down.weight"], state_dict[name + ".lora_up.weight"]
        if weight.ndim != 2 or tuple(weight.shape) != (up.shape[0], down.shape[-1]):
            found.append(f"{name}: file [{up.shape[0]}, {down.shape[-1]}], layer {list(weight.shape)}")
    return found
