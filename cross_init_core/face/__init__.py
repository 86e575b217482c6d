"""Face preparation for Cross-Init training: detect, align to the ArcFace template, mask, preview.

insightface and onnxruntime are imported lazily inside functions, so the pack imports without them; the
built-in detector (MTCNN) needs only torch and its shipped weights, and nothing here uses OpenCV.
"""

from __future__ import annotations

from .alignment import DEFAULT_MARGIN, MAX_MARGIN
from .choose import DETECTORS, LEGACY_DETECTORS, resolve_detector
from .detection import FACE_SELECTIONS
from .errors import FacePrepError, InvalidImageError, MissingDependencyError, ModelFilesError, NoFaceError
from .insightface_backend import PROVIDERS
from .model_folders import MODEL_PACKS, register_insightface_folder
from .prepare import MAX_CROP, MIN_CROP, ON_NO_FACE, FacePrepOptions, FacePrepResult, prepare_faces

__all__ = [
    "DEFAULT_MARGIN",
    "DETECTORS",
    "FACE_SELECTIONS",
    "LEGACY_DETECTORS",
    "MAX_CROP",
    "MAX_MARGIN",
    "MIN_CROP",
    "MODEL_PACKS",
    "ON_NO_FACE",
    "PROVIDERS",
    "FacePrepError",
    "FacePrepOptions",
    "FacePrepResult",
    "InvalidImageError",
    "MissingDependencyError",
    "ModelFilesError",
    "NoFaceError",
    "prepare_faces",
    "register_insightface_folder",
    "resolve_detector",
]
