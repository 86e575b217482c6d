"""The `preview` output: every input photo with its detections drawn, letterboxed to one size."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw, ImageFont

from .detection import Detection
from .images import to_uint8
from .pixels import fit_in_square

PREVIEW_SIDE = 512
CHOSEN = (0, 220, 0)
OTHER = (255, 200, 0)
MISSING = (230, 0, 0)
LANDMARK = (255, 0, 255)
TEXT = (255, 255, 255)


def draw_preview(rgb: np.ndarray, faces: list[Detection], chosen: Detection | None, label: str) -> np.ndarray:
    """PREVIEW_SIDE^2 x 3 float32: the photo fitted in, all faces boxed (chosen green), or a red frame if none."""
    canvas, scale, ox, oy, new_w, new_h = fit_in_square(to_uint8(rgb), PREVIEW_SIDE)
    draw = ImageDraw.Draw(canvas)

    def to_canvas(x: float, y: float) -> tuple[float, float]:
        return x * scale + ox, y * scale + oy

    for face in sorted(faces, key=lambda f: f is chosen):  # chosen drawn last, on top
        color, thick, dot = (CHOSEN, 3, 3) if face is chosen else (OTHER, 1, 2)
        (x0, y0), (x1, y1) = to_canvas(*face.box[:2]), to_canvas(*face.box[2:])
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=color, width=thick)
        for x, y in face.landmarks:
            cx, cy = to_canvas(x, y)
            draw.ellipse((cx - dot, cy - dot, cx + dot, cy + dot), fill=LANDMARK)
    if chosen is None:
        draw.rectangle((ox, oy, ox + new_w - 1, oy + new_h - 1), outline=MISSING, width=6)
        label += " no face"
    font = ImageFont.load_default()
    draw.text((9, 9), label, fill=(0, 0, 0), font=font)  # shadow: readable on light photos too
    draw.text((8, 8), label, fill=TEXT, font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0
