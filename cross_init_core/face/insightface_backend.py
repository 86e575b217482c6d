"""insightface detection (SCRFD with 5 landmarks), imported lazily so the pack loads without it."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from .detection import Detection
from .errors import MissingDependencyError, ModelFilesError

logger = logging.getLogger(__name__)

PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCm": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
}
# Smaller detection inputs find faces that fill the photo (SCRFD is tuned for faces well below 640 px).
DETECTION_SIZES = ((640, 640), (320, 320), (160, 160))
DETECTION_THRESHOLD = 0.5

_apps: dict[tuple[str, tuple[str, ...]], object] = {}


def insightface_importable() -> bool:
    return importlib.util.find_spec("insightface") is not None


def available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            f"insightface needs onnxruntime, which cannot be imported ({exc}). Install it with "
            "python -m pip install onnxruntime (or onnxruntime-gpu for CUDA, never both)."
        ) from exc
    return list(onnxruntime.get_available_providers())


def choose_providers(choice: str, available: list[str] | None = None) -> list[str]:
    """onnxruntime providers for a UI choice; falls back to CPU with a log line saying why and what to install."""
    if choice not in PROVIDERS:
        raise ValueError(f"unknown provider {choice!r}; choose one of {', '.join(PROVIDERS)}")
    available = available_providers() if available is None else available
    wanted = PROVIDERS[choice]
    if wanted == PROVIDERS["CPU"]:
        return [wanted]
    if wanted in available:
        return [wanted, PROVIDERS["CPU"]]
    hint = {
        "CUDA": "install onnxruntime-gpu after uninstalling onnxruntime (keep only one of them)",
        "ROCm": "install the ROCm build of onnxruntime (onnxruntime-rocm)",
        "CoreML": "CoreML exists only in onnxruntime on macOS",
    }[choice]
    logger.warning(
        "Face prep: onnxruntime here offers %s, not %s; using CPU instead (%s).",
        ", ".join(available) or "no providers",
        wanted,
        hint,
    )
    return [PROVIDERS["CPU"]]


def load_face_analysis(model_dir: Path, root: Path, providers: list[str]) -> object:
    """insightface FaceAnalysis with only its detector, cached per folder and providers."""
    key = (str(model_dir), tuple(providers))
    if key in _apps:
        return _apps[key]
    try:
        from insightface.app import FaceAnalysis
    except ImportError as exc:
        raise MissingDependencyError(
            f"The insightface detector needs the insightface package, which cannot be imported ({exc}). "
            "Install it with: python -m pip install insightface onnxruntime. Or choose detector `mtcnn` (built in)."
        ) from exc
    try:
        # The folder path as name makes insightface use it as is: it never tries to download.
        app = FaceAnalysis(name=str(model_dir), root=str(root), providers=providers, allowed_modules=["detection"])
    except Exception as exc:  # onnx/onnxruntime/insightface raise many types for bad files
        raise ModelFilesError(
            f"insightface could not load a face detector from {model_dir} ({type(exc).__name__}: {exc}). "
            "The folder must hold the complete pack (antelopev2: scrfd_10g_bnkps.onnx; buffalo_l: det_10g.onnx); "
            "re-download it if a file is truncated."
        ) from exc
    _apps[key] = app
    return app


class InsightFaceDetector:
    name = "insightface"
    attempts = len(DETECTION_SIZES)

    def __init__(self, model_dir: Path, root: Path, providers: list[str]) -> None:
        self.app = load_face_analysis(model_dir, root, providers)

    def detect(self, rgb: np.ndarray, attempt: int) -> list[Detection]:
        self.app.prepare(ctx_id=0, det_thresh=DETECTION_THRESHOLD, det_size=DETECTION_SIZES[attempt])
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # insightface expects OpenCV's BGR order
        return [
            Detection(
                box=tuple(float(v) for v in face.bbox[:4]),
                landmarks=np.asarray(face.kps, dtype=np.float64).reshape(5, 2),
                score=float(face.det_score),
                detector=self.name,
            )
            for face in self.app.get(bgr)
            if getattr(face, "kps", None) is not None
        ]
