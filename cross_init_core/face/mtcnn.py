"""The built-in face detector: MTCNN (Zhang et al. 2016) in plain torch, weights shipped with the pack.

Three small networks in a cascade: P-Net scans an image pyramid for face candidates, R-Net rejects most
of them on 24x24 crops, O-Net scores the rest on 48x48 crops and gives the 5 landmarks (eyes, nose,
mouth corners) that the ArcFace alignment needs. No OpenCV and no download: the ~2 MB of weights in
weights/mtcnn.safetensors are loaded with safetensors (see weights/NOTICE.md for their origin).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .detection import Detection
from .errors import ModelFilesError

logger = logging.getLogger(__name__)

WEIGHTS = Path(__file__).resolve().parent / "weights" / "mtcnn.safetensors"
PYRAMID_FACTOR = 0.709  # each pyramid level is ~half the area of the previous one (the paper's setting)
MIN_FACE_PX = 20  # smallest face searched, in detection pixels
DETECT_MAX_SIDE = 1024  # faces are searched on a copy at most this long; landmarks map back to the photo
BLACK = -127.5 / 128.0  # a black pixel in the networks' input range
SUPERSAMPLE = 4  # at most 4x4 samples averaged per crop pixel
MAX_CANDIDATES = 2000  # P-Net candidates kept for R-Net (a busy photo gives many; the best are kept)


@dataclass(frozen=True)
class Setting:
    thresholds: tuple[float, float, float]  # P-Net, R-Net, O-Net face probability
    min_face_fraction: float  # smallest face searched, as a fraction of the short side (>= MIN_FACE_PX)


# Strict first (few false faces), then looser for hard photos (dark, blurred, small or partly hidden faces).
SETTINGS = (
    Setting((0.6, 0.7, 0.8), 1 / 16),
    Setting((0.5, 0.6, 0.7), 0.0),
    Setting((0.4, 0.5, 0.6), 0.0),
)

_weights: dict[str, torch.Tensor] | None = None
_lock = threading.Lock()


def load_weights(path: Path = WEIGHTS) -> dict[str, torch.Tensor]:
    global _weights
    with _lock:
        if _weights is None or path != WEIGHTS:
            try:
                from safetensors.torch import load_file

                loaded = load_file(str(path), device="cpu")
            except Exception as exc:  # missing/truncated file: safetensors raises several types
                raise ModelFilesError(
                    f"The built-in face detector's weights could not be read from {path} ({type(exc).__name__}: {exc}). "
                    "They ship with the pack: reinstall or update the Cross-Init pack, or use the insightface detector."
                ) from exc
            if path != WEIGHTS:
                return loaded
            _weights = loaded
        return _weights


# ---- the three networks --------------------------------------------------------------------------


def _conv(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"])


def _prelu(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.prelu(x, w[f"{name}.weight"])


def _dense(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])


def pnet(x: torch.Tensor, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N,3,H,W] -> (face probability [N,h,w], box offsets [N,4,h,w]); one cell per 12x12 window, stride 2."""
    x = F.max_pool2d(_prelu(_conv(x, w, "pnet.conv1"), w, "pnet.prelu1"), 2, 2, ceil_mode=True)
    x = _prelu(_conv(x, w, "pnet.conv2"), w, "pnet.prelu2")
    x = _prelu(_conv(x, w, "pnet.conv3"), w, "pnet.prelu3")
    return F.softmax(_conv(x, w, "pnet.conv4_1"), dim=1)[:, 1], _conv(x, w, "pnet.conv4_2")


def rnet(x: torch.Tensor, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N,3,24,24] -> (face probability [N], box offsets [N,4])."""
    x = F.max_pool2d(_prelu(_conv(x, w, "rnet.conv1"), w, "rnet.prelu1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(_prelu(_conv(x, w, "rnet.conv2"), w, "rnet.prelu2"), 3, 2, ceil_mode=True)
    x = _prelu(_conv(x, w, "rnet.conv3"), w, "rnet.prelu3").flatten(1)
    x = _prelu(_dense(x, w, "rnet.dense4"), w, "rnet.prelu4")
    return F.softmax(_dense(x, w, "rnet.dense5_1"), dim=1)[:, 1], _dense(x, w, "rnet.dense5_2")


def onet(x: torch.Tensor, w: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N,3,48,48] -> (face probability [N], box offsets [N,4], landmarks [N,10]: 5 x then 5 y, box-relative)."""
    x = F.max_pool2d(_prelu(_conv(x, w, "onet.conv1"), w, "onet.prelu1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(_prelu(_conv(x, w, "onet.conv2"), w, "onet.prelu2"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(_prelu(_conv(x, w, "onet.conv3"), w, "onet.prelu3"), 2, 2, ceil_mode=True)
    x = _prelu(_conv(x, w, "onet.conv4"), w, "onet.prelu4").flatten(1)
    x = _prelu(_dense(x, w, "onet.dense5"), w, "onet.prelu5")
    return F.softmax(_dense(x, w, "onet.dense6_1"), dim=1)[:, 1], _dense(x, w, "onet.dense6_2"), _dense(x, w, "onet.dense6_3")


# ---- box helpers (boxes are [N,4] x0, y0, x1, y1 in continuous pixel coordinates) -------------------


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Indices kept by greedy non-maximum suppression, best first; `min` divides by the smaller area."""
    order = scores.argsort(descending=True)
    b = boxes[order].to(torch.float64).numpy()
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lo = np.maximum(b[:, None, :2], b[None, :, :2])
    hi = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    denom = np.minimum(areas[:, None], areas[None]) if mode == "min" else areas[:, None] + areas[None] - inter
    overlaps = inter / np.maximum(denom, 1e-9) > threshold
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long)]


def regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Applies the networks' box corrections (offsets are fractions of the box width/height)."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Grows each box to a square around its centre (the networks see square crops)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values
    return torch.cat([centre - side / 2, centre + side / 2], dim=1)


def crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,size,size] crops of `boxes` resampled by area (bilinear samples on a grid `n` times finer,
    averaged); parts outside the image are black, as in the networks' training crops."""
    _, height, width = image.shape
    step = float((boxes[:, 2:] - boxes[:, :2]).max()) / size if len(boxes) else 1.0
    n = int(min(max(np.ceil(step), 1), SUPERSAMPLE))
    u = (torch.arange(size * n, dtype=torch.float32) + 0.5) / (size * n)  # sample positions across a box
    xs = boxes[:, 0:1] + u * (boxes[:, 2:3] - boxes[:, 0:1])
    ys = boxes[:, 1:2] + u * (boxes[:, 3:4] - boxes[:, 1:2])
    # pixel edges run 0..width; grid_sample (align_corners=False) maps them to -1..1
    grid = torch.stack(
        [(2 * xs / width - 1)[:, None, :].expand(-1, size * n, -1), (2 * ys / height - 1)[:, :, None].expand(-1, -1, size * n)],
        dim=-1,
    )
    shifted = (image - BLACK)[None].expand(len(boxes), -1, -1, -1)  # zero padding = black
    samples = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(samples, n) + BLACK if n > 1 else samples + BLACK


# ---- the cascade ---------------------------------------------------------------------------------------


def detect_faces(rgb: np.ndarray, setting: Setting = SETTINGS[0]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(box [4], landmarks [5,2], score) per face in an HxWx3 uint8 RGB image, in its pixel coordinates
    (pixel centres at integers for landmarks; boxes span pixel edges)."""
    weights = load_weights()
    height, width = rgb.shape[:2]
    factor = min(1.0, DETECT_MAX_SIDE / max(height, width))
    with torch.inference_mode():
        image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32)
        image = (image - 127.5) / 128.0  # the networks' input range
        if factor < 1.0:
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            image = F.interpolate(image[None], size=size, mode="area")[0]
        found = _cascade(image, weights, setting)
    # boxes span pixel edges; landmarks sit on pixel centres (i -> (i + 0.5) / factor - 0.5)
    return [(box / factor, (points + 0.5) / factor - 0.5, score) for box, points, score in found]


def _cascade(image: torch.Tensor, w: dict[str, torch.Tensor], setting: Setting) -> list[tuple[np.ndarray, np.ndarray, float]]:
    _, height, width = image.shape
    min_face = max(MIN_FACE_PX, setting.min_face_fraction * min(height, width))
    p_thr, r_thr, o_thr = setting.thresholds
    # Stage 1: P-Net on a pyramid; at scale s a 12 px window sees a (12 / s) px face.
    candidates, scores = [], []
    scale = 12.0 / min_face
    while min(height, width) * scale >= 12:
        size = (int(height * scale + 1), int(width * scale + 1))
        level = F.interpolate(image[None], size=size, mode="area")
        prob, offsets = pnet(level, w)
        ys, xs = torch.nonzero(prob[0] >= p_thr, as_tuple=True)
        if len(ys):
            cells = torch.stack([xs, ys, xs, ys], dim=1).to(torch.float32) * 2 + torch.tensor([0.0, 0.0, 12.0, 12.0])
            boxes = cells / scale
            level_scores = prob[0, ys, xs]
            keep = nms(boxes, level_scores, 0.5)
            candidates.append(torch.cat([boxes[keep], offsets[0, :, ys, xs].T[keep]], dim=1))
            scores.append(level_scores[keep])
        scale *= PYRAMID_FACTOR
    if not candidates:
        return []
    table, score = torch.cat(candidates), torch.cat(scores)
    if len(score) > MAX_CANDIDATES:
        best = score.topk(MAX_CANDIDATES).indices
        table, score = table[best], score[best]
    keep = nms(table[:, :4], score, 0.7)
    boxes = square(regress(table[keep, :4], table[keep, 4:]))
    # Stage 2: R-Net on 24x24 crops.
    prob, offsets = rnet(crops(image, boxes, 24), w)
    passed = prob > r_thr
    boxes, prob, offsets = boxes[passed], prob[passed], offsets[passed]
    if not len(boxes):
        return []
    keep = nms(boxes, prob, 0.7)
    boxes = square(regress(boxes[keep], offsets[keep]))
    # Stage 3: O-Net on 48x48 crops: final score, box and the 5 landmarks.
    prob, offsets, marks = onet(crops(image, boxes, 48), w)
    passed = prob > o_thr
    boxes, prob, offsets, marks = boxes[passed], prob[passed], offsets[passed], marks[passed]
    if not len(boxes):
        return []
    size = boxes[:, 2:] - boxes[:, :2]
    points = torch.stack([marks[:, :5], marks[:, 5:]], dim=2) * size[:, None] + boxes[:, None, :2]
    boxes = regress(boxes, offsets)
    keep = nms(boxes, prob, 0.7, mode="min")
    return [(boxes[i].numpy().astype(np.float64), points[i].numpy().astype(np.float64), float(prob[i])) for i in keep.tolist()]


class MTCNNFaceDetector:
    name = "mtcnn"
    attempts = len(SETTINGS)

    def __init__(self) -> None:
        load_weights()  # a broken install fails here, with the file named, not on the first photo

    def detect(self, rgb: np.ndarray, attempt: int) -> list[Detection]:
        return [
            Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), landmarks=points, score=score, detector=self.name)
            for b, points, score in detect_faces(rgb, SETTINGS[attempt])
        ]
