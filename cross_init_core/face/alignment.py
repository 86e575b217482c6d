"""Similarity alignment of a face to the ArcFace 5-point template, and the face mask of a crop.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner
(left/right as seen in the image).
"""

from __future__ import annotations

import numpy as np

from .cvlib import require_cv2
from .errors import FacePrepError

# The canonical ArcFace template for a 112x112 crop (the insightface / InsightFace-recognition standard).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
TEMPLATE_SIDE = 112.0

# margin = extra context on each side, as a fraction of the tight ArcFace crop's side; the crop spans
# (1 + 2 * margin) tight crops. 0.25 (1.5x) frames the whole head with hair and a little neck, close
# to aligned CelebA-HQ / FFHQ portraits (FFHQ's rule gives about 1.3x); 0 is the tight recognition crop.
DEFAULT_MARGIN = 0.25
MAX_MARGIN = 1.0

# Face oval in template coordinates: eyebrows/hairline to chin, cheek to cheek (measured on aligned
# photos, slightly generous so a masked loss also sees the face outline).
FACE_OVAL_CENTER_112 = (56.0, 66.0)
FACE_OVAL_AXES_112 = (36.0, 44.0)


def template_points(crop_size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The 5 template landmarks for a square crop of `crop_size` px with `margin` context."""
    scale = crop_size / (TEMPLATE_SIDE * (1.0 + 2.0 * margin))
    return (ARCFACE_TEMPLATE_112 - TEMPLATE_SIDE / 2.0) * scale + crop_size / 2.0


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation (Umeyama, no reflection): 2x3 matrix src->dst."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise FacePrepError(f"alignment needs matching point sets of 2+ points, got {src.shape} and {dst.shape}")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = float((src_c**2).sum()) / len(src)
    if var_src < 1e-9:
        raise FacePrepError("the detected face landmarks coincide; the face is too small or the detection broke")
    u, sing, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0  # a mirror would fit better, but a face crop must never be mirrored
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sing) @ sign)) / var_src
    translation = mean_dst - scale * rotation @ mean_src
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_face(rgb: np.ndarray, matrix: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts the aligned crop; returns (crop HxWx3 float32, valid HxW float32: 1 where the photo covers it)."""
    cv2 = require_cv2()
    matrix = np.array(matrix, dtype=np.float64)
    source = rgb
    # warpAffine samples without low-pass filtering: halve the source first when shrinking a lot.
    while np.sqrt(abs(np.linalg.det(matrix[:, :2]))) < 0.5 and min(source.shape[:2]) >= 4:
        source = cv2.pyrDown(source)
        matrix[:, :2] *= 2.0
    size = (int(crop_size), int(crop_size))
    crop = cv2.warpAffine(source, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ones = np.ones(source.shape[:2], dtype=np.float32)
    valid = cv2.warpAffine(ones, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.clip(crop, 0.0, 1.0).astype(np.float32), (valid > 0.5).astype(np.float32)


def face_oval_mask(crop_size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """1 inside the face oval of an aligned crop, 0 elsewhere (same for every crop of this size/margin)."""
    scale = crop_size / (TEMPLATE_SIDE * (1.0 + 2.0 * margin))
    cx, cy = ((np.array(FACE_OVAL_CENTER_112) - TEMPLATE_SIDE / 2.0) * scale + crop_size / 2.0).tolist()
    ax, ay = (np.array(FACE_OVAL_AXES_112) * scale).tolist()
    ys, xs = np.mgrid[0:crop_size, 0:crop_size].astype(np.float32)
    return ((((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2) <= 1.0).astype(np.float32)
