"""Randomly initialised SD 1.5 and SD 2.1 768-v checkpoints at the real architecture, made by ComfyUI itself.

The UNet, text encoder and VAE are ComfyUI's own classes with the real configurations (the UNet configs
are the ones `comfy/model_detection.py` derives from real SD 1.5 / SD 2.1 files), weights are drawn from
a seeded generator (comfy ops skip initialisation), and the file is written with the host's
`comfy.sd.save_checkpoint` (what the stock CheckpointSave node calls) in fp16. Loading such a file with
the stock CheckpointLoaderSimple therefore goes through the real detection and loading code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# comfy/model_detection.py (unet_config_from_diffusers_unet: SD15, SD21) less `dtype`, which set_inference_dtype sets
_COMMON_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
SD15_UNET = {**_COMMON_UNET, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8}
SD21_UNET = {**_COMMON_UNET, "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64}

# the SD1.x/SD2.x KL VAE (comfy/sd.py VAE default ddconfig)
VAE_CONFIG = {
    "params": {
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
        },
        "embed_dim": 4,
    }
}

# comfy/supported_models.py SD20.model_type: V_PREDICTION when this bias has std > 0.09 (real SD 2.x 768-v
# weights do; 512 eps weights do not). The key is under "model.diffusion_model." in a checkpoint file.
V_PRED_PROBE = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_PROBE_STD = 0.2


@dataclass(frozen=True)
class Spec:
    kind: str
    config_class: str  # comfy.supported_models class name the host must detect
    unet: dict[str, Any]
    prediction: str  # "eps" or "v", as core.host.prediction_type reports it
    slot_key: str  # embedding-file key / encoder
    token_key: str  # key in clip.tokenize() output
    width: int


# SD 1.5 as the stock loader detects it (model_channels 320, context 768, the real CLIP-L and VAE), but one UNet
# level with one block: the detection only looks at those fields, so it loads as SD15 through the real code.
# The full SD 1.5 UNet (860 M parameters) makes each server start and step minutes slower on a 2-core CPU;
# this one has 26 M. For the runner's server tests and the CPU rehearsal of the GPU check.
SMALL_SD15_UNET = {**SD15_UNET, "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1],
                   "transformer_depth_output": [1, 1]}

SPECS = {
    "sd15": Spec("sd15", "SD15", SD15_UNET, "eps", "clip_l", "l", 768),
    "sd21v": Spec("sd21v", "SD20", SD21_UNET, "v", "clip_h", "h", 1024),
    "small_sd15": Spec("small_sd15", "SD15", SMALL_SD15_UNET, "eps", "clip_l", "l", 768),
}


def init_weights(module: torch.nn.Module, gen: torch.Generator) -> int:
    """Seeded init in place: norm layers weight 1 / bias 0, matrices N(0, 1/fan_in), other vectors N(0, 0.02^2).

    Returns the number of parameters set. Every parameter is written (comfy ops leave memory uninitialised).
    """
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    count = 0
    for _name, sub in module.named_modules():
        for pname, p in sub.named_parameters(recurse=False):
            if isinstance(sub, norm_types):
                p.fill_(1.0 if pname == "weight" else 0.0)
            elif p.ndim >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(math.prod(p.shape[1:])), generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
            count += p.numel()
    for _name, b in module.named_buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            raise AssertionError(f"non-finite buffer {_name} in {type(module).__name__}")
    return count


def _build_unet(spec: Spec, gen: torch.Generator) -> tuple[Any, int]:
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = getattr(comfy.supported_models, spec.config_class)(dict(spec.unet))
    config.set_inference_dtype(torch.float16, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if spec.prediction == "v" else comfy.model_base.ModelType.EPS
    model = comfy.model_base.BaseModel(config, model_type=model_type, device=torch.device("cpu"))
    count = init_weights(model.diffusion_model, gen)
    if spec.prediction == "v":
        probe = model.diffusion_model.get_parameter(V_PRED_PROBE)
        probe.normal_(0.0, V_PRED_PROBE_STD, generator=gen)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    return patcher, count


def _build_clip(model: Any, gen: torch.Generator) -> tuple[Any, int]:
    import comfy.sd

    target = model.model.model_config.clip_target()
    clip = comfy.sd.CLIP(target=target, embedding_directory=None, model_options={"dtype": torch.float16})
    return clip, init_weights(clip.cond_stage_model, gen)


def _build_vae(gen: torch.Generator) -> tuple[Any, int]:
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    source = AutoencoderKL(**VAE_CONFIG["params"])
    count = init_weights(source, gen)
    # hand the initialised weights to the host's VAE wrapper (an empty sd would log every key as missing)
    vae = comfy.sd.VAE(sd=source.state_dict(), config=VAE_CONFIG, dtype=torch.float16)
    return vae, count


def build_checkpoint(kind: str, path: Path, seed: int = 0) -> dict[str, int]:
    """Builds a random `kind` checkpoint with the host's classes and saves it to `path` (fp16 safetensors).

    Built under `torch.inference_mode()`, as the stock CheckpointSave node runs. Returns parameter counts.
    """
    import comfy.model_management as mm
    import comfy.sd

    spec = SPECS[kind]
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        model, unet_params = _build_unet(spec, gen)
        clip, clip_params = _build_clip(model, gen)
        vae, vae_params = _build_vae(gen)
        metadata = {"modelspec.title": f"random {kind} (cross-init tests)", "modelspec.architecture": kind}
        comfy.sd.save_checkpoint(str(path), model, clip, vae, metadata=metadata)
    del model, clip, vae
    mm.unload_all_models()
    return {"unet": unet_params, "clip": clip_params, "vae": vae_params}
