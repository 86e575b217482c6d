"""The host's progress bar, its console switch and its Cancel button."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def check_interrupted() -> None:
    """Raises the host's InterruptProcessingException when the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def console_progress_enabled() -> bool:
    """ComfyUI's switch for console progress bars (`comfy.utils.PROGRESS_BAR_ENABLED`, which KSampler honours too)."""
    import comfy.utils

    return bool(getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True))


def progress_reporter(total: int, node_id: str | None = None) -> Callable[[int, Any], None]:
    """A callback (step, preview_or_None) that advances ComfyUI's progress bar for this node."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total, node_id=node_id) if node_id is not None else comfy.utils.ProgressBar(total)

    def report(step: int, preview: Any = None) -> None:
        bar.update_absolute(step, total, preview)

    return report
