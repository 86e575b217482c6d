"""Plain-text tables (the terminal client's summaries, the checkpoint report): columns padded to their widest
cell, a rule under the header. Pure: no torch, no ComfyUI."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], pad_last: bool = True) -> list[str]:
    """The header, a rule and the rows; with `pad_last` off the last column is not padded (a free-text column,
    e.g. a status with its message, does not widen the table)."""
    last = len(header) - 1
    widths = [len(h) if i == last and not pad_last else max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines
