"""User-facing errors of face preparation.

All are CrossInitError (ValueError) subclasses so ComfyUI shows their text as a normal node error.
"""

from __future__ import annotations

from ..common.errors import CrossInitError


class FacePrepError(CrossInitError):
    """A problem with the inputs or the setup that the user can fix; the text says how."""


class InvalidImageError(FacePrepError):
    """An input image cannot be used (shape, size, value range, NaN...)."""


class NoFaceError(FacePrepError):
    """No face was found in an image, or every image was skipped."""


class ModelFilesError(FacePrepError):
    """The insightface model files are missing or misplaced."""


class MissingDependencyError(FacePrepError):
    """An optional Python package needed by the chosen option is not installed or broken."""
