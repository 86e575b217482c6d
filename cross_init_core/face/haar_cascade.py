"""A small numpy evaluator for OpenCV's bundled Haar cascade XML files.

OpenCV 5 removed cv2.CascadeClassifier but still ships the XML files, and `pip install insightface`
pulls the newest opencv-python, so the no-model fallback would vanish exactly for fresh installs.
This follows OpenCV's own algorithm (rescaled image pyramid, variance-normalised features, stage
thresholds, neighbour grouping) closely enough to find the same faces; the native class is used
whenever it exists (see opencv_detector.py).
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from .cvlib import require_cv2

_CHUNK = 1 << 18  # max (weak classifiers x windows) evaluated at once: ~50 MB of temporaries


@dataclass(frozen=True)
class _Stage:
    threshold: float
    node_feature: np.ndarray  # (weak, nodes) feature index
    node_threshold: np.ndarray  # (weak, nodes)
    node_left: np.ndarray  # (weak, nodes): > 0 next node, <= 0 leaf -value
    node_right: np.ndarray
    leaves: np.ndarray  # (weak, leaves)


@dataclass(frozen=True)
class Cascade:
    width: int
    height: int
    stages: tuple[_Stage, ...]
    rects: np.ndarray  # (features, 3, 4) x, y, w, h (unused slots have weight 0)
    weights: np.ndarray  # (features, 3)


@functools.lru_cache(maxsize=8)
def load_cascade(path: str) -> Cascade:
    root = ET.parse(path).getroot().find("cascade")
    if root is None or (root.findtext("featureType") or "").strip() != "HAAR":
        raise ValueError(f"{path} is not a Haar cascade in OpenCV's current XML format")
    features = root.find("features")
    rects = np.zeros((len(features), 3, 4), dtype=np.int64)
    weights = np.zeros((len(features), 3), dtype=np.float64)
    for i, feature in enumerate(features):
        if (feature.findtext("tilted") or "0").strip() == "1":
            raise ValueError(f"{path} uses tilted Haar features, which this evaluator does not support")
        for j, rect in enumerate(feature.find("rects")):
            values = rect.text.split()
            rects[i, j] = [int(float(v)) for v in values[:4]]
            weights[i, j] = float(values[4])
    stages = tuple(_read_stage(stage) for stage in root.find("stages"))
    return Cascade(int(root.findtext("width")), int(root.findtext("height")), stages, rects, weights)


def _read_stage(stage: ET.Element) -> _Stage:
    weak = list(stage.find("weakClassifiers"))
    nodes = [np.array(w.findtext("internalNodes").split(), dtype=np.float64).reshape(-1, 4) for w in weak]
    leaves = [np.array(w.findtext("leafValues").split(), dtype=np.float64) for w in weak]
    n_nodes, n_leaves = max(len(n) for n in nodes), max(len(v) for v in leaves)
    table = np.zeros((len(weak), n_nodes, 4))
    table[:, :, 1] = -1.0  # padding nodes are never reached
    leaf_table = np.zeros((len(weak), n_leaves))
    for i, (n, v) in enumerate(zip(nodes, leaves, strict=True)):
        table[i, : len(n)] = n
        leaf_table[i, : len(v)] = v
    return _Stage(
        threshold=float(stage.findtext("stageThreshold")),
        node_left=table[:, :, 0].astype(np.int64),
        node_right=table[:, :, 1].astype(np.int64),
        node_feature=table[:, :, 2].astype(np.int64),
        node_threshold=table[:, :, 3],
        leaves=leaf_table,
    )


def detect_multiscale(
    gray: np.ndarray, cascade: Cascade, scale_factor: float = 1.1, min_neighbors: int = 3, min_size: int = 24
) -> list[tuple[tuple[int, int, int, int], int]]:
    """Like cv2.CascadeClassifier.detectMultiScale2: [((x, y, w, h), neighbours)] on a uint8 gray image."""
    cv2 = require_cv2()
    height, width = gray.shape
    hits: list[tuple[float, float, float, float]] = []
    factor = 1.0
    while True:
        win_w, win_h = round(cascade.width * factor), round(cascade.height * factor)
        scaled_w, scaled_h = round(width / factor), round(height / factor)
        if scaled_w < cascade.width or scaled_h < cascade.height:
            break
        if win_w >= min_size and win_h >= min_size:
            scaled = cv2.resize(gray, (scaled_w, scaled_h), interpolation=cv2.INTER_LINEAR) if factor > 1 else gray
            step = 1 if factor > 2.0 else 2  # OpenCV's own stride rule
            for x, y in _scan(scaled, cascade, step):
                hits.append((x * factor, y * factor, win_w, win_h))
        factor *= scale_factor
    return group_rectangles(hits, min_neighbors)


def _scan(image: np.ndarray, cascade: Cascade, step: int) -> list[tuple[int, int]]:
    ii = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.float64)
    ii[1:, 1:] = image.astype(np.float64).cumsum(0).cumsum(1)
    sq = np.zeros_like(ii)
    sq[1:, 1:] = (image.astype(np.float64) ** 2).cumsum(0).cumsum(1)
    stride = ii.shape[1]
    ys, xs = np.mgrid[0 : image.shape[0] - cascade.height + 1 : step, 0 : image.shape[1] - cascade.width + 1 : step]
    base = (ys * stride + xs).ravel()
    flat, flat_sq = ii.ravel(), sq.ravel()
    # Normalisation over the window shrunk by one pixel, as OpenCV does.
    inner_w, inner_h = cascade.width - 2, cascade.height - 2
    corners = np.array([stride + 1, stride + 1 + inner_w, (inner_h + 1) * stride + 1, (inner_h + 1) * stride + 1 + inner_w])
    total = flat[base + corners[0]] - flat[base + corners[1]] - flat[base + corners[2]] + flat[base + corners[3]]
    total_sq = flat_sq[base + corners[0]] - flat_sq[base + corners[1]] - flat_sq[base + corners[2]] + flat_sq[base + corners[3]]
    norm = inner_w * inner_h * total_sq - total**2
    norm = np.where(norm > 0, np.sqrt(np.maximum(norm, 0)), 1.0)
    offsets = _rect_offsets(cascade, stride)
    for stage in cascade.stages:
        if base.size == 0:
            break
        keep = _stage_passes(stage, flat, base, norm, offsets, cascade.weights)
        base, norm = base[keep], norm[keep]
    return [(int(b % stride), int(b // stride)) for b in base]


def _rect_offsets(cascade: Cascade, stride: int) -> np.ndarray:
    """(features, 3, 4) flat integral-image offsets of each rect's corners: tl, tr, bl, br."""
    x, y, w, h = (cascade.rects[..., k] for k in range(4))
    return np.stack([y * stride + x, y * stride + x + w, (y + h) * stride + x, (y + h) * stride + x + w], axis=-1)


def _stage_passes(
    stage: _Stage, flat: np.ndarray, base: np.ndarray, norm: np.ndarray, offsets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    n_weak = stage.leaves.shape[0]
    rows = np.arange(n_weak)[:, None]
    result = np.empty(base.size, dtype=bool)
    chunk = max(1, _CHUNK // n_weak)
    for start in range(0, base.size, chunk):
        b, n = base[start : start + chunk], norm[start : start + chunk]
        node = np.zeros((n_weak, 1), dtype=np.int64)  # every window starts at each tree's root
        leaf = np.zeros((n_weak, b.size), dtype=np.int64)
        done = np.zeros((n_weak, b.size), dtype=bool)
        for _ in range(stage.node_feature.shape[1]):
            feature = stage.node_feature[rows, node]  # (weak, 1) at the root, (weak, windows) deeper
            at = b[None, :, None, None] + offsets[feature]
            sums = flat[at[..., 0]] - flat[at[..., 1]] - flat[at[..., 2]] + flat[at[..., 3]]
            value = (sums * weights[feature]).sum(-1)
            below = value < stage.node_threshold[rows, node] * n[None, :]
            go = np.where(below, stage.node_left[rows, node], stage.node_right[rows, node])
            newly = ~done & (go <= 0)
            leaf = np.where(newly, -go, leaf)
            done |= newly
            if done.all():
                break
            node = np.where(done, 0, go)
        result[start : start + chunk] = stage.leaves[rows, leaf].sum(0) >= stage.threshold
    return result


def group_rectangles(
    rects: list[tuple[float, float, float, float]], min_neighbors: int, eps: float = 0.2
) -> list[tuple[tuple[int, int, int, int], int]]:
    """OpenCV's groupRectangles: cluster similar windows, keep clusters with > min_neighbors members."""
    if not rects:
        return []
    r = np.asarray(rects, dtype=np.float64)
    x, y, w, h = (r[:, k] for k in range(4))
    delta = eps * (np.minimum(w[:, None], w[None, :]) + np.minimum(h[:, None], h[None, :])) * 0.5
    similar = (
        (np.abs(x[:, None] - x[None, :]) <= delta)
        & (np.abs(y[:, None] - y[None, :]) <= delta)
        & (np.abs((x + w)[:, None] - (x + w)[None, :]) <= delta)
        & (np.abs((y + h)[:, None] - (y + h)[None, :]) <= delta)
    )
    labels = np.arange(len(r))
    while True:  # connected components by min-label propagation
        updated = np.where(similar, labels[None, :], len(r)).min(axis=1)
        updated = updated[updated]
        if np.array_equal(updated, labels):
            break
        labels = updated
    groups = []
    for label in np.unique(labels):
        members = labels == label
        if members.sum() > min_neighbors:
            groups.append((r[members].mean(axis=0), int(members.sum())))
    kept = []
    for i, (r1, n1) in enumerate(groups):
        inside = any(
            i != j
            and r1[0] >= r2[0] - r2[2] * eps
            and r1[1] >= r2[1] - r2[3] * eps
            and r1[0] + r1[2] <= r2[0] + r2[2] * (1 + eps)
            and r1[1] + r1[3] <= r2[1] + r2[3] * (1 + eps)
            and (n2 > max(3, n1) or n1 < 3)
            for j, (r2, n2) in enumerate(groups)
        )
        if not inside:
            box = (round(r1[0]), round(r1[1]), round(r1[2]), round(r1[3]))
            kept.append((box, n1))
    return kept
