"""Boots the real ComfyUI host in-process for tests (CPU only) and loads this pack through its loader."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]

_booted: dict[str, object] = {}


def comfyui_path() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        raise RuntimeError("COMFYUI_PATH is not set: run the tests with `bash scripts/test.sh`")
    return Path(path)


def boot(base_directory: Path) -> ModuleType:
    """Imports ComfyUI with its CPU settings and a private base directory; returns the loaded pack module."""
    if "pack" in _booted:
        return _booted["pack"]  # type: ignore[return-value]
    root = str(comfyui_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True  # importing model_management without a GPU needs this first
    args.base_directory = str(base_directory)
    args.disable_all_custom_nodes = False
    # utils.extra_config must be imported before `nodes` in 0.3.75 (nodes puts comfy/ first on sys.path)
    importlib.import_module("utils.extra_config")
    importlib.import_module("folder_paths")
    nodes = importlib.import_module("nodes")

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    ok = asyncio.run(nodes.load_custom_node(str(REPO_ROOT)))
    if not ok:
        raise RuntimeError("ComfyUI's loader failed to import the pack (see the log above)")
    pack = sys.modules[str(REPO_ROOT).replace(".", "_x_")]
    _booted["pack"] = pack
    logging.getLogger(__name__).info("ComfyUI booted from %s, base %s", root, base_directory)
    return pack
