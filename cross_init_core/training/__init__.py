"""The textual-inversion run on the host's models.

- `trainer`: the Trainer and `train`, what the trainer node calls;
- `run_setup`: input checks, latents, caption layouts and the seeded draws, once before the loop;
- `memory`: the memory input, the activation estimate, the micro-batch and checkpointing plan;
- `loss_scaling`: dynamic loss scaling for float16 UNets;
- `preview`: progress previews;
- `loss_plot`: the loss curve.
"""

from __future__ import annotations

from ..common.lazy_modules import lazy_submodules

SUBMODULES = ("trainer", "run_setup", "memory", "loss_scaling", "preview", "loss_plot")
__all__ = ["SUBMODULES", *SUBMODULES]
__getattr__ = lazy_submodules(__name__, SUBMODULES)
