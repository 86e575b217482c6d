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

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` is a better match than `b` (higher cosine, lower distance)."""
        return a > b if self.higher_is_better else a < b

    @property
    def direction(self) -> str:
        """How the tables say which way is better: "higher" or "lower"."""
        return "higher" if self.higher_is_better else "lower"


@dataclass(frozen=True)
class FoundFace:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    embedding: np.ndarray

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def largest(faces: list[FoundFace]) -> FoundFace | None:
    return max(faces, key=lambda f: f.area) if faces else None


class FaceEmbedder(Protocol):
    backend: str  # "insightface" or "dlib": the report's `backend`
    model: str  # which weights, for logs and the annotated image
    metric: Metric

    def faces(self, rgb: np.ndarray) -> list[FoundFace]:
        """Every face of an HxWx3 float32 RGB image in [0, 1] with its embedding, left to right (empty: no face)."""
        ...
