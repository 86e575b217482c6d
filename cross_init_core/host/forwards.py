"""Instance `forward`s set on host modules for the duration of a block, and removed again (never the class's)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


@contextlib.contextmanager
def instance_forwards(modules: Sequence[torch.nn.Module], make_forward: Callable[[torch.nn.Module], Callable[..., Any]],
                       registry: weakref.WeakSet[torch.nn.Module] | None = None) -> Iterator[int]:
    """Gives each module an instance `forward` (never the class's) for the duration; removed on exit.

    A module that already has an instance forward (another pack's patch) is left alone. `registry`, when
    given, holds the patched modules while they are patched. Yields how many were patched.
    """
    patched: list[torch.nn.Module] = []
    try:
        for module in modules:
            if "forward" not in module.__dict__:
                module.forward = make_forward(module)
                patched.append(module)
                if registry is not None:
                    registry.add(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
            if registry is not None:
                registry.discard(module)
