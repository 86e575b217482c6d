"""Test-only ComfyUI node: a checkpoint loader that returns the tiny SD1 models of tests/tiny_models.py.

Installed only into the custom_nodes folder of the ComfyUI servers that tests/comfy_servers.py starts, so the
batch-runner tests can train over real servers in seconds on a CPU. It lists the checkpoints folders like
the stock CheckpointLoaderSimple (the runner's checkpoint check sees the same names); it accepts only
empty placeholder files and fails on any other, which the tests use as a failure inside
a node. The test that needs the stock loader uses a real-architecture checkpoint instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import folder_paths

_TESTS = str(Path(__file__).resolve().parents[2])
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # last: nothing of ComfyUI's may be shadowed

import tiny_models  # noqa: E402


class CrossInitTestTinyCheckpointLoader:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        if path is not None and Path(path).stat().st_size > 0:
            # a deterministic failure on the server's side: the runner must report it and not retry it
            raise ValueError(f"ckpt_name: {ckpt_name} is not a checkpoint the test loader accepts (not an empty placeholder)")
        models = tiny_models.build("sd1")  # seeded: every server builds the same weights
        return models.model, models.clip, models.vae


NODE_CLASS_MAPPINGS = {"CrossInitTestTinyCheckpointLoader": CrossInitTestTinyCheckpointLoader}
