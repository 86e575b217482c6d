"""Boots the real ComfyUI host in-process (tests and benchmarks) and loads this pack through its loader.

Tests run on the CPU, where their expected numbers hold. Benchmarks ask for the GPU: ComfyUI then picks the
CUDA device wherever torch sees one, as it does for users (`comfy.cli_args.args.cpu` must be decided before
`comfy.model_management` is imported: once set, ComfyUI keeps the CPU even where a GPU exists).
"""

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


def cpu_only(prefer_gpu: bool, cuda_available: bool) -> bool:
    """Whether ComfyUI must be told to use the CPU: unless a GPU is wanted and torch sees a CUDA device
    (importing comfy.model_management without one needs `args.cpu`)."""
    return not (prefer_gpu and cuda_available)


def boot(base_directory: Path, prefer_gpu: bool = False) -> ModuleType:
    """Imports ComfyUI with a private base directory (on the GPU when `prefer_gpu` and CUDA is there, else the
    CPU); returns the loaded pack module."""
    if "pack" in _booted:
        return _booted["pack"]  # type: ignore[return-value]
    root = str(comfyui_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.options
    import torch

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = cpu_only(prefer_gpu, torch.cuda.is_available())
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
