"""The GPU check's rows: one JSON object per line, appended (and synced) the moment a row is measured.

Every row has `host` (the ComfyUI version), `path` (`server`: the user's path through a real main.py server;
`in_process`: ComfyUI booted in-process), `model`, `device` (the GPU's name, or `CPU`), `smoke` (toy sizes on
a CPU), its figures, and `error` naming what failed, if anything did.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def append_row(rows_path: Path, row: dict[str, Any]) -> None:
    """Appends one row and syncs it to disk: a later crash or timeout keeps every row measured so far."""
    with rows_path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def add_error(row: dict[str, Any], message: str) -> None:
    """Adds `message` to the row's `error` (several failures of one row are joined with '; ')."""
    row["error"] = f"{row['error']}; {message}" if row.get("error") else message


ERROR_LIMIT = 4000  # characters of an error kept in a row: a server's message with the end of its log fits


def error_text(exc: BaseException, limit: int = ERROR_LIMIT) -> str:
    """`Type: the whole message` (every line: "the end of its log" is often what says why), cut in the middle only
    beyond `limit` characters, keeping its start and its end."""
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2  # room for the marker
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"


def host_version(comfyui: Path) -> str:
    """The ComfyUI version of a host folder (its comfyui_version.py), read without importing it."""
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (comfyui / "comfyui_version.py").read_text(encoding="utf-8"))
    return match.group(1) if match else "unknown"


def read_rows(rows_path: Path) -> list[dict[str, Any]]:
    """The rows written so far (a torn last line, from a process killed mid-write, is left out)."""
    if not rows_path.is_file():
        return []
    rows = []
    for line in rows_path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
