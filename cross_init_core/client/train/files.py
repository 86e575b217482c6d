"""What the batch runner reads from its files and adds to their names, for both the checks before any work
(jobs.py) and the farm (farm.py), which loads the HTTP client: a safetensors file's metadata, the check of a LoRA
file a server saved (`--lora`), and the id of one run of a job."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

RUN_ID_LENGTH = 8  # hex digits of a run's id
# what a remote run adds to the names it saves (farm.saved_name), for the name-length checks before any work
RUN_ID_SUFFIX = "-" + "x" * RUN_ID_LENGTH


def new_run_id() -> str:
    """A fresh id for one run of a job: its upload folder and, on a remote server, the names it saves."""
    return uuid.uuid4().hex[:RUN_ID_LENGTH]


LORA_FORMAT = "cross_init_pivotal_lora"  # Save LoRA's `format` metadata
LORA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")  # every kohya LoRA module has these three keys
BUNDLE_PREFIX = "bundle_emb."


def file_header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensors by name, `__metadata__`); ValueError when it is not one."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    size = struct.unpack("<Q", data[:8])[0]
    if size > len(data) - 8:
        raise ValueError("its header runs past the end of the file")
    header = json.loads(data[8:8 + size])
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header


def file_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (read from its JSON header); empty when it cannot be read."""
    try:
        metadata = file_header(data).get("__metadata__") or {}
        return {str(k): str(v) for k, v in metadata.items()}
    except Exception:  # the summary still shows the run without it
        return {}


def lora_file_problem(data: bytes, token: str) -> str | None:
    """What is wrong with a pivotal LoRA file the runner fetched (None: nothing), read from its header alone: a
    safetensors file whose tensors fill it exactly, Save LoRA's format, whole kohya LoRA modules (down [rank, in], up
    [out, rank], alpha), and the token bundled under `token` only."""
    try:
        header = file_header(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not a safetensors file ({exc})"
    metadata = header.pop("__metadata__", None) or {}
    try:
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
        shapes = {name: [int(n) for n in entry["shape"]] for name, entry in header.items()}
    except (KeyError, TypeError, ValueError, IndexError):
        return "its header does not describe tensors"
    if end != len(data) - 8 - struct.unpack("<Q", data[:8])[0]:
        return "its tensors do not fill the file (truncated?)"
    if metadata.get("format") != LORA_FORMAT:
        return f"metadata format is {metadata.get('format')!r}, not {LORA_FORMAT!r} (not Cross-Init Save LoRA's file)"
    modules: dict[str, dict[str, list[int]]] = {}
    bundles = set()
    for name, shape in shapes.items():
        if name.startswith(BUNDLE_PREFIX):
            bundles.add(name[len(BUNDLE_PREFIX):].split(".", 1)[0])
            continue
        module, _, part = name.partition(".")
        modules.setdefault(module, {})[part] = shape
    if not modules or not all(m.startswith("lora_unet_") for m in modules):
        return "it holds no UNet LoRA modules (lora_unet_*)" if not modules else \
            f"unexpected keys {sorted(m for m in modules if not m.startswith('lora_unet_'))[:3]}"
    for module, parts in sorted(modules.items()):
        if set(parts) != set(LORA_PARTS):
            return f"module {module} has {sorted(parts)}, not {list(LORA_PARTS)}"
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        if len(down) != 2 or len(up) != 2 or down[0] != up[1]:
            return f"module {module}: down {down} and up {up} are not a rank-r pair"
    if bundles != {token} or metadata.get("cross_init_bundled_token") != token:
        return f"it bundles {sorted(bundles) or 'no token'}, not the token {token!r}"
    return None


def metadata_int(metadata: dict[str, str], key: str) -> int | None:
    try:
        return int(metadata[key])
    except (KeyError, ValueError):
        return None
