"""What a server must have before any work, for both commands: it answers, it has every node type the graph uses
(the Cross-Init ones from an up-to-date pack), and the checkpoint. Each node type is asked for once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .comfy_client import ComfyClient, ServerGone, combo_options
from .prompt_graph import CKPT_LOADER, is_pack_node


@dataclass
class ServerNodes:
    """The /object_info of the node types a command asked one server for (None: the server lacks that node)."""

    url: str
    infos: dict[str, dict[str, Any] | None]

    def has(self, class_type: str) -> bool:
        return self.infos.get(class_type) is not None

    def options(self, class_type: str, input_name: str) -> tuple[list[Any] | None, dict[str, Any]]:
        """(combo options or None, widget options) of one input of one node type."""
        return combo_options(self.infos.get(class_type), input_name)

    def files(self, class_type: str, input_name: str) -> list[str]:
        """The model files a loader node offers in its combo `input_name` (its folder's listing); [] without the node."""
        listed, _ = self.options(class_type, input_name)
        return [str(name) for name in listed or []]

    def inputs(self, class_type: str) -> set[str]:
        sections = (self.infos.get(class_type) or {}).get("input") or {}
        return {*sections.get("required", {}), *sections.get("optional", {})}


async def preflight(client: ComfyClient, node_types: Iterable[str], ckpt_name: str, loader: str = CKPT_LOADER,
                    optional: Iterable[str] = ()) -> tuple[ServerNodes, list[str]]:
    """Asks `client`'s server for `node_types` (required), `loader` and `optional` node types; returns what it has
    and the problems (it does not answer; a required node type is missing; `ckpt_name` is not among the
    checkpoint loader's options), each naming the server and the fix."""
    url = client.url
    try:
        await client.system_stats()
        required = set(node_types) | {loader}
        infos = {t: await client.object_info(t) for t in sorted(required | set(optional))}
    except ServerGone as exc:
        return ServerNodes(url, {}), [f"server {url}: not answering ({exc}); start it or leave it out"]
    nodes = ServerNodes(url, infos)
    problems = []
    pack_missing = sorted(t for t in required if is_pack_node(t) and infos[t] is None)
    if pack_missing:
        problems.append(f"server {url}: it lacks the Cross-Init node(s) {', '.join(pack_missing)}; install or update the "
                        "pack there (custom_nodes) and restart it")
    for class_type in sorted(t for t in required if not is_pack_node(t) and infos[t] is None):
        problems.append(f"server {url}: it has no node {class_type!r}, which the workflow uses; update ComfyUI there")
    if infos[loader] is not None:
        checkpoints, _ = nodes.options(loader, "ckpt_name")
        if checkpoints is None or ckpt_name not in checkpoints:
            known = ", ".join(map(str, (checkpoints or [])[:10])) or "none"
            problems.append(f"server {url}: checkpoint {ckpt_name!r} is not in its checkpoints folders (it has: {known}); "
                            "copy it there, or choose one it has")
    return nodes, problems
