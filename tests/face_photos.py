"""Real face photos shipped inside installed packages, and boxes measured on them by hand.

All boxes are (x0, y0, x1, y1) in source pixels, measured once by viewing 3-5x nearest-neighbour zooms
of the photo with a 10 px grid drawn on it: hairline (or top of forehead) to chin, cheek to cheek.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

ASTRONAUT_FACE = (182, 72, 266, 174)  # skimage.data.astronaut(), 512x512
ASTRONAUT_EYES = ((203, 101), (245, 103))  # pupil centers (10x zoom, 5 px grid)
ASTRONAUT_NOSE = (224, 127)  # the highlight on the nose tip, same zoom
T1_DAVID = (470, 283, 582, 420)  # insightface data/images/t1.jpg (1280x886): man centre-left, smiling
T1_MATTHEW = (750, 345, 857, 477)  # man in the red shirt, laughing
T1_LISA = (1138, 275, 1218, 403)  # blonde woman on the right
TOM_FACE = (18, 20, 84, 112)  # Tom_Hanks_54745.png: a 112x112 ArcFace-aligned crop, chin cut by the frame


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def insightface_image(name: str) -> np.ndarray | None:
    """RGB uint8 of one of insightface's sample images, None when the wheel lacks it."""
    from PIL import Image

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "images" / name
    if not path.is_file():
        return None
    with Image.open(path) as photo:
        return np.asarray(photo.convert("RGB"))


def as_image(rgb: np.ndarray) -> torch.Tensor:
    """A ComfyUI IMAGE batch of one."""
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def inside(point: tuple[float, float], box: tuple[float, ...]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]
