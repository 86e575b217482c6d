"""Picks the detector for the `detector` option; `auto` prefers insightface when it can really run."""

from __future__ import annotations

import logging
from pathlib import Path

from .detection import FaceDetector
from .errors import FacePrepError, MissingDependencyError, ModelFilesError
from .insightface_backend import InsightFaceDetector, choose_providers, insightface_importable
from .model_folders import insightface_roots, search_model_pack
from .opencv_detector import OpenCVFaceDetector

logger = logging.getLogger(__name__)

DETECTORS = ("auto", "insightface", "opencv")


def choose_detector(detector: str, model_pack: str, provider: str, roots: list[Path] | None = None) -> FaceDetector:
    if detector not in DETECTORS:
        raise FacePrepError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    if detector == "opencv":
        logger.info("Face prep: using the OpenCV Haar fallback detector (as chosen)")
        return OpenCVFaceDetector()
    if not insightface_importable():
        if detector == "insightface":
            raise MissingDependencyError(
                "detector is `insightface` but the insightface package is not installed. Install it with: "
                "python -m pip install insightface onnxruntime. Or choose detector `opencv` (no model files needed)."
            )
        logger.info("Face prep: insightface is not installed; using the OpenCV Haar fallback detector")
        return OpenCVFaceDetector()
    roots = insightface_roots() if roots is None else roots
    search = search_model_pack(model_pack, roots)
    try:
        if search.model_dir is None:
            raise ModelFilesError(search.problem or "insightface model files not found")
        found = InsightFaceDetector(search.model_dir, search.model_dir.parent.parent, choose_providers(provider))
    except FacePrepError as exc:
        if detector == "insightface":
            raise
        logger.warning("Face prep: insightface unusable, using the OpenCV Haar fallback detector. %s", exc)
        return OpenCVFaceDetector()
    logger.info("Face prep: using insightface %s from %s", model_pack, search.model_dir)
    return found
