"""The commands' progress output, fed by a server's websocket "progress" messages."""

from __future__ import annotations

import time
from typing import Any, TextIO


class ProgressBar:
    """Progress of one job, fed by its server's websocket "progress" messages (one node at a time).

    On a terminal with one job at a time: a tqdm bar per node, as ComfyUI's own console bars. Otherwise (a
    log file, CI, or several servers whose jobs run side by side, where redrawn lines would interleave): a
    plain line every 10 %.
    """

    def __init__(self, stream: TextIO, label: str, enabled: bool = True, redraw: bool = True) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self.tty = redraw and bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.last_tenth = -1
        self.bar: Any = None

    def hook(self, value: int, total: int, node_id: str | None = None) -> None:
        if not self.enabled or not total:
            return
        if self.tty:
            self._draw(value, total)
            return
        tenth = int(min(max(value / total, 0.0), 1.0) * 10)
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            elapsed = time.perf_counter() - self.started
            eta = elapsed / value * (total - value) if value else 0.0
            self.stream.write(f"{self.label} | {value}/{total} {elapsed:.0f}s<{eta:.0f}s\n")
            self.stream.flush()

    def _draw(self, value: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is not None and (self.bar.total != total or value < self.bar.n):
            self.finish()  # the next node reports: a bar of its own
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, file=self.stream, unit="step", dynamic_ncols=True)
        self.bar.update(min(value, total) - self.bar.n)
        if value >= total:
            self.finish()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
