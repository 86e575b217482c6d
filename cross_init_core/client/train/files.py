"""What the batch runner reads from its files and adds to their names, for both the checks before any work
(jobs.py) and the farm (farm.py), which loads the HTTP client: a safetensors file's metadata, and the id of one
run of a job."""

from __future__ import annotations

import json
import struct
import uuid

RUN_ID_LENGTH = 8  # hex digits of a run's id
# what a remote run adds to the names it saves (farm.saved_name), for the name-length checks before any work
RUN_ID_SUFFIX = "-" + "x" * RUN_ID_LENGTH


def new_run_id() -> str:
    """A fresh id for one run of a job: its upload folder and, on a remote server, the names it saves."""
    return uuid.uuid4().hex[:RUN_ID_LENGTH]


def file_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (read from its JSON header); empty when it cannot be read."""
    try:
        size = struct.unpack("<Q", data[:8])[0]
        metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
        return {str(k): str(v) for k, v in metadata.items()}
    except Exception:  # the summary still shows the run without it
        return {}


def metadata_int(metadata: dict[str, str], key: str) -> int | None:
    try:
        return int(metadata[key])
    except (KeyError, ValueError):
        return None
