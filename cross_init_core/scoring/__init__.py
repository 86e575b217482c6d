"""Evaluation scores for generated images: identity (face recognition) and prompt similarity (CLIP).

dlib, insightface, onnxruntime and transformers' CLIP are imported lazily, so the pack imports without them.
"""

from __future__ import annotations

from .identity import BACKENDS, IdentityResult, NoReferenceFaceError, backend_problem, choose_embedder, score_identity
from .metrics import FaceEmbedder, FoundFace, Metric
from .prompt_score import (
    NO_MODEL,
    PromptScoreResult,
    list_models,
    missing_model_problem,
    register_clip_scoring_folder,
    sample_batch,
    score_prompt,
)

__all__ = [
    "BACKENDS",
    "NO_MODEL",
    "FaceEmbedder",
    "FoundFace",
    "IdentityResult",
    "Metric",
    "NoReferenceFaceError",
    "PromptScoreResult",
    "backend_problem",
    "choose_embedder",
    "list_models",
    "missing_model_problem",
    "register_clip_scoring_folder",
    "sample_batch",
    "score_identity",
    "score_prompt",
]
