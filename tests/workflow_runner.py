"""Helpers that treat the shipped workflows as ComfyUI does: UI -> API conversion, validation, execution.

The UI -> API conversion here is written independently of scripts/make_ui_workflows.py (it reads the
node classes' `INPUT_TYPES()` rather than the /object_info entries the generator uses), so converting
a generated UI file back and comparing it with the API file checks the generator for real.
Everything needs a booted host (the `pack` fixture).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# editor-only nodes: the frontend never sends them to the server
VIRTUAL_NODES = {"Note", "MarkdownNote"}
# editor-only nodes that would need link rerouting or value propagation (not used by the shipped files)
UNSUPPORTED_VIRTUAL_NODES = {"Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}


# ---------------------------------------------------------------------------------------------
# Node definitions


def node_class(class_type: str) -> Any:
    import nodes

    try:
        return nodes.NODE_CLASS_MAPPINGS[class_type]
    except KeyError:
        raise KeyError(f"ComfyUI has no node type {class_type!r}") from None


def type_name(kind: Any) -> str:
    """A socket type as the editor writes it ("COMBO" for option lists; IO enum members as their value)."""
    if isinstance(kind, (list, tuple)):
        return "COMBO"
    return str(getattr(kind, "value", kind))


def defined_inputs(class_type: str) -> list[tuple[str, tuple, bool]]:
    """(name, spec, optional) for every required then optional input; hidden inputs are left out."""
    spec = node_class(class_type).INPUT_TYPES()
    return [(name, tuple(s), section == "optional") for section in ("required", "optional") for name, s in spec.get(section, {}).items()]


def _options(spec: tuple) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: tuple) -> bool:
    return type_name(spec[0]) in WIDGET_TYPES and not _options(spec).get("forceInput", False)


def widget_layout(class_type: str) -> list[tuple[str, str]]:
    """What each entry of a UI node's `widgets_values` is: (input name, "value" | "control_after_generate" | "upload").

    The editor adds a seed control after INT widgets with control_after_generate (and after any INT named
    seed/noise_seed) and an upload button after image_upload combos; both are serialized.
    """
    layout: list[tuple[str, str]] = []
    for name, spec, _optional in defined_inputs(class_type):
        if not is_widget(spec):
            continue
        options = _options(spec)
        layout.append((name, "value"))
        if options.get("control_after_generate") or (type_name(spec[0]) == "INT" and name in SEED_NAMES):
            layout.append((name, "control_after_generate"))
        if options.get("image_upload"):
            layout.append((name, "upload"))
    return layout


def output_types(class_type: str) -> list[str]:
    return [type_name(t) for t in node_class(class_type).RETURN_TYPES]


def display_name(class_type: str) -> str:
    import nodes

    return nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type)


# ---------------------------------------------------------------------------------------------
# UI format -> API format (what the editor's "Queue" does)


def ui_to_api(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The API prompt of a UI-format workflow; raises ValueError on anything inconsistent."""
    if not isinstance(workflow.get("nodes"), list) or not isinstance(workflow.get("links"), list):
        raise ValueError("not a UI-format workflow (needs 'nodes' and 'links' lists)")
    links = {link[0]: link for link in workflow["links"]}
    if len(links) != len(workflow["links"]):
        raise ValueError("duplicate link ids")
    prompt: dict[str, dict[str, Any]] = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        class_type = node["type"]
        if class_type in VIRTUAL_NODES:
            continue
        if class_type in UNSUPPORTED_VIRTUAL_NODES:
            raise NotImplementedError(f"node {node['id']}: {class_type} nodes are not supported")
        mode = node.get("mode", 0)
        if mode == 2:  # muted
            continue
        if mode != 0:
            raise NotImplementedError(f"node {node['id']}: mode {mode} (bypass) is not supported")
        prompt[str(node["id"])] = _node_to_api(node, links)
    return prompt


def _node_to_api(node: dict[str, Any], links: dict[int, list[Any]]) -> dict[str, Any]:
    class_type, where = node["type"], f"node {node['id']} ({node['type']})"
    linked: dict[str, list[Any]] = {}
    for slot, entry in enumerate(node.get("inputs", [])):
        if entry.get("link") is None:
            continue
        link_id, source, source_slot, target, target_slot, _kind = links[entry["link"]]
        if (target, target_slot) != (node["id"], slot):
            raise ValueError(f"{where}: link {link_id} says it ends at {target}:{target_slot}, the node has it on slot {slot}")
        if entry["name"] in linked:
            raise ValueError(f"{where}: input {entry['name']} is linked twice")
        linked[entry["name"]] = [str(source), source_slot]
    values = node.get("widgets_values", [])
    if not isinstance(values, list):
        raise ValueError(f"{where}: widgets_values must be a list")
    layout = widget_layout(class_type)
    if len(values) != len(layout):
        raise ValueError(f"{where}: {len(values)} widget values for {len(layout)} widgets {layout}")
    inputs: dict[str, Any] = {name: value for (name, what), value in zip(layout, values, strict=True) if what == "value"}
    for name, _spec, _optional in defined_inputs(class_type):
        if name in linked:
            inputs[name] = linked.pop(name)
    if linked:
        raise ValueError(f"{where}: links into inputs the node does not have: {sorted(linked)}")
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": node.get("title") or display_name(class_type)}}


def link_problems(workflow: dict[str, Any]) -> list[str]:
    """Inconsistencies between the links table, the nodes' slot lists and the node definitions."""
    problems: list[str] = []
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        src, dst = by_id.get(source), by_id.get(target)
        if src is None or dst is None:
            problems.append(f"link {link_id}: unknown node {source if src is None else target}")
            continue
        if link_id not in src["outputs"][source_slot]["links"]:
            problems.append(f"link {link_id}: missing from node {source} output {source_slot}")
        if dst["inputs"][target_slot].get("link") != link_id:
            problems.append(f"link {link_id}: node {target} input {target_slot} does not point back")
        produced = output_types(src["type"])[source_slot]
        if kind != produced or src["outputs"][source_slot]["type"] != produced:
            problems.append(f"link {link_id}: type {kind}, but {src['type']} output {source_slot} is {produced}")
        specs = {name: spec for name, spec, _ in defined_inputs(dst["type"])}
        name = dst["inputs"][target_slot]["name"]
        accepted = type_name(specs[name][0]) if name in specs else None
        if accepted not in (kind, "*") and not (accepted == "COMBO" and kind in ("COMBO", "*")):
            problems.append(f"link {link_id}: {dst['type']}.{name} takes {accepted}, gets {kind}")
    known = {link[0] for link in workflow["links"]}
    for node in workflow["nodes"]:
        for entry in node.get("inputs", []):
            if entry.get("link") is not None and entry["link"] not in known:
                problems.append(f"node {node['id']} input {entry['name']}: link {entry['link']} is not in the links table")
    return problems


def widget_value_problems(prompt: dict[str, Any]) -> list[str]:
    """Widget values outside their definitions: combo options, min/max, value types.

    ComfyUI 0.3.75's validate_prompt checks combo values only for V1-style option lists, not for V3
    `io.Combo` inputs (served as ("COMBO", {"options": [...]})), so this checks those too.
    """
    problems: list[str] = []
    expected_types = {"INT": (int,), "FLOAT": (int, float), "STRING": (str,), "BOOLEAN": (bool,)}
    for node_id, node in prompt.items():
        for name, spec, _optional in defined_inputs(node["class_type"]):
            value = node["inputs"].get(name)
            if value is None or not is_widget(spec) or isinstance(value, list):
                continue
            where, options, kind = f"node {node_id} ({node['class_type']}).{name}", _options(spec), type_name(spec[0])
            if kind == "COMBO":
                choices = spec[0] if isinstance(spec[0], (list, tuple)) else options.get("options", [])
                if value not in choices:
                    problems.append(f"{where}: {value!r} is not one of {list(choices)[:20]}")
                continue
            if not isinstance(value, expected_types[kind]) or (kind != "BOOLEAN" and isinstance(value, bool)):
                problems.append(f"{where}: {value!r} is not a {kind}")
                continue
            if "min" in options and kind in ("INT", "FLOAT") and value < options["min"]:
                problems.append(f"{where}: {value} is below the minimum {options['min']}")
            if "max" in options and kind in ("INT", "FLOAT") and value > options["max"]:
                problems.append(f"{where}: {value} is above the maximum {options['max']}")
    return problems


# ---------------------------------------------------------------------------------------------
# Validation and execution


def validate(prompt: dict[str, Any]) -> tuple[bool, Any, list[str], dict[str, Any]]:
    """ComfyUI's own check of a prompt: (ok, error, output node ids, node_errors)."""
    import execution

    return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


class ServerStub:
    """What PromptExecutor needs of PromptServer; records every message it would send to the browser."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.messages: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        # newer hosts call more PromptServer methods (progress handlers, model trackers): accept and ignore them
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


def execute(prompt: dict[str, Any]) -> Any:
    """Validates and runs a prompt; returns the PromptExecutor (check `.success`, `.status_messages`,
    `.history_result`). Raises AssertionError when the prompt does not validate."""
    import execution

    ok, error, outputs, node_errors = validate(prompt)
    if not ok:
        raise AssertionError(f"prompt does not validate: {error}; {node_errors}")
    executor = execution.PromptExecutor(
        ServerStub(), cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
    )
    executor.execute(prompt, str(uuid.uuid4()), {"client_id": None}, outputs)
    return executor


def failure(executor: Any) -> str:
    """The execution error the executor recorded, readable in an assertion message."""
    for event, data in executor.status_messages:
        if event == "execution_error":
            return f"{data['node_type']} (node {data['node_id']}): {data['exception_type']}: {data['exception_message']}\n" + "".join(
                data["traceback"]
            )
    return "no execution_error message"


def node_output(executor: Any, node_id: str, slot: int) -> Any:
    """The value a node produced on one output in the executor's last run (first list item)."""
    cache = executor.caches.outputs
    # newer hosts (0.33) made the cache's get() a coroutine and added a synchronous get_local()
    entry = cache.get_local(node_id) if hasattr(cache, "get_local") else cache.get(node_id)
    if inspect.isawaitable(entry):
        entry = asyncio.run(entry)
    if entry is None:
        raise KeyError(f"node {node_id} has no cached outputs")
    return entry.outputs[slot][0]


def saved_images(executor: Any, node_id: str) -> list[Path]:
    """Files a SaveImage/PreviewImage node reported in the run's history outputs."""
    import folder_paths

    folders = {"output": folder_paths.get_output_directory(), "temp": folder_paths.get_temp_directory(),
               "input": folder_paths.get_input_directory()}
    images = executor.history_result["outputs"].get(node_id, {}).get("images", [])
    return [Path(folders[i["type"]]) / i.get("subfolder", "") / i["filename"] for i in images]


def nodes_of(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def override(prompt: dict[str, Any], class_type: str, **values: Any) -> list[str]:
    """Sets widget values on every node of one type (in place); returns those nodes' ids."""
    found = nodes_of(prompt, class_type)
    if not found:
        raise KeyError(f"no {class_type} node in the prompt")
    for node_id in found:
        prompt[node_id]["inputs"].update(values)
    return found


# ---------------------------------------------------------------------------------------------
# Test doubles for the host: tiny checkpoints and an input photo


@contextmanager
def tiny_checkpoint_loader(models: Any, ckpt_names: Iterable[str]) -> Iterator[type]:
    """Replaces CheckpointLoaderSimple for the duration: same input, lists `ckpt_names`, returns the tiny models."""
    import nodes

    names = sorted(set(ckpt_names))

    class TinyCheckpointLoader:
        @classmethod
        def INPUT_TYPES(cls) -> dict[str, Any]:
            return {"required": {"ckpt_name": (names,)}}

        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load_checkpoint"
        CATEGORY = "loaders"

        def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
            return (models.model, models.clip, models.vae)

    original = nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"]
    nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"] = TinyCheckpointLoader
    try:
        yield TinyCheckpointLoader
    finally:
        nodes.NODE_CLASS_MAPPINGS["CheckpointLoaderSimple"] = original


ASTRONAUT_HEAD = (144, 43, 304, 203)  # a square around the face in skimage.data.astronaut() (512x512)


def install_face_image(name: str = "face.png", size: int = 128) -> Path:
    """A real face photo (Eileen Collins, skimage's astronaut) as NAME in ComfyUI's input folder."""
    import folder_paths
    from PIL import Image
    from skimage import data

    path = Path(folder_paths.get_input_directory()) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).crop(ASTRONAUT_HEAD).resize((size, size), Image.LANCZOS).save(path)
    return path
