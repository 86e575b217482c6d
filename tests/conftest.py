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


@pytest.fixture(scope="session")
def tiny(pack):
    """Factory: tiny("sd1" | "sd2" | "sd2_eps" | "sdxl") -> TinyModels, cached per kind (tests must not change them)."""
    import tiny_models

    cache: dict[str, tiny_models.TinyModels] = {}

    def get(kind: str) -> tiny_models.TinyModels:
        if kind not in cache:
            cache[kind] = tiny_models.build(kind)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def embeddings_dir(pack) -> Path:
    """ComfyUI's first embeddings folder (inside the session's temp base directory)."""
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("embeddings")[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder
