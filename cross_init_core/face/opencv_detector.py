"""The no-download fallback detector: OpenCV's bundled Haar cascades.

Lower quality than insightface: frontal faces only (roughly +-30 degrees of head turn, +-15 degrees of
in-plane tilt), no real landmarks. The 5 landmarks are estimated from the face box (calibrated on
hand-measured photos) and rotated by the eye line when the eye cascade finds both eyes.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from . import haar_cascade
from .alignment import ARCFACE_TEMPLATE_112
from .cvlib import require_cv2
from .detection import Detection
from .errors import MissingDependencyError

logger = logging.getLogger(__name__)

DETECT_MAX_PIXELS = 800 * 800  # Haar needs no more; keeps the numpy engine around a second per photo
# (cascade file, min neighbours, smallest face as a fraction of the short side): strict first, then looser.
ATTEMPTS = (
    ("haarcascade_frontalface_default.xml", 5, 1 / 10),
    ("haarcascade_frontalface_alt2.xml", 3, 1 / 16),
    ("haarcascade_frontalface_default.xml", 3, 0.0),
)
EYE_CASCADE = "haarcascade_eye.xml"
MIN_FACE_PX = 24

# Where the 5 landmarks sit in a Haar frontal-face box (fractions of its side): the ArcFace template
# with its eye midpoint at (0.49, 0.385) and eyes 0.41 box widths apart, measured on the astronaut,
# Tom Hanks and t1.jpg test photos.
_EYE_MID_112 = ARCFACE_TEMPLATE_112[:2].mean(axis=0)
_EYE_DIST_112 = float(np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0]))
BOX_LANDMARKS = (ARCFACE_TEMPLATE_112 - _EYE_MID_112) * (0.41 / _EYE_DIST_112) + np.array([0.49, 0.385])


def cascade_path(name: str) -> str:
    cv2 = require_cv2()
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise MissingDependencyError(
            f"OpenCV's bundled Haar cascade {name} is missing (looked in {folder or 'cv2.data'}). "
            "Install the pip package opencv-python-headless (or opencv-python), which ships it, "
            "or use the insightface detector."
        )
    return path


def detect_boxes(gray: np.ndarray, cascade: str, min_neighbors: int, min_size: int) -> list[tuple[tuple[int, ...], int]]:
    """[((x, y, w, h), neighbours)]: cv2.CascadeClassifier when this OpenCV has it (it was removed in 5.x)."""
    cv2 = require_cv2()
    path = cascade_path(cascade)
    if hasattr(cv2, "CascadeClassifier"):
        rects, counts = cv2.CascadeClassifier(path).detectMultiScale2(
            gray, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(min_size, min_size)
        )
        return [(tuple(int(v) for v in r), int(n)) for r, n in zip(rects, counts, strict=True)]
    return haar_cascade.detect_multiscale(gray, haar_cascade.load_cascade(path), 1.1, min_neighbors, min_size)


class OpenCVFaceDetector:
    name = "opencv"
    attempts = len(ATTEMPTS)

    def detect(self, rgb: np.ndarray, attempt: int) -> list[Detection]:
        cv2 = require_cv2()
        factor = min(1.0, (DETECT_MAX_PIXELS / (rgb.shape[0] * rgb.shape[1])) ** 0.5)
        small = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) if factor < 1 else rgb
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        cascade, neighbours, min_fraction = ATTEMPTS[attempt]
        min_size = max(MIN_FACE_PX, int(min(gray.shape) * min_fraction))
        faces = []
        for (x, y, w, h), count in detect_boxes(gray, cascade, neighbours, min_size):
            angle = eye_angle(gray, (x, y, w, h))
            faces.append(
                Detection(
                    box=(float(x), float(y), float(x + w), float(y + h)),
                    landmarks=box_landmarks((x, y, w, h), angle),
                    score=float(count),
                    detector=self.name,
                ).scaled(1.0 / factor)
            )
        return faces


def box_landmarks(rect: tuple[int, ...], angle: float) -> np.ndarray:
    """Estimated 5 landmarks of a face box, rotated by `angle` radians about the box center."""
    x, y, w, h = (float(v) for v in rect)
    points = BOX_LANDMARKS * np.array([w, h]) + np.array([x, y])
    center = np.array([x + w / 2.0, y + h / 2.0])
    c, s = math.cos(angle), math.sin(angle)
    return (points - center) @ np.array([[c, s], [-s, c]]) + center


def eye_angle(gray: np.ndarray, rect: tuple[int, ...]) -> float:
    """Tilt of the eye line in radians (0 when the eye cascade does not find a plausible pair)."""
    x, y, w, h = rect
    top, bottom = y + int(0.15 * h), y + int(0.6 * h)
    roi = gray[max(0, top) : bottom, max(0, x) : x + w]
    if roi.size == 0:
        return 0.0
    eyes = [r for r, _ in detect_boxes(roi, EYE_CASCADE, 3, max(8, w // 10)) if r[2] < w * 0.4]
    centers = [(ex + ew / 2.0, ey + eh / 2.0) for ex, ey, ew, eh in eyes]
    left = [c for c in centers if c[0] < w * 0.5]
    right = [c for c in centers if c[0] >= w * 0.5]
    best = 0.0
    best_score = math.inf
    for lx, ly in left:
        for rx, ry in right:
            dist = math.hypot(rx - lx, ry - ly)
            angle = math.atan2(ry - ly, rx - lx)
            if 0.25 * w <= dist <= 0.7 * w and abs(angle) <= math.radians(30):
                score = abs(dist - 0.4 * w)  # prefer the pair spaced like real eyes in a Haar box
                if score < best_score:
                    best, best_score = angle, score
    return best
