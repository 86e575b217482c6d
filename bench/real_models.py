"""MODEL/CLIP/VAE at the real SD 1.5, SD 2.1-base and SDXL architecture sizes, random weights, built by ComfyUI.

The UNet configurations are the ones `comfy/model_detection.py` derives from real checkpoint files; the
text encoders and the VAE are the host's own classes with their default (real) configurations. Weights
are drawn from a seeded generator (comfy ops leave memory uninitialised), so the compute per step is the
real one while no weights are needed. Dtypes are the host's choices for the device
(`comfy.model_management.unet_dtype()` etc.), as a loader node would pick them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# tests/: the real architectures and seeded init the real-checkpoint test uses
from real_checkpoints import SD15_UNET, SD21_UNET, VAE_CONFIG, init_weights

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": SD15_UNET,
    "sd21": SD21_UNET,
    "sdxl": {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
        "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
}
CONFIG_CLASSES = {"sd15": "SD15", "sd21": "SD20", "sdxl": "SDXL"}
LABELS = {"sd15": "SD 1.5", "sd21": "SD 2.1-base", "sdxl": "SDXL"}


@dataclass
class RealSizeModels:
    model: Any
    clip: Any
    vae: Any
    kind: str
    unet_params: int
    clip_params: int
    vae_params: int


def _config(kind: str) -> Any:
    import comfy.supported_models

    # sd21 is SD 2.1-base (512 px, eps): the SD20 family config with the 2.1 UNet, built as an EPS model
    return getattr(comfy.supported_models, CONFIG_CLASSES[kind])(dict(UNET_CONFIGS[kind]))


def build(kind: str, seed: int = 0, unet_dtype: torch.dtype | None = None) -> RealSizeModels:
    """Random-weight MODEL/CLIP/VAE of `kind` ('sd15', 'sd21', 'sdxl'), built under inference mode like loaders."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    gen = torch.Generator().manual_seed(seed)
    device = mm.get_torch_device()
    with torch.inference_mode():
        config = _config(kind)
        dtype = unet_dtype or mm.unet_dtype(model_params=0, supported_dtypes=config.supported_inference_dtypes)
        config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, device, config.supported_inference_dtypes))
        cls = comfy.model_base.SDXL if kind == "sdxl" else comfy.model_base.BaseModel
        base = cls(config, model_type=comfy.model_base.ModelType.EPS, device=mm.unet_offload_device())
        unet_params = init_weights(base.diffusion_model, gen)
        model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=mm.unet_offload_device())
        clip = comfy.sd.CLIP(target=config.clip_target(), embedding_directory=None)
        clip_params = init_weights(clip.cond_stage_model, gen)
        source = AutoencoderKL(**VAE_CONFIG["params"])
        vae_params = init_weights(source, gen)
        vae = comfy.sd.VAE(sd=source.state_dict(), config=VAE_CONFIG)
        del source
    return RealSizeModels(model, clip, vae, kind, unet_params, clip_params, vae_params)


def with_unet_dtype(m: RealSizeModels, dtype: torch.dtype) -> Any:
    """A MODEL with `m`'s UNet weights (rounded to `dtype`), configured by the host for `dtype` on this device."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher

    device = mm.get_torch_device()
    with torch.inference_mode():
        config = _config(m.kind)
        config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, device, config.supported_inference_dtypes))
        cls = comfy.model_base.SDXL if m.kind == "sdxl" else comfy.model_base.BaseModel
        base = cls(config, model_type=comfy.model_base.ModelType.EPS, device=mm.unet_offload_device())
        base.diffusion_model.load_state_dict(m.model.model.diffusion_model.state_dict())
        return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=mm.unet_offload_device())
