"""Similarity alignment of a face to the ArcFace 5-point template, and the face mask of a crop.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner
(left/right as seen in the image).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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
    """Cuts the aligned crop; returns (crop HxWx3 float32, valid HxW float32: 1 where the photo covers it).

    Bilinear sampling at pixel centres (integer coordinates), edge pixels repeated outside the photo.
    """
    matrix = np.array(matrix, dtype=np.float64)
    source = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    # Bilinear sampling does no low-pass filtering: halve the source first when shrinking a lot.
    while np.sqrt(abs(np.linalg.det(matrix[:, :2]))) < 0.5 and min(source.shape[-2:]) >= 4:
        # 2x2 averaging: new pixel i sits at old coordinate 2i + 0.5
        matrix[:, 2] += 0.5 * matrix[:, :2].sum(axis=1)
        matrix[:, :2] *= 2.0
        source = F.avg_pool2d(source, 2)
    height, width = source.shape[-2:]
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:crop_size, 0:crop_size].astype(np.float64)
    src = np.stack([xs, ys], axis=-1) @ inverse[:, :2].T + inverse[:, 2]
    # grid_sample's normalized coordinates (align_corners=False): pixel centre i -> (2i + 1) / size - 1
    grid = (2.0 * src + 1.0) / np.array([width, height]) - 1.0
    grid_t = torch.from_numpy(grid.astype(np.float32))[None]
    crop = F.grid_sample(source, grid_t, mode="bilinear", padding_mode="border", align_corners=False)
    ones = torch.ones(1, 1, height, width)
    valid = F.grid_sample(ones, grid_t, mode="bilinear", padding_mode="zeros", align_corners=False)
    crop_np = crop[0].permute(1, 2, 0).numpy()
    return np.clip(crop_np, 0.0, 1.0).astype(np.float32), (valid[0, 0].numpy() > 0.5).astype(np.float32)


def face_oval_mask(crop_size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """1 inside the face oval of an aligned crop, 0 elsewhere (same for every crop of this size/margin)."""
    scale = crop_size / (TEMPLATE_SIDE * (1.0 + 2.0 * margin))
    cx, cy = ((np.array(FACE_OVAL_CENTER_112) - TEMPLATE_SIDE / 2.0) * scale + crop_size / 2.0).tolist()
    ax, ay = (np.array(FACE_OVAL_AXES_112) * scale).tolist()
    ys, xs = np.mgrid[0:crop_size, 0:crop_size].astype(np.float32)
    return ((((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2) <= 1.0).astype(np.float32)
