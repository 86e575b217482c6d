"""The `preview` output: every input photo with its detections drawn, letterboxed to one size."""

from __future__ import annotations

import numpy as np

from .cvlib import require_cv2
from .detection import Detection

PREVIEW_SIDE = 512
CHOSEN = (0, 220, 0)
OTHER = (255, 200, 0)
MISSING = (230, 0, 0)
LANDMARK = (255, 0, 255)


def draw_preview(rgb: np.ndarray, faces: list[Detection], chosen: Detection | None, label: str) -> np.ndarray:
    """PREVIEW_SIDE^2 x 3 float32: the photo fitted in, all faces boxed (chosen green), or a red frame if none."""
    cv2 = require_cv2()
    height, width = rgb.shape[:2]
    scale = PREVIEW_SIDE / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = cv2.resize(np.ascontiguousarray(rgb), (new_w, new_h), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((PREVIEW_SIDE, PREVIEW_SIDE, 3), dtype=np.float32)
    ox, oy = (PREVIEW_SIDE - new_w) // 2, (PREVIEW_SIDE - new_h) // 2
    canvas[oy : oy + new_h, ox : ox + new_w] = small
    canvas = np.ascontiguousarray((canvas * 255).astype(np.uint8))

    def to_canvas(x: float, y: float) -> tuple[int, int]:
        return round(x * scale + ox), round(y * scale + oy)

    for face in sorted(faces, key=lambda f: f is chosen):  # chosen drawn last, on top
        color, thick = (CHOSEN, 3) if face is chosen else (OTHER, 1)
        cv2.rectangle(canvas, to_canvas(*face.box[:2]), to_canvas(*face.box[2:]), color, thick)
        for x, y in face.landmarks:
            cv2.circle(canvas, to_canvas(x, y), 3 if face is chosen else 2, LANDMARK, -1)
    if chosen is None:
        cv2.rectangle(canvas, (ox, oy), (ox + new_w - 1, oy + new_h - 1), MISSING, 6)
        label += " no face"
    cv2.putText(canvas, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    return canvas.astype(np.float32) / 255.0
