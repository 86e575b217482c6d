"""Cross Initialization textual inversion on ComfyUI's own MODEL/CLIP/VAE objects.

The method's modules work on plain tensors and the small dataclasses defined here; everything that touches
ComfyUI internals lives in the host layer (`host/`); faces and scores are in `face/` and `scoring/`. The
terminal client (`client/`, `python -m cross_init_core train|eval`) is a separate program that talks to
ComfyUI servers over HTTP and is never imported by the nodes. Submodules load on first use, so
`python -m cross_init_core --help` and the pack's import stay quick.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.3.0"

SUBMODULES = (
    "atomic_files",
    "checkpoint_report",
    "continuation",
    "embedding",
    "embedding_io",
    "embedding_names",
    "errors",
    "face",
    "families",
    "host",
    "initialization",
    "lora",
    "loss",
    "loss_plot",
    "loss_scaling",
    "memory",
    "names",
    "personalized_encode",
    "preview",
    "prompt_text",
    "prompt_tokens",
    "run_setup",
    "scoring",
    "settings",
    "templates",
    "text_table",
    "training",
)

__all__ = ["__version__", *SUBMODULES]


def __getattr__(name: str) -> ModuleType:
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
