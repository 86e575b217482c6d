"""The local ComfyUI both commands use when no --server is given: found (the one this pack is installed in, or
$COMFYUI_PATH), set up (the pack and a checkpoint outside its folders, through an extra model-paths file in a
scratch folder: nothing is written into the user's folders) and started as a child process on loopback.

Nothing here imports ComfyUI: the commands talk to it over its HTTP API (comfy_client.py).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .comfy_client import ComfyClient, LocalServer, ServerGone
from .common import UsageError
from .prompt_graph import PACK_DIR

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Finding ComfyUI


def looks_like_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "folder_paths.py").is_file() and (path / "comfy").is_dir()


def default_comfyui_path() -> tuple[Path | None, str]:
    """The ComfyUI this pack is installed in (two folders up), else $COMFYUI_PATH; with a description."""
    installed_in = PACK_DIR.parents[1] if len(PACK_DIR.parents) > 1 else None
    if installed_in is not None and PACK_DIR.parent.name == "custom_nodes" and looks_like_comfyui(installed_in):
        return installed_in, f"the ComfyUI this pack is installed in ({installed_in})"
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env), f"COMFYUI_PATH ({env})"
    return None, "none found"


def has_accelerator() -> bool:
    """Whether torch sees a GPU here (the local ComfyUI is started with --cpu otherwise: it needs that flag)."""
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


# ---------------------------------------------------------------------------------------------
# The local ComfyUI (started as a child process when no --server is given)


def _pack_is_installed(custom_nodes: list[Path]) -> bool:
    """Whether one of these custom_nodes folders holds this pack (itself or a link to it)."""
    return any(entry.resolve() == PACK_DIR for folder in custom_nodes if folder.is_dir() for entry in folder.iterdir())


def local_comfyui(comfyui: Path | None, base_directory: Path | None, checkpoint: str, scratch: Path,
                  cpu: bool) -> tuple[LocalServer, str, Path]:
    """The local child ComfyUI to start (a LocalServer, not started yet), the checkpoint name it will know, and
    its embeddings folder. `comfyui` None = the ComfyUI this pack is installed in, else $COMFYUI_PATH."""
    folder, where = (comfyui, f"--comfyui {comfyui}") if comfyui else default_comfyui_path()
    if folder is None:
        raise UsageError("no ComfyUI found to start: pass --comfyui PATH, set COMFYUI_PATH, install this pack in "
                                "ComfyUI/custom_nodes, or give running servers with --server URL")
    if not looks_like_comfyui(folder):
        raise UsageError(f"{where}: this is not a ComfyUI folder (no main.py, folder_paths.py and comfy/ in it)")
    extra, ckpt_name, embeddings = local_server_setup(folder, base_directory, checkpoint, scratch, cpu or not has_accelerator())
    return LocalServer(folder.resolve(), extra, log_path=scratch / "comfyui.log"), ckpt_name, embeddings


async def connect_local(local: LocalServer, session: Any) -> ComfyClient:
    """Starts the local child ComfyUI and returns a ComfyClient on it once it answers; UsageError if it does
    not come up (its log's last lines in the message)."""
    log.info("starting ComfyUI (%s) on %s ...", local.comfyui, local.url)
    try:
        return await local.connect(session)
    except ServerGone as exc:
        raise UsageError(str(exc)) from None


def local_server_setup(comfyui: Path, base_directory: Path | None, checkpoint: str, scratch: Path,
                       cpu: bool, link_pack: bool = True) -> tuple[list[str], str, Path]:
    """(main.py arguments, checkpoint name, embeddings folder) for the local child ComfyUI.

    main.py itself reads the ComfyUI folder's extra_model_paths.yaml, as when the user starts it. Two things
    may need an extra config (written into `scratch`, passed with --extra-model-paths-config, nothing
    written into the user's folders): this pack when it is not in that ComfyUI's custom_nodes (a link to it
    in a scratch folder), and a --checkpoint given as a file path outside the checkpoints folders.
    """
    root = base_directory.expanduser().resolve() if base_directory else comfyui.resolve()
    args: list[str] = []
    if base_directory is not None:
        args += ["--base-directory", str(root)]
    if cpu:
        args.append("--cpu")
    sections: dict[str, dict[str, Any]] = {}
    # (a Ray actor runs a copy of the client, not the pack: there the ComfyUI must have the pack installed)
    if link_pack and not _pack_is_installed([root / "custom_nodes", comfyui / "custom_nodes"]):
        nodes_dir = scratch / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        (nodes_dir / PACK_DIR.name).symlink_to(PACK_DIR, target_is_directory=True)
        sections["cross_init_pack"] = {"base_path": str(scratch), "custom_nodes": str(nodes_dir)}
    ckpt_name = checkpoint
    path = Path(checkpoint).expanduser()
    if path.is_file() and (os.sep in checkpoint or "/" in checkpoint):
        resolved = path.resolve()
        default = (root / "models" / "checkpoints").resolve()
        try:
            ckpt_name = resolved.relative_to(default).as_posix()
        except ValueError:
            # first in the search order, so this file wins over another of the same name
            sections["cross_init_checkpoint"] = {"base_path": str(resolved.parent), "checkpoints": str(resolved.parent),
                                                 "is_default": True}
            ckpt_name = resolved.name
    if sections:
        config = scratch / "extra_model_paths.yaml"
        # JSON is valid YAML: no YAML writer needed here
        config.write_text(json.dumps(sections, indent=2), encoding="utf-8")
        args += ["--extra-model-paths-config", str(config)]
    return args, ckpt_name, root / "models" / "embeddings"
