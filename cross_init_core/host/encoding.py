"""Text encoding through the host CLIP with tensor tokens, differentiably.

ComfyUI's CLIPLayer adds in place (`x += ...`) onto a tensor layer norm saved for backward; for the length of a
training session every CLIPLayer runs an out-of-place forward instead (same math, exact gradients, nothing copied).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..common.families import EncoderSlot
from .forwards import instance_forwards
from .models import inner_encoders

log = logging.getLogger(__name__)


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


def clip_layers(clip: Any) -> list[torch.nn.Module]:
    return [m for _key, enc in inner_encoders(clip) for m in enc.transformer.modules() if type(m).__name__ == "CLIPLayer"]


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


# CLIP layers currently running this module's out-of-place forward (another pack's own forward is not ours)
OUT_OF_PLACE_LAYERS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


@contextlib.contextmanager
def out_of_place_clip(clip: Any) -> Iterator[int]:
    """For the duration of training, every CLIPLayer of `clip` runs an out-of-place forward; restored on exit.

    ComfyUI's CLIPLayer does `x += ...` on a tensor layer norm saved for backward. Replacing the two adds
    by out-of-place ones gives exact gradients without copying anything; any other in-place write onto a
    saved tensor would make autograd raise (the tensors are normal, version-counted ones in a session),
    never give silently wrong gradients. The previous fix (cloning every saved tensor) copied every cast
    weight of the text encoder on every step. Only instance attributes are set, never the class.
    """
    layers = clip_layers(clip)
    if not all(_clip_layer_is_known(layer) for layer in layers):
        log.warning("Cross-Init: this ComfyUI's CLIPLayer differs from the known one; using the slower "
                    "clone-every-saved-tensor fix for the text encoder")
        layers = []
    with instance_forwards(layers, _out_of_place_clip_layer, OUT_OF_PLACE_LAYERS) as count:
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
    for key, encoder in inner_encoders(clip):
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
    encoders = dict(inner_encoders(clip))
    clip.cond_stage_model.reset_clip_options()
    if clip.layer_idx is not None:
        clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})
    # newer hosts run the encoder where `execution_device` says (reset to None = where the weights are);
    # older ones ignore the key
    clip.cond_stage_model.set_clip_options({"execution_device": clip.patcher.load_device})
    outputs = []
    pooled = None
    out_of_place = all(layer in OUT_OF_PLACE_LAYERS for layer in clip_layers(clip))
    with contextlib.nullcontext() if out_of_place else _clone_every_saved_tensor():
        for slot in slots:
            rows = [[token for token, _weight in row] for row in token_batches[slot.token_key]]
            z, slot_pooled = encoders[slot.token_key].encode(rows)[:2]
            outputs.append(z)
            pooled = slot_pooled  # SDXL: the last encoder (clip_g) provides the pooled output
    length = min(z.shape[1] for z in outputs)
    return torch.cat([z[:, :length] for z in outputs], dim=-1), pooled


_CLIP_OPTION_ATTRIBUTES = ("layer", "layer_idx", "return_projected_pooled", "execution_device")


def clip_options_state(clip: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Each encoder's clip options (those it has), to put back after training."""
    return [
        (enc, {name: getattr(enc, name) for name in _CLIP_OPTION_ATTRIBUTES if hasattr(enc, name)})
        for _key, enc in inner_encoders(clip)
    ]
