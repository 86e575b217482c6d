"""Lazy OpenCV import: ComfyUI does not ship cv2, and the pack must still import without it."""

from __future__ import annotations

from types import ModuleType

from .errors import MissingDependencyError


def require_cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "Face preparation needs OpenCV, which is not installed in ComfyUI's Python "
            f"({exc}). Install it with: python -m pip install opencv-python-headless "
            "(or opencv-python if insightface is installed: keep only one OpenCV package)."
        ) from exc
    return cv2
