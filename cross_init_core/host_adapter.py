"""The one place that knows ComfyUI internals and works around them for training.

ComfyUI runs nodes under `torch.inference_mode()`, so host weights are inference tensors that autograd
cannot save for backward, and its CLIP layers add in place onto tensors that layer norm saved. The
`training_session` context below makes the host's own MODEL and CLIP differentiable with respect to
spliced-in token vectors, without copying weights and without changing them, and puts every object
back as it was on exit, exceptions included.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UnsupportedModelError

log = logging.getLogger(__name__)

SUPPORTED_MODELS = "SD 1.x (clip_l, 768), SD 2.x (clip_h, 1024), SDXL (clip_l 768 + clip_g 1280)"


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder of a CLIP: `key` names it in embedding files, `token_key` in token dicts."""

    key: str
    token_key: str
    width: int


# ---------------------------------------------------------------------------------------------
# What kind of model is this?


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _inner_encoders(clip: Any) -> list[tuple[str, Any]]:
    csm = getattr(clip, "cond_stage_model", None)
    if csm is None:
        raise UnsupportedModelError("clip: this input is not a ComfyUI CLIP object (connect a checkpoint's CLIP output).")
    kind = type(csm).__name__
    if kind == "SDXLClipModel":
        return [("l", csm.clip_l), ("g", csm.clip_g)]
    if kind in ("SD1ClipModel", "SD2ClipModel") and getattr(csm, "clip", None) in ("clip_l", "clip_h"):
        return [(csm.clip_name, getattr(csm, csm.clip))]
    raise UnsupportedModelError(
        f"unsupported model: the CLIP's text encoder is {_type_name(csm)}; supported: {SUPPORTED_MODELS}. "
        "Load an SD 1.5, SD 2.x or SDXL checkpoint."
    )


def encoder_slots(clip: Any) -> list[EncoderSlot]:
    """The text encoders of `clip`, in the order the host concatenates their outputs."""
    slots = []
    for token_key, encoder in _inner_encoders(clip):
        width = int(encoder.transformer.get_input_embeddings().weight.shape[1])
        slots.append(EncoderSlot(key=f"clip_{token_key}", token_key=token_key, width=width))
    return slots


def token_table(clip: Any, slot: EncoderSlot) -> torch.Tensor:
    """The encoder's input token-embedding table as float32 [vocab, width] (host weights are often fp16)."""
    encoder = dict(_inner_encoders(clip))[slot.token_key]
    with torch.inference_mode(False):
        return encoder.transformer.get_input_embeddings().weight.detach().float().clone()


def hf_tokenizer(clip: Any, slot: EncoderSlot) -> Any:
    """The Hugging Face BPE tokenizer behind the host tokenizer of this slot."""
    return getattr(clip.tokenizer, slot.key).tokenizer


def special_tokens(clip: Any, slot: EncoderSlot) -> dict[str, int]:
    sd_tokenizer = getattr(clip.tokenizer, slot.key)
    return {"start": sd_tokenizer.start_token, "end": sd_tokenizer.end_token}


def prediction_type(model: Any) -> str:
    """'eps' or 'v': the parametrization the UNet predicts. Anything else is unsupported."""
    import comfy.model_base

    model_type = getattr(model.model, "model_type", None)
    if model_type == comfy.model_base.ModelType.EPS:
        return "eps"
    if model_type == comfy.model_base.ModelType.V_PREDICTION:
        return "v"
    raise UnsupportedModelError(
        f"unsupported model: the MODEL predicts {model_type} ({_type_name(model.model)}); supported: "
        f"{SUPPORTED_MODELS} with epsilon or v-prediction."
    )


def model_context_width(model: Any) -> int | None:
    config = getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}
    width = config.get("context_dim")
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


# ---------------------------------------------------------------------------------------------
# Text encoding with tensor tokens


def tokenize(clip: Any, text: str) -> dict[str, list[list[tuple[Any, float]]]]:
    return clip.tokenize(text)


def encode_conditioning(clip: Any, tokens: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The host's own conditioning path (clip skip, layer choice, weights): cond [1, 77*k, D], pooled."""
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return out["cond"], out.get("pooled_output")


def _clone_every_saved_tensor() -> contextlib.AbstractContextManager[None]:
    # ComfyUI's CLIPLayer does `x += ...` on a tensor layer norm saved. Cloning EVERY saved tensor keeps
    # the values autograd needs exact (cloning only some would give silently wrong gradients).
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)


def encode_batch_for_training(
    clip: Any, slots: Sequence[EncoderSlot], token_batches: dict[str, list[list[tuple[Any, float]]]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encodes a batch of single-chunk captions (one per row) differentiably; returns cond [b, 77, D], pooled.

    Same layer choice as `encode_from_tokens` (the CLIP's clip-skip), all weights 1.0, rows batched.
    """
    encoders = dict(_inner_encoders(clip))
    clip.cond_stage_model.reset_clip_options()
    if clip.layer_idx is not None:
        clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})
    outputs = []
    pooled = None
    with _clone_every_saved_tensor():
        for slot in slots:
            rows = [[token for token, _weight in row] for row in token_batches[slot.token_key]]
            z, slot_pooled = encoders[slot.token_key].encode(rows)[:2]
            outputs.append(z)
            pooled = slot_pooled  # SDXL: the last encoder (clip_g) provides the pooled output
    length = min(z.shape[1] for z in outputs)
    return torch.cat([z[:, :length] for z in outputs], dim=-1), pooled


# ---------------------------------------------------------------------------------------------
# Making host weights usable by autograd for the duration of training


def _non_inference_alias(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor sharing `tensor`'s memory that autograd may save (zero copy via DLPack when possible)."""
    if not tensor.is_inference():
        return tensor.detach()
    try:
        return torch.utils.dlpack.from_dlpack(tensor.detach())
    except (BufferError, RuntimeError, TypeError):
        # dtypes DLPack cannot carry (e.g. fp8): a copy is correct, just slower
        return tensor.detach().clone()


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


def _clip_options_state(clip: Any) -> list[tuple[Any, tuple[Any, Any, Any]]]:
    return [
        (enc, (enc.layer, enc.layer_idx, enc.return_projected_pooled))
        for _key, enc in _inner_encoders(clip)
    ]


@contextlib.contextmanager
def training_session(model: Any, clip: Any) -> Iterator[torch.device]:
    """Loads MODEL and CLIP onto the compute device and makes them differentiable; yields the device.

    Host weights are never written: parameters are swapped for zero-copy aliases and the original
    objects are put back on exit, as are the CLIP's layer options.
    """
    import comfy.model_management as mm

    mm.load_models_gpu([model, clip.patcher], force_full_load=True)
    device = model.load_device
    options = _clip_options_state(clip)
    modules = [model.model] + [enc.transformer for _key, enc in _inner_encoders(clip)]
    try:
        with torch.inference_mode(False), torch.enable_grad(), _aliased_weights(modules) as count:
            log.debug("training session: %d host tensors aliased", count)
            yield device
    finally:
        for enc, (layer, layer_idx, projected) in options:
            enc.layer, enc.layer_idx, enc.return_projected_pooled = layer, layer_idx, projected


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


def vae_encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Host VAE encode of [B, H, W, 3] pixels in [0, 1]; returns latents on the intermediate device."""
    return vae.encode(pixels[..., :3])


# ---------------------------------------------------------------------------------------------
# Progress and cancel


def check_interrupted() -> None:
    """Raises the host's InterruptProcessingException when the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def progress_reporter(total: int, node_id: str | None = None) -> Callable[[int, Any], None]:
    """A callback (step, preview_or_None) that advances ComfyUI's progress bar for this node."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total, node_id=node_id) if node_id is not None else comfy.utils.ProgressBar(total)

    def report(step: int, preview: Any = None) -> None:
        bar.update_absolute(step, total, preview)

    return report


def embedding_directories() -> list[str]:
    import folder_paths

    return list(folder_paths.get_folder_paths("embeddings"))


def list_embedding_files() -> list[str]:
    import folder_paths

    return sorted(folder_paths.get_filename_list("embeddings"))


def embedding_file_path(name: str) -> str | None:
    import folder_paths

    return folder_paths.get_full_path("embeddings", name)
