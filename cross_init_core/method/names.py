"""Name lists used as the source of Cross Initialization.

`reference` is the list the paper's training script averages (data/wiki_names_v2.txt, MIT, see
data/README.md); `pack` is this pack's own, longer list. Both are read one name per line with duplicates
kept, as the reference reads its list, so a repeated name weighs twice in the mean.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ..common.errors import InvalidInputError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # cross_init_core/data, shared with the client
NAME_LIST_FILES = {
    "reference": DATA_DIR / "wiki_names_v2.txt",
    "pack": DATA_DIR / "celebrity_names.txt",
}
DEFAULT_NAME_LIST = "reference"
TYPED = "typed"  # metadata value for names that are not one of the shipped lists


def _visible(line: str) -> str:
    # invisible format characters (zero-width space, BOM, word joiner) tokenize to nothing in transformers 4
    # but to byte tokens in transformers 5: drop them so a name means the same with either
    return "".join(ch for ch in line if unicodedata.category(ch) != "Cf").strip()


def parse_name_lines(text: str) -> list[str]:
    """One name per line; blank lines and lines starting with '#' are ignored. Duplicates are kept."""
    lines = (_visible(line) for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _check_name_list(name_list: str) -> None:
    if name_list not in NAME_LIST_FILES:
        raise InvalidInputError(f"name_list: got {name_list!r}; use one of {', '.join(NAME_LIST_FILES)} (default {DEFAULT_NAME_LIST}).")


@lru_cache(maxsize=len(NAME_LIST_FILES))
def builtin_names(name_list: str = DEFAULT_NAME_LIST) -> tuple[str, ...]:
    """A shipped list, in file order with its duplicates."""
    _check_name_list(name_list)
    return tuple(parse_name_lines(NAME_LIST_FILES[name_list].read_text(encoding="utf-8")))


def names_from_input(text: str, name_list: str = DEFAULT_NAME_LIST) -> list[str]:
    """The `names` and `name_list` node inputs: typed names take precedence; empty means the chosen list."""
    _check_name_list(name_list)
    if not text.strip():
        return list(builtin_names(name_list))
    names = parse_name_lines(text)
    if not names:
        raise InvalidInputError(
            "names: every line is blank or a '#' comment. Write one name per line, or leave the field "
            "empty to use the list chosen in name_list."
        )
    return names


def list_label(names: Sequence[str]) -> str:
    """Which shipped list `names` is (recorded in the embedding's metadata), or 'typed' for any other list."""
    names = tuple(names)
    return next((key for key in NAME_LIST_FILES if builtin_names(key) == names), TYPED)
