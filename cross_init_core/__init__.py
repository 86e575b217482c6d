"""Cross Initialization textual inversion on ComfyUI's own MODEL/CLIP/VAE objects.

Everything that touches ComfyUI internals lives in `host_adapter`; the other modules work on
plain tensors and the small dataclasses defined here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import (  # submodules are part of the package API
    embedding,
    embedding_io,
    errors,
    host_adapter,
    initialization,
    loss,
    loss_plot,
    names,
    personalized_encode,
    prompt_tokens,
    settings,
    templates,
    training,
)

__all__ = [
    "__version__",
    "embedding",
    "embedding_io",
    "errors",
    "host_adapter",
    "initialization",
    "loss",
    "loss_plot",
    "names",
    "personalized_encode",
    "prompt_tokens",
    "settings",
    "templates",
    "training",
]
