"""User-facing errors: each says which input is wrong, what is wrong, and what to do."""

from __future__ import annotations


class CrossInitError(ValueError):
    """Base class: a problem the user can fix; shown as is in ComfyUI."""


class UnsupportedModelError(CrossInitError):
    pass


class InvalidInputError(CrossInitError):
    pass


class EmbeddingFileError(CrossInitError):
    pass


class EmbeddingExistsError(EmbeddingFileError, FileExistsError):
    pass


class TrainingDivergedError(CrossInitError):
    """Loss became NaN/inf. `embedding` holds the last finite vectors (before the bad step)."""

    def __init__(self, message: str, embedding: object, step: int) -> None:
        super().__init__(message)
        self.embedding = embedding
        self.step = step
