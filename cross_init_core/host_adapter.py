"""The one place that knows ComfyUI internals and works around them for training.

ComfyUI runs nodes under `torch.inference_mode()`, so host weights are inference tensors that autograd
cannot save for backward, and its CLIP layers add in place onto tensors that layer norm saved. The
`training_session` context below makes the host's own MODEL and CLIP differentiable with respect to
spliced-in token vectors, without copying weights and without changing them, and puts every object
back as it was on exit, exceptions included.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .errors import UnsupportedModelError
from .families import SUPPORTED_MODELS, SUPPORTED_PREDICTIONS, EncoderSlot

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# What kind of model is this?


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _inner_encoders(clip: Any) -> list[tuple[str, Any]]:
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
    for token_key, encoder in _inner_encoders(clip):
        width = int(encoder.transformer.get_input_embeddings().weight.shape[1])
        slots.append(EncoderSlot(key=f"clip_{token_key}", token_key=token_key, width=width))
    return slots


def token_table(clip: Any, slot: EncoderSlot) -> torch.Tensor:
    """The encoder's input token-embedding table as float32 [vocab, width] (host weights are often fp16)."""
    encoder = dict(_inner_encoders(clip))[slot.token_key]
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


def _unet_config(model: Any) -> dict[str, Any]:
    return getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}


def model_context_width(model: Any) -> int | None:
    width = _unet_config(model).get("context_dim")
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

    Newer ComfyUI (about 0.3.7x and later, on NVIDIA by default) streams weights through reusable GPU
    buffers ("dynamic VRAM"); autograd cannot keep such weights for the backward pass, so training uses
    the host's own non-dynamic copies. Hosts without that feature (0.3.75) return the objects unchanged.
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


# ---------------------------------------------------------------------------------------------
# Text encoding with tensor tokens


def tokenize(clip: Any, text: str) -> dict[str, list[list[tuple[Any, float]]]]:
    return clip.tokenize(text)


def encode_conditioning(clip: Any, tokens: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The host's own conditioning path (clip skip, layer choice, weights): cond [1, 77*k, D], pooled."""
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return out["cond"], out.get("pooled_output")


def _out_of_place_clip_layer(layer: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """ComfyUI's CLIPLayer.forward without its in-place `x += ...` (same math, autograd-safe)."""

    def forward(x: torch.Tensor, mask: Any = None, optimized_attention: Any = None) -> torch.Tensor:
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))

    return forward


_CLIP_LAYER_PARAMETERS = ["self", "x", "mask", "optimized_attention"]


def _clip_layers(clip: Any) -> list[torch.nn.Module]:
    return [m for _key, enc in _inner_encoders(clip) for m in enc.transformer.modules() if type(m).__name__ == "CLIPLayer"]


def _clip_layer_is_known(layer: torch.nn.Module) -> bool:
    """The host's CLIPLayer has the forward this module replaces (ComfyUI 0.3.x: x += attn; x += mlp)."""
    try:
        names = list(inspect.signature(type(layer).forward).parameters)
    except (TypeError, ValueError):
        return False
    return names == _CLIP_LAYER_PARAMETERS and all(hasattr(layer, a) for a in ("self_attn", "layer_norm1", "mlp", "layer_norm2"))


def _clone_every_saved_tensor() -> contextlib.AbstractContextManager[None]:
    # Fallback for CLIP layers this module does not know: cloning EVERY saved tensor keeps the values
    # autograd needs exact (cloning only some would give silently wrong gradients), at the cost of a copy.
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)


@contextlib.contextmanager
def _instance_forwards(modules: Sequence[torch.nn.Module], make_forward: Callable[[torch.nn.Module], Callable[..., Any]],
                       registry: weakref.WeakSet[torch.nn.Module] | None = None) -> Iterator[int]:
    """Gives each module an instance `forward` (never the class's) for the duration; removed on exit.

    A module that already has an instance forward (another pack's patch) is left alone. `registry`, when
    given, holds the patched modules while they are patched. Yields how many were patched.
    """
    patched: list[torch.nn.Module] = []
    try:
        for module in modules:
            if "forward" not in module.__dict__:
                module.forward = make_forward(module)
                patched.append(module)
                if registry is not None:
                    registry.add(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
            if registry is not None:
                registry.discard(module)


# CLIP layers currently running this module's out-of-place forward (another pack's own forward is not ours)
_OUT_OF_PLACE_LAYERS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


@contextlib.contextmanager
def _out_of_place_clip(clip: Any) -> Iterator[int]:
    """For the duration of training, every CLIPLayer of `clip` runs an out-of-place forward; restored on exit.

    ComfyUI's CLIPLayer does `x += ...` on a tensor layer norm saved for backward. Replacing the two adds
    by out-of-place ones gives exact gradients without copying anything; any other in-place write onto a
    saved tensor would make autograd raise (the tensors are normal, version-counted ones in a session),
    never give silently wrong gradients. The previous fix (cloning every saved tensor) copied every cast
    weight of the text encoder on every step. Only instance attributes are set, never the class.
    """
    layers = _clip_layers(clip)
    if not all(_clip_layer_is_known(layer) for layer in layers):
        log.warning("Cross-Init: this ComfyUI's CLIPLayer differs from the known one; using the slower "
                    "clone-every-saved-tensor fix for the text encoder")
        layers = []
    with _instance_forwards(layers, _out_of_place_clip_layer, _OUT_OF_PLACE_LAYERS) as count:
        yield count


def clip_layer(clip: Any) -> str:
    """The text-encoder layer the conditioning is taken from, as the host would use it.

    The host's layer index (CLIP Set Last Layer, e.g. '-2') when one is set; otherwise each encoder's
    default ('last', 'penultimate', or the index of its default hidden layer). SDXL's two encoders are
    named when their defaults differ, e.g. 'clip_l:-2 clip_g:last'.
    """
    if clip.layer_idx is not None:
        return str(clip.layer_idx)
    names = []
    for key, encoder in _inner_encoders(clip):
        layer, index = (getattr(encoder, "options_default", None) or (getattr(encoder, "layer", "last"), None, None))[:2]
        names.append((f"clip_{key}", str(index) if layer == "hidden" else str(layer)))
    if len({name for _key, name in names}) == 1:
        return names[0][1]
    return " ".join(f"{key}:{name}" for key, name in names)


def encode_batch_for_training(
    clip: Any, slots: Sequence[EncoderSlot], token_batches: dict[str, list[list[tuple[Any, float]]]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encodes a batch of single-chunk captions (one per row) differentiably; returns cond [b, 77, D], pooled.

    Same layer choice as `encode_from_tokens` (the CLIP's clip-skip), all weights 1.0, rows batched.
    Differentiable inside a `training_session` (which makes the CLIP layers out-of-place; where it could
    not, every saved tensor is cloned instead).
    """
    encoders = dict(_inner_encoders(clip))
    clip.cond_stage_model.reset_clip_options()
    if clip.layer_idx is not None:
        clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})
    # newer hosts run the encoder where `execution_device` says (reset to None = where the weights are);
    # older ones ignore the key
    clip.cond_stage_model.set_clip_options({"execution_device": clip.patcher.load_device})
    outputs = []
    pooled = None
    out_of_place = all(layer in _OUT_OF_PLACE_LAYERS for layer in _clip_layers(clip))
    with contextlib.nullcontext() if out_of_place else _clone_every_saved_tensor():
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


_CLIP_OPTION_ATTRIBUTES = ("layer", "layer_idx", "return_projected_pooled", "execution_device")


def _clip_options_state(clip: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Each encoder's clip options (those it has), to put back after training."""
    return [
        (enc, {name: getattr(enc, name) for name in _CLIP_OPTION_ATTRIBUTES if hasattr(enc, name)})
        for _key, enc in _inner_encoders(clip)
    ]


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
    device = model.load_device
    options = _clip_options_state(clip)
    modules = [model.model] + [enc.transformer for _key, enc in _inner_encoders(clip)]
    in_training = getattr(mm, "in_training", None)  # newer hosts' memory manager flag for training nodes
    try:
        if in_training is not None:
            mm.in_training = True
        with torch.inference_mode(False), torch.enable_grad(), _aliased_weights(modules) as count, \
                _out_of_place_clip(clip) as layers:
            log.debug("training session: %d host tensors aliased, %d CLIP layers out of place", count, layers)
            yield device
    finally:
        if in_training is not None:
            mm.in_training = in_training
        for enc, values in options:
            for name, value in values.items():
                setattr(enc, name, value)


def _unet_blocks(model: Any) -> list[torch.nn.Module]:
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
    with _instance_forwards(_unet_blocks(model) if enabled else [], _checkpointed_forward) as count:
        yield count


# ---------------------------------------------------------------------------------------------
# Memory


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
    return _unet_config(model).get("model_channels", 320)


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


def sample(model: Any, latent: torch.Tensor, positive: list, negative: list, steps: int, cfg: float, seed: int) -> torch.Tensor:
    """The host's own KSampler path (euler, normal schedule), as a preview render uses it."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               denoise=1.0, disable_pbar=True, seed=seed)


def vae_decode(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    """Host VAE decode to an IMAGE [B, H, W, 3] in [0, 1]."""
    return vae.decode(latent)


def vae_encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Host VAE encode of [B, H, W, 3] pixels in [0, 1]; returns latents on the intermediate device."""
    return vae.encode(pixels[..., :3])


# ---------------------------------------------------------------------------------------------
# Progress and cancel


def check_interrupted() -> None:
    """Raises the host's InterruptProcessingException when the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def console_progress_enabled() -> bool:
    """ComfyUI's switch for console progress bars (`comfy.utils.PROGRESS_BAR_ENABLED`, which KSampler honours too)."""
    import comfy.utils

    return bool(getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True))


def progress_reporter(total: int, node_id: str | None = None) -> Callable[[int, Any], None]:
    """A callback (step, preview_or_None) that advances ComfyUI's progress bar for this node."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total, node_id=node_id) if node_id is not None else comfy.utils.ProgressBar(total)

    def report(step: int, preview: Any = None) -> None:
        bar.update_absolute(step, total, preview)

    return report


def register_model_folder(key: str) -> list[str]:
    """Adds ComfyUI/models/<key> under the folder key `key`, after any extra_model_paths.yaml entries (so a
    `<key>:` entry there works); idempotent. Returns the key's folders in search order."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, key)
    entry = folder_paths.folder_names_and_paths.get(key)
    if entry is None:
        folder_paths.folder_names_and_paths[key] = ([default], set())
    elif default not in entry[0]:
        entry[0].append(default)
    return list(folder_paths.folder_names_and_paths[key][0])


def embedding_directories() -> list[str]:
    import folder_paths

    return list(folder_paths.get_folder_paths("embeddings"))


def list_embedding_files() -> list[str]:
    import folder_paths

    return sorted(folder_paths.get_filename_list("embeddings"))


def embedding_file_path(name: str) -> str | None:
    import folder_paths

    return folder_paths.get_full_path("embeddings", name)


def output_directory() -> str:
    """ComfyUI's output folder: the one place besides input/temp that the server's /view serves files from."""
    import folder_paths

    return folder_paths.get_output_directory()
