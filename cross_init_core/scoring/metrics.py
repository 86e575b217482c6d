"""What a face-recognition backend measures: one metric, its direction and its decision threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str  # as written in the report: "cosine" or "euclidean"
    higher_is_better: bool
    threshold: float  # same person when score >= threshold (cosine) or <= threshold (distance)

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if self.name == "cosine":
            return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))
        if self.name == "euclidean":
            return float(np.linalg.norm(a64 - b64))
        raise ValueError(f"unknown metric {self.name!r}")

    def matches(self, score: float) -> bool:
        return score >= self.threshold if self.higher_is_better else score <= self.threshold


@dataclass(frozen=True)
class FoundFace:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    embedding: np.ndarray


class FaceEmbedder(Protocol):
    backend: str  # "insightface" or "dlib": the report's `backend`
    model: str  # which weights, for logs and the annotated image
    metric: Metric

    def largest_face(self, rgb: np.ndarray) -> FoundFace | None:
        """The largest face of an HxWx3 float32 RGB image in [0, 1] with its embedding, None when there is none."""
        ...
