"""Name lists used as the source of Cross Initialization."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .errors import InvalidInputError

BUILTIN_NAMES_FILE = Path(__file__).resolve().parent / "data" / "celebrity_names.txt"


def parse_name_lines(text: str) -> list[str]:
    """One name per line; blank lines and lines starting with '#' are ignored. Duplicates are kept."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@lru_cache(maxsize=1)
def builtin_names() -> tuple[str, ...]:
    return tuple(parse_name_lines(BUILTIN_NAMES_FILE.read_text(encoding="utf-8")))


def names_from_input(text: str) -> list[str]:
    """The `names` node input: empty means the built-in list."""
    if not text.strip():
        return list(builtin_names())
    names = parse_name_lines(text)
    if not names:
        raise InvalidInputError(
            "names: every line is blank or a '#' comment. Write one name per line, or leave the field "
            "empty to use the built-in list of well-known people."
        )
    return names
