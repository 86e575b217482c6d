"""API-format workflows -> the editor's UI format (nodes, links, widgets_values), from a booted ComfyUI's
node definitions: input order, which inputs are sockets and which widgets, and the extra widget values the
editor stores (seed control, upload button). Used by scripts/make_ui_workflows.py.
"""

from __future__ import annotations

from typing import Any

# `control_after_generate` values the UI stores after seed widgets: a fixed trainer seed keeps the trained
# embedding (and LoRA) cached while prompts change; the samplers draw new images on every queue unless a graph
# fixes a node's (api_to_ui's `seed_controls`).
SEED_CONTROL = {"CrossInitTrainer": "fixed", "CrossInitPivotalLora": "fixed"}
DEFAULT_SEED_CONTROL = "randomize"


# ---------------------------------------------------------------------------------------------
# Node definitions, as ComfyUI's /object_info serves them to the editor

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def plain(value: Any) -> Any:
    """IO enum members (str subclasses) as plain strings, so they compare and serialize as JSON does."""
    return str(value.value) if hasattr(value, "value") and isinstance(value, str) else value


def node_info(class_type: str) -> dict[str, Any]:
    """The /object_info entry of one node (the logic of server.PromptServer's `node_info`)."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 nodes
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


class Slot:
    """One input of a node definition, classified as the editor does (socket or widget)."""

    def __init__(self, name: str, spec: tuple | list, optional: bool) -> None:
        kind = spec[0]
        self.name = name
        self.options: dict[str, Any] = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
        self.optional = optional
        self.is_combo = isinstance(kind, list) or plain(kind) == "COMBO"
        self.type = "COMBO" if self.is_combo else plain(kind)
        self.combo_options = kind if isinstance(kind, list) else list(self.options.get("options", []))
        self.is_widget = (self.is_combo or self.type in WIDGET_TYPES) and not self.options.get("forceInput", False)

    def extra_widget_values(self, class_type: str, seed_control: str | None = None) -> list[Any]:
        """Values of the widgets the editor adds right after this one (seed control, upload button)."""
        extra: list[Any] = []
        control = self.options.get("control_after_generate")
        if self.is_widget and (control or (self.type == "INT" and self.name in ("seed", "noise_seed"))):
            extra.append(seed_control or SEED_CONTROL.get(class_type, DEFAULT_SEED_CONTROL))
        if self.options.get("image_upload"):
            extra.append("image")
        for upload in ("video_upload", "audio_upload", "animated_image_upload"):
            if self.options.get(upload):
                raise NotImplementedError(f"{class_type}.{self.name}: {upload} widgets are not supported by this generator")
        return extra

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.is_combo:
            return self.combo_options[0] if self.combo_options else ""
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[self.type]


def input_slots(info: dict[str, Any]) -> list[Slot]:
    """Required then optional inputs in definition order; hidden inputs are not slots."""
    slots = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            slots.append(Slot(name, info["input"][section][name], optional=section == "optional"))
    return slots


# ---------------------------------------------------------------------------------------------
# API format -> UI format

SOCKET_ROW, WIDGET_ROW, MULTILINE_ROW, TITLE_PAD = 22, 26, 96, 10
IMAGE_NODES = {"LoadImage", "PreviewImage", "SaveImage"}
TEXT_PREVIEW_NODES = {"PreviewAny"}
# Nodes whose outputs depend on the host: ComfyUI 0.33 gave SaveImage and PreviewImage an IMAGE output that
# 0.3.75 lacks (and PreviewAny a STRING output). The files list no outputs for them, so they are the same whichever host generates them and
# each editor shows the node as its own host defines it: frontend 1.49 adds a definition's outputs that a
# file lacks, while 1.32 keeps every output a file lists (a dead socket where the host has none).
HOST_DEPENDENT_OUTPUTS = {"PreviewAny", "PreviewImage", "SaveImage"}
GAP_X, GAP_Y, ORIGIN = 70, 50, (40, 80)
# groups: one per stage, left to right, none overlapping; the title bar above the stage's nodes
GROUP_PAD, GROUP_TITLE, GROUP_GAP, GROUP_FONT = 20, 50, 60, 24
GROUP_COLOR = "#3f789e"
# a node's title must fit its width (LiteGraph cuts it off with an ellipsis): about this many pixels per character
TITLE_CHAR_PX, TITLE_EXTRA_PX = 9, 60
# the zoom a workflow opens at (the editor restores extra.ds): every title and widget label readable
OPEN_SCALE = 0.8
NOTE_WIDTH = 320  # the first column's width (the checkpoint loader), so the note does not reach the second
NOTE_LINE_PX, NOTE_LINE_CHARS = 18, 36


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _topological_order(api: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            raise ValueError(f"cycle through node {node_id}")
        state[node_id] = 1
        for value in api[node_id]["inputs"].values():
            if _is_link(value):
                visit(value[0])
        state[node_id] = 2
        order.append(node_id)

    for node_id in sorted(api, key=int):
        visit(node_id)
    return order


def _columns(api: dict[str, dict[str, Any]], order: list[str]) -> dict[str, int]:
    """Left-to-right columns: sinks at their longest-path depth, every other node just left of its first consumer."""
    depth: dict[str, int] = {}
    for node_id in order:
        sources = [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
        depth[node_id] = 1 + max((depth[s] for s in sources), default=-1)
    consumers: dict[str, set[str]] = {n: set() for n in api}
    for node_id, node in api.items():
        for value in node["inputs"].values():
            if _is_link(value):
                consumers[value[0]].add(node_id)
    column: dict[str, int] = {}
    for node_id in reversed(order):
        users = consumers[node_id]
        column[node_id] = min(column[u] for u in users) - 1 if users else depth[node_id]
    return column


def _size(class_type: str, slots: list[Slot], n_outputs: int, title: str = "") -> list[int]:
    sockets = sum(1 for s in slots if not s.is_widget)
    height = TITLE_PAD + SOCKET_ROW * max(sockets, n_outputs, 1)
    for slot in slots:
        if slot.is_widget:
            height += MULTILINE_ROW if slot.options.get("multiline") else WIDGET_ROW
            height += WIDGET_ROW * len(slot.extra_widget_values(class_type))
    width = 400 if any(s.options.get("multiline") for s in slots) else 320
    if class_type in IMAGE_NODES:
        height += 280
    if class_type in TEXT_PREVIEW_NODES:  # room for the text the node shows after a run
        width, height = 400, height + 200
    return [max(width, TITLE_CHAR_PX * len(title) + TITLE_EXTRA_PX), height]


def api_to_ui(api: dict[str, dict[str, Any]], note: str | None = None,
              stages: dict[str, str] | None = None, stage_titles: dict[str, str] | None = None,
              seed_controls: dict[str, str] | None = None) -> dict[str, Any]:
    """The editor's workflow JSON (schema version 0.4) for an API-format prompt. `stages` (node id -> stage, in
    `stage_titles`' order) places each stage's nodes in a block of their own, left to right, framed by a group.
    `seed_controls` (node id -> "fixed", ...) overrides SEED_CONTROL for single nodes."""
    seed_controls = seed_controls or {}
    order = _topological_order(api)
    column = _columns(api, order)
    links: list[list[Any]] = []
    ui_nodes: dict[str, dict[str, Any]] = {}
    infos = {node_id: node_info(node["class_type"]) for node_id, node in api.items()}
    for node_id in sorted(api, key=int):
        node, info = api[node_id], infos[node_id]
        class_type = node["class_type"]
        slots = input_slots(info)
        names = {s.name for s in slots}
        unknown = sorted(set(node["inputs"]) - names)
        if unknown:
            raise ValueError(f"node {node_id} ({class_type}): no inputs named {unknown}")
        outputs = [
            {"name": plain(name), "type": plain(kind), "links": [], "slot_index": i}
            for i, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))
            if class_type not in HOST_DEPENDENT_OUTPUTS
        ]
        ui_nodes[node_id] = {
            "id": int(node_id),
            "type": class_type,
            "pos": [0, 0],
            "size": _size(class_type, slots, len(outputs), node["_meta"]["title"]),
            "flags": {},
            "order": order.index(node_id),
            "mode": 0,
            "inputs": [],
            "outputs": outputs,
            "properties": {"Node name for S&R": class_type},
            "widgets_values": [],
        }
        if node["_meta"]["title"] != info["display_name"]:
            ui_nodes[node_id]["title"] = node["_meta"]["title"]
    # inputs and links, in the order the editor numbers slots: sockets, then widgets converted to inputs
    for node_id in sorted(api, key=int):
        node, ui = api[node_id], ui_nodes[node_id]
        slots = input_slots(infos[node_id])
        sockets = [s for s in slots if not s.is_widget]
        converted = [s for s in slots if s.is_widget and _is_link(node["inputs"].get(s.name))]
        for target_slot, slot in enumerate(sockets + converted):
            value = node["inputs"].get(slot.name)
            entry: dict[str, Any] = {"name": slot.name, "type": slot.type}
            if slot.is_widget:
                entry["widget"] = {"name": slot.name}
            entry["link"] = None
            if value is not None:
                if not _is_link(value):
                    raise ValueError(f"node {node_id}: socket input {slot.name} needs a link, got {value!r}")
                source, source_slot = value
                if source_slot >= len(ui_nodes[source]["outputs"]):
                    raise ValueError(f"node {node_id} ({node['class_type']}): input {slot.name} links output {source_slot} of node "
                                     f"{source} ({api[source]['class_type']}), which this file does not list: "
                                     "link from another node (see HOST_DEPENDENT_OUTPUTS)")
                link_id = len(links) + 1
                link_type = ui_nodes[source]["outputs"][source_slot]["type"]
                links.append([link_id, int(source), source_slot, int(node_id), target_slot, link_type])
                ui_nodes[source]["outputs"][source_slot]["links"].append(link_id)
                entry["link"] = link_id
            elif not slot.optional:
                raise ValueError(f"node {node_id} ({node['class_type']}): required input {slot.name} is not connected")
            ui["inputs"].append(entry)
        for slot in slots:
            if not slot.is_widget:
                continue
            value = node["inputs"].get(slot.name, slot.default())
            ui["widgets_values"].append(slot.default() if _is_link(value) else value)
            ui["widgets_values"].extend(slot.extra_widget_values(node["class_type"], seed_controls.get(node_id)))
    groups: list[dict[str, Any]] = []
    if stages and stage_titles:
        groups = _place_stages(api, ui_nodes, stages, stage_titles)
    else:
        _place(ui_nodes, column)
    nodes_out = [ui_nodes[n] for n in sorted(ui_nodes, key=int)]
    if note is not None:
        nodes_out.append(_note(len(nodes_out) + 1, note, nodes_out))
    return {
        "last_node_id": max(n["id"] for n in nodes_out),
        "last_link_id": len(links),
        "nodes": nodes_out,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": OPEN_SCALE, "offset": [0, 0]}},
        "version": 0.4,
    }


def _place(ui_nodes: dict[str, dict[str, Any]], column: dict[str, int], x: int = ORIGIN[0]) -> None:
    first = min(column[n] for n in ui_nodes)
    for col in range(first, max(column[n] for n in ui_nodes) + 1):
        members = sorted((n for n in ui_nodes if column[n] == col), key=int)
        y = ORIGIN[1]
        for node_id in members:
            ui_nodes[node_id]["pos"] = [x, y]
            y += ui_nodes[node_id]["size"][1] + GAP_Y
        x += max((ui_nodes[n]["size"][0] for n in members), default=0) + GAP_X


def _place_stages(api: dict[str, dict[str, Any]], ui_nodes: dict[str, dict[str, Any]], stages: dict[str, str],
                  titles: dict[str, str]) -> list[dict[str, Any]]:
    """Each stage in columns of its own (its internal links left to right), stages left to right, a group around each."""
    groups = []
    x = ORIGIN[0]
    for stage, title in titles.items():
        members = [n for n in sorted(api, key=int) if stages[n] == stage]
        if not members:
            continue
        sub = {n: {**api[n], "inputs": {k: v for k, v in api[n]["inputs"].items() if not _is_link(v) or v[0] in members}}
               for n in members}
        column = _columns(sub, _topological_order(sub))
        block = {n: ui_nodes[n] for n in members}
        _place(block, column, x)
        left = min(n["pos"][0] for n in block.values()) - GROUP_PAD
        top = ORIGIN[1] - GROUP_TITLE
        right = max(n["pos"][0] + n["size"][0] for n in block.values()) + GROUP_PAD
        bottom = max(n["pos"][1] + n["size"][1] for n in block.values()) + GROUP_PAD
        groups.append({"title": title, "bounding": [left, top, right - left, bottom - top], "color": GROUP_COLOR,
                       "font_size": GROUP_FONT, "flags": {}})
        x = right + GROUP_GAP + GROUP_PAD
    return groups


def _note_lines(text: str) -> int:
    """Lines the note's text takes at NOTE_WIDTH (about NOTE_LINE_CHARS characters a line, wrapped at words)."""
    return sum(max(1, -(-len(paragraph) // NOTE_LINE_CHARS)) for paragraph in text.split("\n"))


def _note(node_id: int, text: str, placed: list[dict[str, Any]]) -> dict[str, Any]:
    """A Note under the first column (editor-only: it has no class in ComfyUI and is never executed)."""
    first_x = min(n["pos"][0] for n in placed)
    bottom = max(n["pos"][1] + n["size"][1] for n in placed if n["pos"][0] == first_x)
    return {
        "id": node_id,
        "type": "Note",
        "pos": [first_x, bottom + GAP_Y],
        "size": [NOTE_WIDTH, max(360, NOTE_LINE_PX * _note_lines(text) + 40)],  # the whole text, no scrolling
        "flags": {},
        "order": len(placed),
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "properties": {"text": ""},
        "widgets_values": [text],
        "color": "#432",
        "bgcolor": "#653",
    }
