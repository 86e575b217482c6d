"""Picks the detector for the `detector` option; `auto` prefers insightface when it can really run."""

from __future__ import annotations

import logging
from pathlib import Path

from ..common.settings import DETECTORS, LEGACY_DETECTORS
from .detection import FaceDetector
from .errors import FacePrepError, MissingDependencyError, ModelFilesError
from .insightface_backend import InsightFaceDetector, choose_providers, insightface_importable
from .model_folders import insightface_roots, search_model_pack
from .mtcnn import MTCNNFaceDetector

logger = logging.getLogger(__name__)



def resolve_detector(detector: str) -> str:
    """The detector option as a current name (an old saved value becomes its replacement)."""
    if detector in LEGACY_DETECTORS:
        return LEGACY_DETECTORS[detector]
    if detector not in DETECTORS:
        raise FacePrepError(f"detector {detector!r} is unknown; choose one of {', '.join(DETECTORS)}")
    return detector


def choose_detector(detector: str, model_pack: str, provider: str, roots: list[Path] | None = None) -> FaceDetector:
    name = resolve_detector(detector)
    if name != detector:
        logger.info("Face prep: detector %r (from an older workflow) now means the built-in %r detector", detector, name)
    if name == "mtcnn":
        logger.info("Face prep: using the built-in MTCNN detector (as chosen)")
        return MTCNNFaceDetector()
    if not insightface_importable():
        if name == "insightface":
            raise MissingDependencyError(
                "detector is `insightface` but the insightface package is not installed. Install it with: "
                "python -m pip install insightface onnxruntime. Or choose detector `mtcnn` (built in, no download)."
            )
        logger.info("Face prep: insightface is not installed; using the built-in MTCNN detector")
        return MTCNNFaceDetector()
    roots = insightface_roots() if roots is None else roots
    search = search_model_pack(model_pack, roots)
    try:
        if search.model_dir is None:
            raise ModelFilesError(search.problem or "insightface model files not found")
        found = InsightFaceDetector(search.model_dir, search.model_dir.parent.parent, choose_providers(provider))
    except FacePrepError as exc:
        if name == "insightface":
            raise
        logger.warning("Face prep: insightface unusable, using the built-in MTCNN detector. %s", exc)
        return MTCNNFaceDetector()
    logger.info("Face prep: using insightface %s from %s", model_pack, search.model_dir)
    return found
