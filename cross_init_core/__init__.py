"""Cross Initialization textual inversion on ComfyUI's own MODEL/CLIP/VAE objects.

Everything that touches ComfyUI internals lives in `host_adapter`; the other modules work on
plain tensors and the small dataclasses defined here. Submodules load on first use, so
`python -m cross_init_core --help` and the pack's import stay quick.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

SUBMODULES = (
    "atomic_files",
    "embedding",
    "embedding_io",
    "errors",
    "face",
    "families",
    "host_adapter",
    "initialization",
    "loss",
    "loss_plot",
    "loss_scaling",
    "memory",
    "names",
    "personalized_encode",
    "preview",
    "prompt_tokens",
    "run_setup",
    "scoring",
    "settings",
    "templates",
    "training",
)

__all__ = ["__version__", *SUBMODULES]


def __getattr__(name: str) -> ModuleType:
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
