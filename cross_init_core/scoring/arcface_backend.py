"""insightface ArcFace (512-d, cosine): the identity number face-personalization papers report.

Uses the model pack Face Prep already finds (ComfyUI/models/insightface/models/<pack>/): the pack's
SCRFD detector for the box and 5 landmarks, insightface's own `norm_crop` to the 112 px ArcFace
template, and the pack's recognizer loaded through insightface's model zoo.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..face.detection import FaceDetector
from ..face.errors import MissingDependencyError, ModelFilesError
from ..face.images import to_uint8
from ..face.insightface_backend import InsightFaceDetector, available_providers, insightface_importable
from ..face.model_folders import MODEL_PACKS, RECOGNIZER_FILES, insightface_roots, search_model_pack
from ..face.prepare import find_faces
from .metrics import FoundFace, Metric

logger = logging.getLogger(__name__)

# insightface's own verification example calls cosine >= 0.28 "the same person" (0.2-0.28 "likely",
# below 0.2 "not the same"); clustering in its album tool uses the same 0.28.
ARCFACE_METRIC = Metric(name="cosine", higher_is_better=True, threshold=0.28)
INSTALL_HINT = "python -m pip install insightface onnxruntime"

_embedders: dict[str, ArcFaceEmbedder] = {}


def load_recognizer(path: Path, providers: list[str]) -> Any:
    """An insightface ArcFaceONNX for `path`, routed by insightface's model zoo as it routes pack files."""
    try:
        from insightface.model_zoo import get_model
    except ImportError as exc:
        raise MissingDependencyError(
            f"The insightface identity backend needs insightface ({exc}). Install it with: {INSTALL_HINT}"
        ) from exc
    try:
        model = get_model(str(path), providers=providers)
    except Exception as exc:  # onnx/onnxruntime raise many types for bad files
        raise ModelFilesError(
            f"insightface could not load the face recognizer {path} ({type(exc).__name__}: {exc}); "
            "re-download the pack if the file is truncated."
        ) from exc
    if getattr(model, "taskname", None) != "recognition":
        raise ModelFilesError(
            f"{path} is not a face recognizer (insightface routed it as {type(model).__name__}); the identity score needs the "
            f"pack's ArcFace model ({', '.join(RECOGNIZER_FILES.values())})."
        )
    return model


class ArcFaceEmbedder:
    backend = "insightface"
    metric = ARCFACE_METRIC

    def __init__(self, detector: FaceDetector, recognizer: Any, model: str) -> None:
        self.detector = detector
        self.recognizer = recognizer
        self.model = model

    def faces(self, rgb: np.ndarray) -> list[FoundFace]:
        from insightface.utils.face_align import norm_crop

        detections = sorted(find_faces(self.detector, rgb), key=lambda f: f.box[0])
        if not detections:
            return []
        bgr = np.ascontiguousarray(to_uint8(rgb)[..., ::-1])  # insightface works in OpenCV's BGR order
        found = []
        for face in detections:  # every face: a group picture may show the person beside someone larger
            landmarks = np.asarray(face.landmarks, dtype=np.float32)
            crop = norm_crop(bgr, landmark=landmarks, image_size=int(self.recognizer.input_size[0]))
            embedding = np.asarray(self.recognizer.get_feat(crop), dtype=np.float64).ravel()
            found.append(FoundFace(box=face.box, embedding=embedding))
        return found


def _providers() -> list[str]:
    # Scoring a few images is quick on CPU; use CUDA only when this onnxruntime offers it.
    cuda = "CUDAExecutionProvider"
    return [cuda, "CPUExecutionProvider"] if cuda in available_providers() else ["CPUExecutionProvider"]


def unavailable_reason(roots: list[Path] | None = None) -> str | None:
    """Why the insightface backend cannot run here (what to install, or where the files go), or None when its
    package and a model pack with its recognizer are there; quick: nothing is loaded."""
    if not insightface_importable():
        return f"the insightface package is not installed (install it with: {INSTALL_HINT})"
    roots = insightface_roots() if roots is None else roots
    problems = []
    for pack in MODEL_PACKS:
        search = search_model_pack(pack, roots)
        if search.model_dir is not None and (search.model_dir / RECOGNIZER_FILES[pack]).is_file():
            return None
        problems.append(search.problem or f"no {pack} files")
    return "no usable insightface model pack: " + " ".join(problems)


def insightface_embedder(roots: list[Path] | None = None) -> ArcFaceEmbedder:
    """The ArcFace embedder of the first complete model pack (antelopev2, then buffalo_l); raises an
    error saying what to install or where to put the files when none can run."""
    if not insightface_importable():
        raise MissingDependencyError(f"the insightface package is not installed (install it with: {INSTALL_HINT})")
    roots = insightface_roots() if roots is None else roots
    problems = []
    for pack in MODEL_PACKS:
        search = search_model_pack(pack, roots)
        if search.model_dir is None:
            problems.append(search.problem or f"no {pack} files")
            continue
        recognizer_path = search.model_dir / RECOGNIZER_FILES[pack]
        if not recognizer_path.is_file():
            problems.append(
                f"{search.model_dir} has no {RECOGNIZER_FILES[pack]} (the pack's face recognizer); re-download the complete {pack} pack"
            )
            continue
        key = str(recognizer_path)
        if key not in _embedders:
            providers = _providers()
            detector = InsightFaceDetector(search.model_dir, search.model_dir.parent.parent, providers)
            recognizer = load_recognizer(recognizer_path, providers)
            _embedders[key] = ArcFaceEmbedder(detector, recognizer, f"{pack}/{RECOGNIZER_FILES[pack]}")
            logger.info("Identity score: insightface ArcFace %s from %s", RECOGNIZER_FILES[pack], search.model_dir)
        return _embedders[key]
    raise ModelFilesError("No usable insightface model pack for the identity score. " + " ".join(problems))
