"""Embedding file names: what `embedding:NAME` can hold and what may never leave the embeddings folder.

Pure (no torch, no ComfyUI): the save node and the terminal client check names with the same rules.
"""

from __future__ import annotations

import os
import re
import unicodedata

from .errors import InvalidInputError
from .settings import STEPS

MAX_NAME_LENGTH = 100
DOWNLOAD_SUBFOLDER = "cross_init_embeddings"  # the save node's copies for HTTP clients, under ComfyUI's output folder
LORA_DOWNLOAD_SUBFOLDER = "cross_init_loras"  # Save LoRA's copies for HTTP clients, likewise
TRAINED_METHOD = "cross_initialization"  # the `method` metadata of the files a Cross-Init run writes
# a continued run replays the earlier run's draws one by one; no real run comes near this
MAX_CONTINUED_STEPS = 100_000
# the most steps a file can record: a continued run of STEPS.high steps on top of the most a run can go on from
MAX_RUN_STEPS = MAX_CONTINUED_STEPS + STEPS.high
# file systems limit a file name to 255 bytes; leave room for ".safetensors" and the temp file's affixes
MAX_NAME_BYTES = 200
_PORT_SUFFIXES = (*"0123456789", "\u00b9", "\u00b2", "\u00b3")  # Windows also reserves COM0, COM¹, LPT² ...
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in _PORT_SUFFIXES), *(f"LPT{i}" for i in _PORT_SUFFIXES)}
_NAME_RE = re.compile(r"^[\w.\-]+$", re.UNICODE)


def validate_name(name: str) -> str:
    """A file stem usable as `embedding:NAME`; rejects anything that could leave the embeddings folder."""
    if not isinstance(name, str):
        raise InvalidInputError("name: it must be text.")
    stem = unicodedata.normalize("NFC", name.strip())
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    what = f"name {name!r}"
    if not stem:
        raise InvalidInputError("name: it is empty. Choose a short name such as my_face; you will write embedding:my_face.")
    if "/" in stem or "\\" in stem or ".." in stem or os.path.isabs(stem) or ":" in stem:
        raise InvalidInputError(f"{what}: it must be a plain file name, without '/', '\\', ':' or '..'. Use e.g. my_face.")
    if any(ch.isspace() for ch in stem):
        raise InvalidInputError(f"{what}: it contains spaces, which `embedding:NAME` cannot hold. Use '_' instead, e.g. my_face.")
    if not _NAME_RE.match(stem) or stem.startswith(".") or stem.endswith("."):
        raise InvalidInputError(f"{what}: use letters, digits, '_', '-' and '.' only (not first or last).")
    if len(stem) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"{what}: it is {len(stem)} characters long; use at most {MAX_NAME_LENGTH}.")
    if len(stem.encode("utf-8")) > MAX_NAME_BYTES:
        raise InvalidInputError(
            f"{what}: it is {len(stem.encode('utf-8'))} bytes long in UTF-8, too long for a file name; "
            f"use at most {MAX_NAME_BYTES} bytes (fewer characters for non-Latin letters)."
        )
    if stem.split(".")[0].upper() in WINDOWS_RESERVED:
        raise InvalidInputError(f"{what}: {stem.split('.')[0]} is a reserved device name on Windows; choose another name.")
    return stem


def checkpoint_name(stem: str, steps: int) -> str:
    """The file stem of a run's checkpoint after `steps` steps: NAME-stepNNNN (four digits at least)."""
    return f"{stem}-step{steps:04d}"


# NAME-stepNNNN as written: four digits at least (CHECKPOINT_RE.match(stem) gives NAME and the count)
CHECKPOINT_RE = re.compile(r"^(?P<name>.+)-step(?P<steps>\d{4,})$")


def validate_run_name(name: str, max_steps: int) -> str:
    """`validate_name`, and also for every NAME-stepNNNN a run of up to `max_steps` steps could write: a name too
    long for its checkpoints is refused before the run rather than when the checkpoints are saved."""
    stem = validate_name(name)
    longest = checkpoint_name(stem, max_steps)
    room = len(longest) - len(stem)
    too_long = len(longest) > MAX_NAME_LENGTH or len(longest.encode("utf-8")) > MAX_NAME_BYTES
    if too_long:
        raise InvalidInputError(
            f"name {name!r}: too long for its checkpoint files (up to {longest!r}, {len(longest)} characters; file names "
            f"hold at most {MAX_NAME_LENGTH}). Use at most {MAX_NAME_LENGTH - room} characters."
        )
    return stem


def validate_bundle_name(name: str, what: str = "name") -> str:
    """`validate_name`, and without '.': a token bundled in a LoRA file is keyed `bundle_emb.NAME.<part>`, and A1111,
    OneTrainer and this pack read NAME up to the first dot, so a dotted NAME would load under another word."""
    stem = validate_name(name)
    if "." in stem:
        raise InvalidInputError(
            f"{what} {stem!r}: a token bundled in a LoRA file cannot have '.' in its name (bundle_emb.NAME.* is read up "
            f"to the first dot, so it would load as {stem.split('.')[0]!r}). Use e.g. {stem.replace('.', '_')!r}."
        )
    return stem


def trained_steps(metadata: dict[str, str]) -> int | None:
    """The step count a file's metadata records (`steps`), or None when it records none or it is not a whole number."""
    value = str(metadata.get("steps", "")).strip()
    return int(value) if value.isascii() and value.isdecimal() else None


def continued_steps(metadata: dict[str, str], source: str = "the embedding") -> int:
    """The step count a run going on from a file with this metadata counts on from: its `steps` when a Cross-Init run
    wrote it (metadata `method`), else 0 (another trainer's `steps` counts other steps, with other draws).

    The one rule for the trainer (server) and the batch runner (client), so both plan the same file names.
    InvalidInputError when the count is more than a run can go on from."""
    steps = (trained_steps(metadata) or 0) if metadata.get("method") == TRAINED_METHOD else 0
    if steps > MAX_CONTINUED_STEPS:
        raise InvalidInputError(
            f"embedding: {source} says it was trained for {steps} steps (metadata steps), more than the "
            f"{MAX_CONTINUED_STEPS} a run can go on from; train from Cross-Init Embedding Init instead."
        )
    return steps
