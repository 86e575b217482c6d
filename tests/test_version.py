"""One version: pyproject.toml (the registry reads it), cross_init_core.__version__ (the startup log and every
saved file's pack_version) and the changelog's newest entry."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_the_version_is_the_same_everywhere_and_has_a_changelog_entry():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    package = re.search(r'^__version__ = "([^"]+)"', (REPO / "cross_init_core" / "__init__.py").read_text(encoding="utf-8"),
                        re.MULTILINE).group(1)
    assert project == package and re.fullmatch(r"\d+\.\d+\.\d+", project)
    entries = re.findall(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert entries and entries[0] == project  # the newest entry is this version's
