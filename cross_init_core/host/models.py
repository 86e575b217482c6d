"""What the host's MODEL and CLIP are (family, encoders, prediction type) and their non-streaming copies.

Newer ComfyUI streams weights through reusable GPU buffers ("dynamic VRAM"), which autograd cannot keep for a
backward pass: `static_models` asks the host for its ordinary copies to train on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..common.errors import UnsupportedModelError
from ..common.families import SUPPORTED_MODELS, SUPPORTED_PREDICTIONS, EncoderSlot

log = logging.getLogger(__name__)


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def inner_encoders(clip: Any) -> list[tuple[str, Any]]:
    csm = getattr(clip, "cond_stage_model", None)
    if csm is None:
        raise UnsupportedModelError("clip: this input is not a ComfyUI CLIP object (connect a checkpoint's CLIP output).")
    kind = type(csm).__name__
    encoders: list[tuple[str, Any]] = []
    if kind == "SDXLClipModel":
        encoders = [("l", csm.clip_l), ("g", csm.clip_g)]
    elif kind in ("SD1ClipModel", "SD2ClipModel") and getattr(csm, "clip", None) in ("clip_l", "clip_h"):
        encoders = [(csm.clip_name, getattr(csm, csm.clip))]
    # the wrapper's slots can hold other encoders (the host's `clip_l_class` option): check what is inside
    foreign = [getattr(enc, "transformer", enc) for _key, enc in encoders]
    foreign = [inner for inner in foreign if type(inner).__name__ != "CLIPTextModel"]
    if not encoders or foreign:
        inner = f" holding {_type_name(foreign[0])}" if foreign else ""
        raise UnsupportedModelError(
            f"unsupported model: the CLIP's text encoder is {_type_name(csm)}{inner}; supported: {SUPPORTED_MODELS}. "
            "Load an SD 1.5, SD 2.x or SDXL checkpoint."
        )
    return encoders


def encoder_slots(clip: Any) -> list[EncoderSlot]:
    """The text encoders of `clip`, in the order the host concatenates their outputs."""
    slots = []
    for token_key, encoder in inner_encoders(clip):
        width = int(encoder.transformer.get_input_embeddings().weight.shape[1])
        slots.append(EncoderSlot(key=f"clip_{token_key}", token_key=token_key, width=width))
    return slots


def token_table(clip: Any, slot: EncoderSlot) -> torch.Tensor:
    """The encoder's input token-embedding table as float32 [vocab, width] (host weights are often fp16)."""
    encoder = dict(inner_encoders(clip))[slot.token_key]
    with torch.inference_mode(False):
        weight = encoder.transformer.get_input_embeddings().weight.detach()
        # fp16 -> float32 already copies; a float32 (inference) tensor needs an explicit copy
        return weight.clone() if weight.dtype == torch.float32 else weight.float()


def hf_tokenizer(clip: Any, slot: EncoderSlot) -> Any:
    """The Hugging Face BPE tokenizer behind the host tokenizer of this slot."""
    return getattr(clip.tokenizer, slot.key).tokenizer


def prediction_type(model: Any) -> str:
    """'eps' or 'v': the parametrization the UNet predicts. Anything else is unsupported."""
    import comfy.model_base

    model_type = getattr(model.model, "model_type", None)
    host_types = {comfy.model_base.ModelType.EPS: "eps", comfy.model_base.ModelType.V_PREDICTION: "v"}
    if model_type in host_types:
        return host_types[model_type]
    raise UnsupportedModelError(
        f"unsupported model: the MODEL predicts {model_type} ({_type_name(model.model)}); supported: "
        f"{SUPPORTED_MODELS} with {SUPPORTED_PREDICTIONS}."
    )


def unet_config(model: Any) -> dict[str, Any]:
    return getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}


def model_context_width(model: Any) -> int | None:
    width = unet_config(model).get("context_dim")
    return int(width) if width is not None else None


def is_sdxl_model(model: Any) -> bool:
    return type(model.model).__name__ == "SDXL"


def check_model_matches_clip(model: Any, clip: Any) -> list[EncoderSlot]:
    """Checks MODEL and CLIP belong together; returns the CLIP's slots."""
    slots = encoder_slots(clip)
    prediction_type(model)
    text_width = sum(s.width for s in slots)
    context = model_context_width(model)
    if context is not None and context != text_width:
        raise UnsupportedModelError(
            f"model/clip: the MODEL expects text features {context} wide but the CLIP gives {text_width} "
            f"({', '.join(f'{s.key} {s.width}' for s in slots)}). Connect MODEL and CLIP from the same checkpoint."
        )
    if is_sdxl_model(model) != (len(slots) == 2):
        raise UnsupportedModelError("model/clip: SDXL MODEL and CLIP must be used together. Connect both from the same checkpoint.")
    return slots


def _is_dynamic(patcher: Any) -> bool:
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if callable(is_dynamic) else False


def static_models(model: Any, clip: Any) -> tuple[Any, Any]:
    """MODEL and CLIP whose weights are ordinary module parameters during a forward pass.

    ComfyUI 0.33 (on NVIDIA, by default) streams weights through reusable GPU buffers ("dynamic VRAM");
    autograd cannot keep such weights for the backward pass, so training uses the host's own non-dynamic
    copies. Where nothing streams (0.3.75, which lacks the feature; the CPU; --disable-dynamic-vram) the
    objects are returned unchanged.
    """
    try:
        if _is_dynamic(model):
            model = model.get_non_dynamic_delegate()
            log.info("Cross-Init: training on a non-streaming copy of the MODEL (dynamic VRAM is on)")
        if _is_dynamic(getattr(clip, "patcher", None)):
            clip = clip.clone(disable_dynamic=True)
            # ComfyUI 0.33's CLIP.clone(disable_dynamic=True) gives a patcher around a reloaded text encoder but
            # keeps the original (streaming) cond_stage_model: train the module the new patcher loads
            if clip.patcher.model is not clip.cond_stage_model:
                clip.cond_stage_model = clip.patcher.model
            log.info("Cross-Init: training on a non-streaming copy of the CLIP (dynamic VRAM is on)")
        if _is_dynamic(model) or _is_dynamic(getattr(clip, "patcher", None)):
            raise RuntimeError("the copies the host gave still stream their weights")
    except (AttributeError, RuntimeError, TypeError) as exc:
        raise UnsupportedModelError(
            "model: this ComfyUI streams model weights (dynamic VRAM) and gave no static copy to train on "
            f"({type(exc).__name__}: {exc}). Start ComfyUI with --disable-dynamic-vram to train embeddings."
        ) from None
    return model, clip
