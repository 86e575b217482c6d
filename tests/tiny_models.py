"""Tiny SD1-like (eps), SD2-like (v) and SDXL-like MODEL/CLIP/VAE built with ComfyUI's own classes.

Built under `torch.inference_mode()` like ComfyUI's loader nodes build them, so tests meet the same
inference-tensor weights as real runs. comfy ops skip weight init, so weights are set explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

CLIP_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 64}
# "sd1_wide": the tiny SD1 with CLIP-L's real width, so its files load through Cross-Init Load Embedding (which checks
# the real widths): for tests that go on from a saved file in the editor's graph
WIDE_CLIP_CONFIG = dict(CLIP_CONFIG, hidden_size=768, projection_dim=768)
CLIP_G_CONFIG = {"hidden_size": 96, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 96}


@dataclass
class TinyModels:
    model: Any
    clip: Any
    vae: Any
    kind: str


def _init_weights(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.05 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def _unet_config(context_dim: int, linear: bool, heads: int = 2) -> dict[str, Any]:
    return {
        "model_channels": 32,
        "in_channels": 4,
        "out_channels": 4,
        "num_res_blocks": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1, 1],
        "transformer_depth_middle": 1,
        "context_dim": context_dim,
        "num_heads": heads,
        "num_head_channels": -1,
        "use_linear_in_transformer": linear,
        "adm_in_channels": None,
        "use_spatial_transformer": True,
        "legacy": False,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "image_size": 32,
        "dtype": torch.float32,
    }


def _patcher(model: torch.nn.Module) -> Any:
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def build_vae(seed: int = 3) -> Any:
    import comfy.sd

    config = {
        "params": {
            "ddconfig": {
                "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
            },
            "embed_dim": 4,
        }
    }
    vae = comfy.sd.VAE(sd={}, config=config)
    _init_weights(vae.first_stage_model, seed)
    return vae


def build_clip(kind: str, embedding_directory: str | None = None, seed: int = 2) -> Any:
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models_base
    from comfy.text_encoders import sd2_clip

    if kind in ("sd1", "sd1_wide"):
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": dict(WIDE_CLIP_CONFIG if kind == "sd1_wide" else CLIP_CONFIG)}
    elif kind in ("sd2", "sd2_eps"):
        target = comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)
        options = {"clip_h_model_config": dict(CLIP_CONFIG, hidden_act="gelu")}
    elif kind == "sdxl":
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": dict(CLIP_CONFIG), "clip_g_model_config": dict(CLIP_G_CONFIG, hidden_act="gelu")}
    else:
        raise ValueError(kind)
    dirs = [embedding_directory] if embedding_directory else None
    clip = comfy.sd.CLIP(target=target, embedding_directory=dirs, model_options=options)
    _init_weights(clip.cond_stage_model, seed)
    return clip


def build_model(kind: str, seed: int = 1, dtype: torch.dtype = torch.float32, manual_cast: torch.dtype | None = None) -> Any:
    """The family's tiny MODEL; `dtype`/`manual_cast` go through the host's own `set_inference_dtype`, as its
    loader sets them on a GPU (e.g. float16, or float32 weights computed in float16 by comfy's manual-cast
    ops). Same seed, same weights in every dtype (rounded to it)."""
    import comfy.model_base
    import comfy.supported_models

    if kind in ("sd1", "sd1_wide"):
        config = comfy.supported_models.SD15(_unet_config(WIDE_CLIP_CONFIG["hidden_size"] if kind == "sd1_wide" else 64,
                                                          linear=False))
        model_type = comfy.model_base.ModelType.EPS
        cls = comfy.model_base.BaseModel
    elif kind in ("sd2", "sd2_eps"):  # SD 2.x 768-v, and the 512 px base (epsilon)
        config = comfy.supported_models.SD20(_unet_config(64, linear=True))
        model_type = comfy.model_base.ModelType.V_PREDICTION if kind == "sd2" else comfy.model_base.ModelType.EPS
        cls = comfy.model_base.BaseModel
    elif kind == "sdxl":
        unet = _unet_config(64 + 96, linear=True)
        unet.update({"num_classes": "sequential", "adm_in_channels": 96 + 6 * 256})
        config = comfy.supported_models.SDXL(unet)
        model_type = comfy.model_base.ModelType.EPS
        cls = comfy.model_base.SDXL
    else:
        raise ValueError(kind)
    # the family configs set real head sizes (SD2/SDXL: 64 channels per head); tiny models use 2 heads
    config.unet_config.update({"num_heads": 2, "num_head_channels": -1})
    config.set_inference_dtype(dtype, manual_cast)
    model = cls(config, model_type=model_type)
    _init_weights(model.diffusion_model, seed)
    return _patcher(model)


def build(kind: str, embedding_directory: str | None = None) -> TinyModels:
    """MODEL/CLIP/VAE of one family, under inference mode as ComfyUI's loaders make them."""
    with torch.inference_mode():
        return TinyModels(build_model(kind), build_clip(kind, embedding_directory), build_vae(), kind)
