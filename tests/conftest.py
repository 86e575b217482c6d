from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import host


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfy_base")


@pytest.fixture(scope="session")
def pack(comfy_base: Path):
    """This pack as ComfyUI's own custom-node loader imported it."""
    return host.boot(comfy_base)


@pytest.fixture(scope="session")
def core(pack):
    """The pack's core package (the same module objects the nodes use)."""
    return pack.cross_init_core
