"""The learned embedding: its value, its files, and continuing it.

- `embedding`: the CROSS_INIT_EMBEDDING value and its check against a CLIP;
- `embedding_io`: files: written atomically, loaded without unpickling;
- `continuation`: a trained embedding continued (its start and its step count);
- `optimizer_state`: AdamW's state (and the fp16 loss scale) in a file's metadata.
"""

from __future__ import annotations

from ..common.lazy_modules import lazy_submodules

SUBMODULES = ("embedding", "embedding_io", "continuation", "optimizer_state")
__all__ = ["SUBMODULES", *SUBMODULES]
__getattr__ = lazy_submodules(__name__, SUBMODULES)
