"""Checks ComfyUI IMAGE batches and converts them to per-image RGB float arrays.

Every refusal names the input, the image index and what to do, because a batch often comes from a
folder loader and the user has to find the one bad file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from .errors import InvalidImageError

logger = logging.getLogger(__name__)

MIN_SIDE = 64  # below this no detector finds a face worth training on
HUGE_SIDE = 8192  # worth a log line; detection itself runs on a copy of at most prepare.DETECT_MAX_PIXELS
# Upscalers and colour nodes overshoot [0, 1] slightly; such values are clamped (documented).
RANGE_TOLERANCE = 0.05


def _where(input_name: str, index: int, count: int, height: int, width: int) -> str:
    return f"input `{input_name}`, image index {index} (of {count}, {width}x{height} px)"


def split_batch(image: torch.Tensor | Sequence[torch.Tensor], input_name: str = "image", min_side: int = MIN_SIDE) -> list[np.ndarray]:
    """One float32 HxWx3 RGB array in [0, 1] per photo of an IMAGE batch, or of a list of batches (a
    list input lets photos of different sizes in); indexes count across the whole list. `min_side` is for
    callers that need no face detection (the CLIP prompt score)."""
    batches = list(image) if isinstance(image, (list, tuple)) else [image]
    checked = [_as_batch(b, input_name) for b in batches]
    count = sum(int(b.shape[0]) for b in checked)
    if count == 0:
        raise InvalidImageError(f"Input `{input_name}` is an empty batch (0 images). Connect at least one photo of the face.")
    photos = []
    for batch in checked:
        for i in range(int(batch.shape[0])):
            photos.append(_convert_one(batch[i], input_name, len(photos), count, min_side))
    return photos


def _as_batch(image: object, input_name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise InvalidImageError(f"Input `{input_name}` must be a ComfyUI IMAGE (a torch tensor), got {type(image).__name__}.")
    if image.dim() == 3 and image.shape[-1] in (1, 2, 3, 4):
        image = image.unsqueeze(0)  # a single HxWxC image, as some custom nodes pass it
    if image.dim() != 4:
        raise InvalidImageError(
            f"Input `{input_name}` has shape {tuple(image.shape)}; expected an IMAGE batch "
            "[batch, height, width, channels]. Is a MASK or LATENT connected instead?"
        )
    return image


def _convert_one(pixels: torch.Tensor, input_name: str, index: int, count: int, min_side: int = MIN_SIDE) -> np.ndarray:
    height, width, channels = (int(v) for v in pixels.shape)
    where = _where(input_name, index, count, height, width)
    if channels not in (1, 2, 3, 4):
        raise InvalidImageError(f"{where} has {channels} channels; expected 3 (RGB), 4 (RGBA) or 1 (grayscale).")
    if min(height, width) < min_side:
        need = "to find and align a face. Use a larger photo (ideally the face itself is 256 px or more)."
        if min_side < MIN_SIDE:
            need = "here."
        raise InvalidImageError(f"{where} is too small: each side must be at least {min_side} px {need}")
    array = pixels.detach().to("cpu", torch.float32).numpy()
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).any(axis=-1).sum())
        raise InvalidImageError(
            f"{where} contains NaN or infinite values ({bad} pixels). The node that produced it "
            "failed (often a VAE decode in fp16); fix that node or load the photo from disk instead."
        )
    low, high = float(array.min()), float(array.max())
    if high > 1.5:
        hint = "16-bit (0-65535)" if high > 255.5 else "8-bit (0-255)"
        raise InvalidImageError(
            f"{where} has values up to {high:g}, which looks like {hint} pixel values; ComfyUI images are "
            "floats in 0..1. Load the photo with the Load Image node, or divide the tensor by "
            f"{65535 if high > 255.5 else 255} before this node."
        )
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise InvalidImageError(
            f"{where} has values in [{low:g}, {high:g}], outside 0..1 (a [-1, 1] normalized tensor?). Convert it to 0..1 before this node."
        )
    if low < 0.0 or high > 1.0:
        logger.info("%s: clamping small overshoot [%g, %g] to 0..1", where, low, high)
        array = np.clip(array, 0.0, 1.0)
    if channels == 4:
        array = array[..., :3]  # alpha is not part of the face; the crop is RGB
    elif channels in (1, 2):
        array = np.repeat(array[..., :1], 3, axis=-1)  # grayscale (+alpha): train on gray RGB
    if max(height, width) > HUGE_SIDE:
        logger.info("%s is larger than %d px: faces are found on a downscaled copy, crops cut from the full photo", where, HUGE_SIDE)
    return np.ascontiguousarray(array, dtype=np.float32)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
