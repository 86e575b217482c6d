"""Cross Initialization textual inversion on ComfyUI's own MODEL/CLIP/VAE objects.

The method's modules work on plain tensors and the small dataclasses defined here; everything that touches
ComfyUI internals lives in the host layer (`host/`); faces and scores are in `face/` and `scoring/`. The
terminal client (`client/`, `python -m cross_init_core train|eval`) is a separate program that talks to
ComfyUI servers over HTTP and is never imported by the nodes. Submodules load on first use, so
`python -m cross_init_core --help` and the pack's import stay quick.
"""

from __future__ import annotations

from .common.lazy_modules import lazy_submodules

__version__ = "0.4.1"

# packages by concern (docs/architecture.md); the terminal client (`client`) is imported explicitly
SUBMODULES = ("common", "embeddings", "face", "host", "lora", "method", "scoring", "training")

__all__ = ["__version__", *SUBMODULES]
__getattr__ = lazy_submodules(__name__, SUBMODULES)
