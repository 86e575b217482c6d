"""Cross Initialization and its objective, on plain tensors.

- `initialization`: the start: celebrity-name embeddings averaged and passed through the text encoder;
- `loss`: the diffusion MSE in the model's parametrization and the regularizer toward the start;
- `names`: the name lists;
- `templates`: the training captions;
- `prompt_tokens`: the learned vectors put where a prompt's placeholder is;
- `personalized_encode`: conditioning for prompts that use a learned embedding.
"""

from __future__ import annotations

from ..common.lazy_modules import lazy_submodules

SUBMODULES = ("initialization", "loss", "names", "templates", "prompt_tokens", "personalized_encode")
__all__ = ["SUBMODULES", *SUBMODULES]
__getattr__ = lazy_submodules(__name__, SUBMODULES)
