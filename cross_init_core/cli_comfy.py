"""The ComfyUI side of the batch runner: find ComfyUI, edit the shipped API graph, and the progress bar.

Nothing here imports ComfyUI: the runner talks to ComfyUI servers over their HTTP API
(cross_init_core/comfy_client.py), so the graph is edited as plain JSON and node options come from the
servers' /object_info.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .cli_common import UsageError
from .prompt_graph import load_photos, nodes_of, only, set_checkpoint, upstream

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = PACK_DIR / "workflows" / "api"
TRAINER = "CrossInitTrainer"
SAVER = "CrossInitSaveEmbedding"
FACE_PREP = "CrossInitFacePrep"
CKPT_LOADER = "CheckpointLoaderSimple"
FOLDER_LOADER = "LoadImageDataSetFromFolder"  # stock (comfy_extras/nodes_dataset.py): a folder -> IMAGE list
INPUT_SUBFOLDER = "cross_init_cli"  # the runner's uploads go under ComfyUI's input/cross_init_cli/


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
# The graph


@dataclass
class GraphSettings:
    ckpt_name: str
    name: str
    mode: str
    seed: int
    overwrite: bool
    use_folder_loader: bool = True  # the server has the stock folder loader (face prep gets an image list)
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    resolution: int | None = None
    samples: bool = False
    face_prep: dict[str, Any] = field(default_factory=dict)


def build_prompt(workflow: dict[str, Any], settings: GraphSettings, images: list[str], image_folder: str,
                 presets: dict[str, Any]) -> dict[str, Any]:
    """The API prompt for one embedding: the shipped graph with this job's inputs.

    `images` are the uploaded photos' names relative to the server's input directory, `image_folder` the
    folder holding them (also relative). Nodes are found by class_type, never by id.
    """
    prompt = copy.deepcopy(workflow)
    trainer, saver = only(prompt, TRAINER), only(prompt, SAVER)
    set_checkpoint(prompt, settings.ckpt_name)

    # trainer: mode and seed; --steps/--batch-size/--learning-rate switch to custom with the preset's other values
    t = prompt[trainer]["inputs"]
    t["seed"] = settings.seed
    t["mode"] = settings.mode
    if any(v is not None for v in (settings.steps, settings.batch_size, settings.learning_rate)):
        preset = presets[settings.mode]
        t["mode"] = "custom"
        t["steps"] = settings.steps if settings.steps is not None else preset.steps
        t["batch_size"] = settings.batch_size if settings.batch_size is not None else preset.batch_size
        t["learning_rate"] = settings.learning_rate if settings.learning_rate is not None else preset.learning_rate
    if settings.resolution is not None:
        t["resolution"] = settings.resolution
    # copy_to_output: the save node also puts the file where /view serves it, and reports it in /history
    prompt[saver]["inputs"].update(name=settings.name, overwrite=settings.overwrite, copy_to_output=True)

    # the photos: the graph's LoadImage stands for them
    loaders = nodes_of(prompt, "LoadImage")
    if len(loaders) != 1:
        raise ValueError(f"the workflow must have exactly one LoadImage node (the face photos); it has {len(loaders)}")
    (loader,) = loaders
    preps = nodes_of(prompt, FACE_PREP)
    prep_reads_loader = [p for p in preps if prompt[p]["inputs"].get("image") == [loader, 0]]
    for prep in preps:
        prompt[prep]["inputs"].update(settings.face_prep)
    mask_read = any(value == [loader, 1] for node in prompt.values() for value in node["inputs"].values())
    if prep_reads_loader and not mask_read and settings.use_folder_loader:
        # face prep takes an image list (photos of any sizes): the stock folder loader gives one
        prompt[loader] = {"class_type": FOLDER_LOADER, "inputs": {"folder": image_folder}, "_meta": {"title": "Face photos (CLI)"}}
    else:
        # one LoadImage per photo, batched with the stock ImageBatch (it resizes later photos to the first's size)
        last, added = load_photos(prompt, loader, images, "Face photo (CLI)", "Batch photos (CLI)")
        if last != [loader, 0]:
            for node_id, node in prompt.items():  # the graph's readers of the photos now read the batch
                if node_id not in added:
                    node["inputs"].update({key: list(last) for key, value in node["inputs"].items() if value == [loader, 0]})

    if settings.samples:
        for node_id in nodes_of(prompt, "SaveImage"):
            folder, _, stem = str(prompt[node_id]["inputs"].get("filename_prefix", "cross_init/sample")).rpartition("/")
            prompt[node_id]["inputs"]["filename_prefix"] = f"{folder or 'cross_init'}/{settings.name}_{stem}"
        for node_id in nodes_of(prompt, "PreviewImage"):  # headless: save the previews (the loss curve) instead
            inputs = {"images": prompt[node_id]["inputs"]["images"], "filename_prefix": f"cross_init/{settings.name}_loss"}
            prompt[node_id] = {"class_type": "SaveImage", "inputs": inputs, "_meta": prompt[node_id].get("_meta", {})}
    else:
        keep = upstream(prompt, [saver])
        prompt = {k: v for k, v in prompt.items() if k in keep}
    return prompt


class ProgressBar:
    """Progress of one job, fed by its server's websocket "progress" messages (one node at a time).

    On a terminal with one job at a time: a tqdm bar per node, as ComfyUI's own console bars. Otherwise (a
    log file, CI, or several servers whose jobs run side by side, where redrawn lines would interleave): a
    plain line every 10 %.
    """

    def __init__(self, stream: TextIO, label: str, enabled: bool = True, redraw: bool = True) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self.tty = redraw and bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.last_tenth = -1
        self.bar: Any = None

    def hook(self, value: int, total: int, node_id: str | None = None) -> None:
        if not self.enabled or not total:
            return
        if self.tty:
            self._draw(value, total)
            return
        tenth = int(min(max(value / total, 0.0), 1.0) * 10)
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            elapsed = time.perf_counter() - self.started
            eta = elapsed / value * (total - value) if value else 0.0
            self.stream.write(f"{self.label} | {value}/{total} {elapsed:.0f}s<{eta:.0f}s\n")
            self.stream.flush()

    def _draw(self, value: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is not None and (self.bar.total != total or value < self.bar.n):
            self.finish()  # the next node reports: a bar of its own
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, file=self.stream, unit="step", dynamic_ncols=True)
        self.bar.update(min(value, total) - self.bar.n)
        if value >= total:
            self.finish()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------
# The local ComfyUI (started as a child process when no --server is given)


def _pack_is_installed(custom_nodes: list[Path]) -> bool:
    """Whether one of these custom_nodes folders holds this pack (itself or a link to it)."""
    return any(entry.resolve() == PACK_DIR for folder in custom_nodes if folder.is_dir() for entry in folder.iterdir())


def local_comfyui(comfyui: Path | None, base_directory: Path | None, checkpoint: str, scratch: Path,
                  cpu: bool) -> tuple[Any, str, Path]:
    """The local child ComfyUI to start (a LocalServer, not started yet), the checkpoint name it will know, and
    its embeddings folder. `comfyui` None = the ComfyUI this pack is installed in, else $COMFYUI_PATH."""
    from .comfy_client import LocalServer

    folder, where = (comfyui, f"--comfyui {comfyui}") if comfyui else default_comfyui_path()
    if folder is None:
        raise UsageError("no ComfyUI found to start: pass --comfyui PATH, set COMFYUI_PATH, install this pack in "
                                "ComfyUI/custom_nodes, or give running servers with --server URL")
    if not looks_like_comfyui(folder):
        raise UsageError(f"{where}: this is not a ComfyUI folder (no main.py, folder_paths.py and comfy/ in it)")
    extra, ckpt_name, embeddings = local_server_setup(folder, base_directory, checkpoint, scratch, cpu or not has_accelerator())
    return LocalServer(folder.resolve(), extra, log_path=scratch / "comfyui.log"), ckpt_name, embeddings


async def connect_local(local: Any, session: Any, log: logging.Logger) -> Any:
    """Starts the local child ComfyUI and returns a ComfyClient on it once it answers; UsageError if it does
    not come up (its log's last lines in the message). `log` is the command's own logger."""
    from .comfy_client import ServerGone

    log.info("starting ComfyUI (%s) on %s ...", local.comfyui, local.url)
    try:
        return await local.connect(session)
    except ServerGone as exc:
        raise UsageError(str(exc)) from None


def local_server_setup(comfyui: Path, base_directory: Path | None, checkpoint: str, scratch: Path,
                       cpu: bool) -> tuple[list[str], str, Path]:
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
    if not _pack_is_installed([root / "custom_nodes", comfyui / "custom_nodes"]):
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
        import json

        config = scratch / "extra_model_paths.yaml"
        # JSON is valid YAML: no YAML writer needed here
        config.write_text(json.dumps(sections, indent=2), encoding="utf-8")
        args += ["--extra-model-paths-config", str(config)]
    return args, ckpt_name, root / "models" / "embeddings"
