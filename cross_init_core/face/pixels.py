"""Resizing and padding of uint8 RGB photos with torch, so face prep needs no OpenCV."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx3 uint8 resized to height x width: area averaging when shrinking, bicubic when enlarging."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(torch.float32)
    shrink = height <= rgb.shape[0] and width <= rgb.shape[1]
    if shrink:
        out = F.interpolate(tensor, size=(height, width), mode="area")
    else:
        out = F.interpolate(tensor, size=(height, width), mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def pad_edges(rgb: np.ndarray, pad: int) -> np.ndarray:
    """The photo with `pad` px on every side repeating its edge pixels."""
    return np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")


def fit_in_square(rgb: np.ndarray, side: int) -> tuple[Image.Image, float, int, int, int, int]:
    """The photo scaled to fit a black side x side canvas, centred: (canvas, scale, x offset, y offset, width, height)."""
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = Image.new("RGB", (side, side))
    ox, oy = (side - new_w) // 2, (side - new_h) // 2
    canvas.paste(Image.fromarray(resize(rgb, new_w, new_h)), (ox, oy))
    return canvas, scale, ox, oy, new_w, new_h
