"""ComfyUI API prompts as plain JSON ({node_id: {"class_type", "inputs", "_meta"}}), for the terminal commands:
the node types they look for, the shipped workflows, and the edits both commands make.

Nodes are found by class_type, never by id, so a user's own --workflow with the same node types works too.
Nothing here imports ComfyUI.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Prompt = dict[str, Any]

PACK_DIR = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = PACK_DIR / "workflows" / "api"  # the shipped API-format workflows

# the node types the commands look for
CKPT_LOADER = "CheckpointLoaderSimple"
PHOTO_LOADER = "CrossInitLoadPhotos"  # photo files -> an IMAGE list, each whole and upright
FACE_PREP = "CrossInitFacePrep"
TRAINER = "CrossInitTrainer"
SAVER = "CrossInitSaveEmbedding"
EMBEDDING_LOADER = "CrossInitLoadEmbedding"
ENCODER = "CrossInitCLIPTextEncode"
IDENTITY = "CrossInitIdentityScore"
PROMPT_SCORE = "CrossInitPromptScore"
LORA_LOADER = "CrossInitLoadLoraToken"  # a LoRA file from models/loras onto the MODEL (refuses one that does not fit)
TEXT_PREVIEW = "PreviewAny"


def is_pack_node(class_type: str) -> bool:
    return class_type.startswith("CrossInit")


def is_link(value: Any) -> bool:
    """Whether an input value is a link [source node id, output index]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def nodes_of(prompt: Prompt, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if isinstance(node, dict) and node.get("class_type") == class_type]


def only(prompt: Prompt, class_type: str) -> str:
    found = nodes_of(prompt, class_type)
    if len(found) != 1:
        raise ValueError(f"the workflow must have exactly one {class_type} node; it has {len(found)}")
    return found[0]


def upstream(prompt: Prompt, roots: list[str]) -> set[str]:
    """`roots` and every node they read from, directly or not."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        todo += [value[0] for value in prompt[node_id]["inputs"].values() if is_link(value)]
    return seen


def downstream(prompt: Prompt, source: str) -> set[str]:
    """`source` and every node that reads from it, directly or not."""
    found = {source}
    changed = True
    while changed:
        changed = False
        for node_id, node in prompt.items():
            if node_id not in found and any(is_link(v) and v[0] in found for v in node["inputs"].values()):
                found.add(node_id)
                changed = True
    return found


def checkpoint_loaders(prompt: Prompt) -> list[str]:
    """The checkpoint loaders: CheckpointLoaderSimple, or any node with a ckpt_name input."""
    return [node_id for node_id, node in prompt.items() if isinstance(node, dict) and "ckpt_name" in node.get("inputs", {})]


def set_checkpoint(prompt: Prompt, ckpt_name: str) -> None:
    """Every checkpoint loader loads `ckpt_name`."""
    for node_id in checkpoint_loaders(prompt):
        prompt[node_id]["inputs"]["ckpt_name"] = ckpt_name


@dataclass
class GraphSettings:
    """What both commands set in their graph: the checkpoint and the seed, and the steps and resolution when given."""

    ckpt_name: str
    seed: int = 0
    steps: int | None = None
    resolution: int | None = None


def start_prompt(workflow: Prompt, settings: GraphSettings) -> Prompt:
    """A copy of `workflow` with every checkpoint loader loading `settings.ckpt_name`: where each command's graph starts."""
    prompt = copy.deepcopy(workflow)
    set_checkpoint(prompt, settings.ckpt_name)
    return prompt


def load_workflow(path: Path) -> Prompt:
    """An API-format workflow file; OSError or ValueError (with the reason) when it cannot be used as one."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(workflow, dict):
        raise ValueError("not an API-format workflow (a JSON object of nodes)")
    return workflow


def load_photo_list(prompt: Prompt, loader: str, photos: list[str], title: str) -> None:
    """The LoadImage `loader` becomes the pack's Load Photos with every photo: an image list, each photo whole at its own
    size and upright, where the stock ImageBatch would crop later photos to the first one's shape. Links to the
    loader's image output stay valid (same id, same slot); its mask output is gone, so callers check nobody reads it."""
    prompt[loader] = {"class_type": PHOTO_LOADER, "inputs": {"files": "\n".join(photos)}, "_meta": {"title": title}}


def reads_mask(prompt: Prompt, loader: str) -> bool:
    """Whether any node reads the mask output of the LoadImage `loader`."""
    return any(value == [loader, 1] for node in prompt.values() for value in node["inputs"].values())
