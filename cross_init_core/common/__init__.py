"""Pure shared pieces: no torch, no ComfyUI. Both the nodes' side and the terminal client import them.

- `errors`: the error types;
- `settings`: training and loss settings, input ranges, presets, detector names;
- `lora_settings`: the LoRA stage's settings, ranges and presets;
- `families`: SD 1.x, SD 2.x and SDXL in one table;
- `embedding_names`: file names and a file's step count;
- `atomic_files`: all-or-none file writes;
- `prompt_text`: the prompt placeholder;
- `text_table`: plain-text tables;
- `lazy_modules`: submodules loaded on first use.
"""

from __future__ import annotations

from .lazy_modules import lazy_submodules

SUBMODULES = ("errors", "settings", "lora_settings", "families", "embedding_names", "atomic_files", "prompt_text", "text_table",
              "lazy_modules")
__all__ = ["SUBMODULES", *SUBMODULES]
__getattr__ = lazy_submodules(__name__, SUBMODULES)
