"""What every face detector returns, and how one face is picked among several."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

FACE_SELECTIONS = ("largest", "center", "leftmost", "rightmost", "most_confident")


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    landmarks: np.ndarray  # 5x2: eyes, nose, mouth corners
    score: float
    detector: str

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    def scaled(self, factor: float, offset: tuple[float, float] = (0.0, 0.0)) -> Detection:
        """Maps a detection found on a resized/padded copy back: source = found * factor - offset."""
        ox, oy = offset
        x0, y0, x1, y1 = self.box
        box = (x0 * factor - ox, y0 * factor - oy, x1 * factor - ox, y1 * factor - oy)
        landmarks = self.landmarks * factor - np.array([ox, oy])
        return Detection(box=box, landmarks=landmarks, score=self.score, detector=self.detector)


class FaceDetector(Protocol):
    name: str
    attempts: int  # detector-level retries (e.g. smaller detection sizes), tried in order

    def detect(self, rgb: np.ndarray, attempt: int) -> list[Detection]:
        """Faces in an HxWx3 uint8 RGB image; attempt 0 is the normal setting."""
        ...


def select_face(faces: list[Detection], how: str, width: int, height: int) -> Detection:
    if how == "largest":
        return max(faces, key=lambda f: f.area)
    if how == "center":
        return min(faces, key=lambda f: (f.center[0] - width / 2) ** 2 + (f.center[1] - height / 2) ** 2)
    if how == "leftmost":
        return min(faces, key=lambda f: f.center[0])
    if how == "rightmost":
        return max(faces, key=lambda f: f.center[0])
    if how == "most_confident":
        return max(faces, key=lambda f: f.score)
    raise ValueError(f"unknown face selection {how!r}; choose one of {', '.join(FACE_SELECTIONS)}")
