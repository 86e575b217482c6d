"""The ComfyUI side of the batch runner: boot the host in-process, edit the shipped API graph, run it.

Nothing here imports ComfyUI at module level, so `python -m cross_init_core --help` stays fast. The pack's
nodes are never imported from here: ComfyUI's own loader imports the pack (under its path-derived
module name) and the graph reaches them through `nodes.NODE_CLASS_MAPPINGS`, exactly as in the editor.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = PACK_DIR / "workflows" / "api"
TRAINER = "CrossInitTrainer"
SAVER = "CrossInitSaveEmbedding"
FACE_PREP = "CrossInitFacePrep"
CKPT_LOADER = "CheckpointLoaderSimple"
FOLDER_LOADER = "LoadImageDataSetFromFolder"  # stock (comfy_extras/nodes_dataset.py): a folder -> IMAGE list
INPUT_SUBFOLDER = "cross_init_cli"  # the runner's scratch folder inside ComfyUI's input directory

# (ckpt_name) -> (MODEL, CLIP, VAE): replaces what CheckpointLoaderSimple loads (tests inject tiny models)
CheckpointLoaderOverride = Callable[[str], tuple[Any, Any, Any]]


class HostError(RuntimeError):
    """ComfyUI could not be found or booted; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Finding and booting ComfyUI


def looks_like_comfyui(path: Path) -> bool:
    return (path / "nodes.py").is_file() and (path / "folder_paths.py").is_file() and (path / "comfy").is_dir()


def default_comfyui_path() -> tuple[Path | None, str]:
    """The ComfyUI this pack is installed in (two folders up), else $COMFYUI_PATH; with a description."""
    installed_in = PACK_DIR.parents[1] if len(PACK_DIR.parents) > 1 else None
    if installed_in is not None and PACK_DIR.parent.name == "custom_nodes" and looks_like_comfyui(installed_in):
        return installed_in, f"the ComfyUI this pack is installed in ({installed_in})"
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env), f"COMFYUI_PATH ({env})"
    return None, "none found"


def booted() -> bool:
    module = sys.modules.get("nodes")
    return module is not None and hasattr(module, "NODE_CLASS_MAPPINGS") and "folder_paths" in sys.modules


def _has_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def boot(comfyui: Path | None, base_directory: Path | None = None, cpu: bool = False) -> None:
    """Imports ComfyUI from `comfyui` and lets its loader load the custom nodes, this pack included.

    Idempotent: when ComfyUI is already imported in this process (tests, or a second call) it only makes
    sure this pack's nodes are registered.
    """
    if booted():
        log.debug("ComfyUI is already imported (%s); not booting it again", getattr(sys.modules["nodes"], "__file__", "?"))
    else:
        if comfyui is None:
            raise HostError("no ComfyUI found: pass --comfyui PATH, set COMFYUI_PATH, or install this pack in ComfyUI/custom_nodes.")
        root = comfyui.expanduser().resolve()
        if not looks_like_comfyui(root):
            raise HostError(f"--comfyui {comfyui}: this is not a ComfyUI folder (no nodes.py, folder_paths.py and comfy/ in it).")
        started = time.perf_counter()
        while str(root) in sys.path:
            sys.path.remove(str(root))
        sys.path.insert(0, str(root))  # before the pack folder, whose `nodes` package would shadow ComfyUI's nodes.py
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        if cpu or not _has_accelerator():
            args.cpu = True  # importing comfy.model_management without a GPU needs this first
        if base_directory is not None:
            args.base_directory = str(base_directory.expanduser().resolve())
        # 0.3.75: utils.extra_config before nodes (nodes.py puts comfy/ first on sys.path, shadowing utils/)
        extra_config = importlib.import_module("utils.extra_config")
        importlib.import_module("folder_paths")
        yaml_path = root / "extra_model_paths.yaml"
        if yaml_path.is_file():  # what main.py does: the user's extra model folders
            extra_config.load_extra_path_config(str(yaml_path))
        folder_paths = sys.modules["folder_paths"]
        nodes = importlib.import_module("nodes")
        # 0.3.75 stops on a custom_nodes folder that does not exist: scan only the existing ones
        entry = folder_paths.folder_names_and_paths["custom_nodes"]
        missing = [p for p in entry[0] if not os.path.isdir(p)]
        if missing:
            log.debug("custom_nodes folders that do not exist (not scanned): %s", missing)
            folder_paths.folder_names_and_paths["custom_nodes"] = ([p for p in entry[0] if p not in missing], entry[1])
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        finally:
            folder_paths.folder_names_and_paths["custom_nodes"] = entry
        log.info("ComfyUI booted from %s in %.1f s", root, time.perf_counter() - started)
    nodes = sys.modules["nodes"]
    if TRAINER not in nodes.NODE_CLASS_MAPPINGS:
        # the pack is not in this ComfyUI's custom_nodes: load it from where it is, through the same loader
        ok = asyncio.run(nodes.load_custom_node(str(PACK_DIR)))
        if not ok or TRAINER not in nodes.NODE_CLASS_MAPPINGS:
            raise HostError(f"ComfyUI's loader could not import the Cross-Init pack from {PACK_DIR} (see the log above).")


# ---------------------------------------------------------------------------------------------
# Host queries used by the pre-run checks


def embeddings_folder() -> Path:
    import folder_paths

    folders = folder_paths.get_folder_paths("embeddings")
    if not folders:
        raise HostError("ComfyUI has no embeddings folder configured (models/embeddings).")
    return Path(folders[0])


def resolve_checkpoint(value: str) -> tuple[str | None, str]:
    """(ckpt_name for CheckpointLoaderSimple, description) or (None, why not).

    A name from ComfyUI's checkpoints folders is used as is; an existing file elsewhere is used by adding
    its folder to this process's checkpoint search paths (nothing is written to disk).
    """
    import folder_paths

    full = folder_paths.get_full_path("checkpoints", value)
    if full is not None:
        return value, full
    path = Path(value).expanduser()
    if path.is_file():
        resolved = path.resolve()
        for folder in folder_paths.get_folder_paths("checkpoints"):
            try:
                rel = resolved.relative_to(Path(folder).resolve())
            except ValueError:
                continue
            return rel.as_posix(), str(resolved)
        folder_paths.add_model_folder_path("checkpoints", str(resolved.parent), is_default=True)
        if folder_paths.get_full_path("checkpoints", resolved.name) == str(resolved):
            return resolved.name, str(resolved)
        return None, f"{value}: cannot be loaded ({resolved.name} is also the name of another checkpoint ComfyUI knows)"
    known = folder_paths.get_filename_list("checkpoints")
    hint = f" ComfyUI knows: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''}." if known else " ComfyUI knows no checkpoints."
    folders = ", ".join(folder_paths.get_folder_paths("checkpoints"))
    return None, f"checkpoint {value!r} not found: it is neither a file nor a name in the checkpoints folders ({folders}).{hint}"


def node_options(class_type: str, input_name: str) -> tuple[list[Any] | None, dict[str, Any]]:
    """(combo options or None, widget options) of one input, from the node as the host registered it."""
    import nodes

    spec = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    for section in ("required", "optional"):
        entry = spec.get(section, {}).get(input_name)
        if entry is None:
            continue
        kind = entry[0]
        extra = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        if isinstance(kind, (list, tuple)):
            return list(kind), extra
        return (list(extra["options"]) if "options" in extra else None), extra
    raise KeyError(f"{class_type} has no input {input_name!r}")


def has_node_type(class_type: str) -> bool:
    import nodes

    return class_type in nodes.NODE_CLASS_MAPPINGS


# ---------------------------------------------------------------------------------------------
# The graph


@dataclass
class GraphSettings:
    ckpt_name: str
    name: str
    mode: str
    seed: int
    overwrite: bool
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    resolution: int | None = None
    samples: bool = False
    face_prep: dict[str, Any] = field(default_factory=dict)


def nodes_of(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node.get("class_type") == class_type]


def only(prompt: dict[str, Any], class_type: str) -> str:
    found = nodes_of(prompt, class_type)
    if len(found) != 1:
        raise ValueError(f"the workflow must have exactly one {class_type} node; it has {len(found)}")
    return found[0]


def ancestors(prompt: dict[str, Any], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                todo.append(value[0])
    return seen


def _rewire(prompt: dict[str, Any], old: list[Any], new: list[Any], skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for node_id, node in prompt.items():
        if node_id in skip:
            continue
        for key, value in node["inputs"].items():
            if value == old:
                node["inputs"][key] = list(new)


class _Ids:
    def __init__(self, prompt: dict[str, Any]) -> None:
        numeric = [int(k) for k in prompt if k.isdigit()]
        self.next = max(numeric, default=0) + 1

    def __call__(self) -> str:
        self.next += 1
        return str(self.next - 1)


def build_prompt(workflow: dict[str, Any], settings: GraphSettings, images: list[str], image_folder: str,
                 presets: dict[str, Any]) -> dict[str, Any]:
    """The API prompt for one embedding: the shipped graph with this job's inputs.

    `images` are paths relative to ComfyUI's input directory, `image_folder` the folder holding them (also
    relative). Nodes are found by class_type, never by id.
    """
    prompt = copy.deepcopy(workflow)
    new_id = _Ids(prompt)
    trainer, saver = only(prompt, TRAINER), only(prompt, SAVER)
    for node_id in nodes_of(prompt, CKPT_LOADER):
        prompt[node_id]["inputs"]["ckpt_name"] = settings.ckpt_name

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
    prompt[saver]["inputs"].update(name=settings.name, overwrite=settings.overwrite)

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
    if prep_reads_loader and not mask_read and has_node_type(FOLDER_LOADER):
        # face prep takes an image list (photos of any sizes): the stock folder loader gives one
        prompt[loader] = {"class_type": FOLDER_LOADER, "inputs": {"folder": image_folder}, "_meta": {"title": "Face photos (CLI)"}}
    else:
        # one LoadImage per photo, batched with the stock ImageBatch (it resizes later photos to the first's size)
        prompt[loader]["inputs"]["image"] = images[0]
        last = [loader, 0]
        added: set[str] = set()
        for image in images[1:]:
            load_id, batch_id = new_id(), new_id()
            prompt[load_id] = {"class_type": "LoadImage", "inputs": {"image": image}, "_meta": {"title": "Face photo (CLI)"}}
            prompt[batch_id] = {"class_type": "ImageBatch", "inputs": {"image1": last, "image2": [load_id, 0]},
                                "_meta": {"title": "Batch photos (CLI)"}}
            added |= {load_id, batch_id}
            last = [batch_id, 0]
        if last != [loader, 0]:
            _rewire(prompt, [loader, 0], last, skip=added)

    if settings.samples:
        for node_id in nodes_of(prompt, "SaveImage"):
            folder, _, stem = str(prompt[node_id]["inputs"].get("filename_prefix", "cross_init/sample")).rpartition("/")
            prompt[node_id]["inputs"]["filename_prefix"] = f"{folder or 'cross_init'}/{settings.name}_{stem}"
        for node_id in nodes_of(prompt, "PreviewImage"):  # headless: save the previews (the loss curve) instead
            inputs = {"images": prompt[node_id]["inputs"]["images"], "filename_prefix": f"cross_init/{settings.name}_loss"}
            prompt[node_id] = {"class_type": "SaveImage", "inputs": inputs, "_meta": prompt[node_id].get("_meta", {})}
    else:
        keep = ancestors(prompt, [saver])
        prompt = {k: v for k, v in prompt.items() if k in keep}
    return prompt


# ---------------------------------------------------------------------------------------------
# Inputs in ComfyUI's input folder


@contextmanager
def staged_images(paths: list[Path], job_name: str) -> Iterator[tuple[list[str], str]]:
    """Copies the photos into <input>/cross_init_cli/<unique>/ for the run; yields (relative files, relative folder)."""
    import folder_paths

    input_dir = Path(folder_paths.get_input_directory())
    rel_folder = f"{INPUT_SUBFOLDER}/{uuid.uuid4().hex[:8]}_{job_name}"
    folder = input_dir / rel_folder
    folder.mkdir(parents=True, exist_ok=False)
    try:
        rel_files = []
        for index, path in enumerate(paths):
            target = folder / f"{index:02d}_{path.name}"
            shutil.copyfile(path, target)
            rel_files.append(f"{rel_folder}/{target.name}")
        yield rel_files, rel_folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # only when empty
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Running


class ServerStub:
    """What PromptExecutor needs of PromptServer; remembers the node being executed (for the progress bar)."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.executing: str | None = None
        self.messages: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        # newer hosts call more PromptServer methods (progress handlers, model trackers): accept and ignore them
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if event == "executing" and isinstance(data, dict):
            self.executing = data.get("node")
        elif event in ("execution_error", "execution_interrupted", "execution_success"):
            self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


class ProgressBar:
    """A one-line terminal progress bar fed by ComfyUI's global progress hook.

    On a terminal the line is redrawn in place; otherwise (logs, CI) a line is written every 10 %.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.label = ""
        self.started = time.perf_counter()
        self.last_tenth = -1
        self.updates = 0
        self.open_line = False

    def start(self, label: str) -> None:
        self.finish()
        self.label, self.started, self.last_tenth = label, time.perf_counter(), -1

    def hook(self, value: int, total: int, preview: Any = None, node_id: str | None = None) -> None:
        self.updates += 1
        if not self.enabled or not total:
            return
        fraction = min(max(value / total, 0.0), 1.0)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / value * (total - value) if value else 0.0
        filled = round(fraction * self.WIDTH)
        text = f"{self.label} |{'#' * filled}{'.' * (self.WIDTH - filled)}| {value}/{total} {elapsed:.0f}s<{eta:.0f}s"
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self.open_line = value < total
            if not self.open_line:
                self.stream.write("\n")
            self.stream.flush()
            return
        tenth = int(fraction * 10)
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            self.stream.write(text + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


@dataclass
class RunResult:
    ok: bool
    message: str = ""
    path: str | None = None
    final_loss: float | None = None
    seconds: float = 0.0
    bad_input: bool = False


def _execution_error(server: ServerStub, executor: Any) -> str:
    for event, data in list(server.messages) + list(getattr(executor, "status_messages", [])):
        if event == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
        if event == "execution_interrupted":
            return "interrupted"
    return "ComfyUI reported a failure without an error message"


def _format_node_errors(error: Any, node_errors: dict[str, Any]) -> str:
    parts = []
    for node_id, entry in node_errors.items():
        for err in entry.get("errors", []):
            parts.append(f"{entry.get('class_type')} (node {node_id}): {err.get('message')}: {err.get('details')}")
    if not parts and isinstance(error, dict):
        parts.append(f"{error.get('message')}: {error.get('details')}")
    return "; ".join(parts) or str(error)


class Runner:
    """One PromptExecutor for the whole batch, so the checkpoint is loaded once (ComfyUI's classic cache)."""

    def __init__(self, progress: ProgressBar, checkpoint_loader_override: CheckpointLoaderOverride | None = None) -> None:
        import execution

        self.server = ServerStub()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        self.progress = progress
        self.override = checkpoint_loader_override

    @contextmanager
    def _host_hooks(self) -> Iterator[None]:
        import comfy.utils

        import nodes

        previous_hook = comfy.utils.PROGRESS_BAR_HOOK
        original_loader = nodes.NODE_CLASS_MAPPINGS[CKPT_LOADER]
        comfy.utils.set_progress_bar_global_hook(self.progress.hook)
        if self.override is not None:
            nodes.NODE_CLASS_MAPPINGS[CKPT_LOADER] = _override_loader(self.override, original_loader)
        try:
            yield
        finally:
            comfy.utils.set_progress_bar_global_hook(previous_hook)
            nodes.NODE_CLASS_MAPPINGS[CKPT_LOADER] = original_loader
            self.progress.finish()

    def run(self, prompt: dict[str, Any], label: str) -> RunResult:
        import execution

        started = time.perf_counter()
        prompt_id = str(uuid.uuid4())
        with self._host_hooks():
            ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
            if not ok:
                return RunResult(False, "the graph does not validate: " + _format_node_errors(error, node_errors),
                                 seconds=time.perf_counter() - started, bad_input=True)
            self.server.messages.clear()
            self.progress.start(label)
            self.executor.execute(prompt, prompt_id, {"client_id": None}, outputs)
        seconds = time.perf_counter() - started
        if not self.executor.success:
            return RunResult(False, _execution_error(self.server, self.executor), seconds=seconds)
        saver = only(prompt, SAVER)
        path = self._output(saver, 0)
        embedding = self._output(only(prompt, TRAINER), 0)
        history = getattr(embedding, "loss_history", None) or []
        loss = float(history[-1][0]) if history else None
        return RunResult(True, path=str(path) if path else None, final_loss=loss, seconds=seconds)

    def _output(self, node_id: str, slot: int) -> Any:
        entry = self.executor.caches.outputs.get(node_id)
        try:
            return entry.outputs[slot][0]
        except (AttributeError, IndexError, TypeError):
            return None


def _override_loader(load: CheckpointLoaderOverride, original: type) -> type:
    """A CheckpointLoaderSimple with the host's inputs (same validation) that returns `load(ckpt_name)`."""

    class CheckpointLoaderOverride:
        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return original.INPUT_TYPES()

        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load_checkpoint"
        CATEGORY = "loaders"

        def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
            return tuple(load(ckpt_name))  # type: ignore[return-value]

    return CheckpointLoaderOverride
