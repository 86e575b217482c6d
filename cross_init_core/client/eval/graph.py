"""The evaluation's graph for one prompt, as plain JSON: the shipped workflows/api/cross_init_eval.json (or a
--workflow with the same node types) with the prompt, the embedding, the reference photos and the sampler
settings filled in, and for a token + LoRA run the LoRA on the sampler's MODEL; the probes that check the reference
photos, the embedding and the LoRA against the checkpoint; and the scores read back from a run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..prompt_graph import (
    EMBEDDING_LOADER,
    ENCODER,
    IDENTITY,
    LORA_LOADER,
    PROMPT_SCORE,
    TEXT_PREVIEW,
    GraphSettings,
    checkpoint_loaders,
    downstream,
    is_link,
    load_photo_list,
    nodes_of,
    only,
    reads_mask,
    start_prompt,
    upstream,
)

REQUIRED_NODES = (EMBEDDING_LOADER, ENCODER, "KSampler", "EmptyLatentImage", "SaveImage", "LoadImage", IDENTITY,
                  PROMPT_SCORE)
FAMILY_PROBE = "family_probe"  # the text preview that ends the family check's graph
LORA_NODE = "cross_init_eval_lora"  # the node a token + LoRA run adds (the workflow file has no LoRA)
LORA_PROBE = "lora_probe"  # the text preview that ends the LoRA check's graph


def checkpoint_loader_type(workflow: dict[str, Any]) -> str | None:
    """The class of the workflow's one checkpoint loader (the node with a ckpt_name input); None unless exactly one."""
    loaders = checkpoint_loaders(workflow)
    return str(workflow[loaders[0]].get("class_type")) if len(loaders) == 1 else None


def _set_text(prompt: dict[str, Any], node_id: str, keys: tuple[str, ...], text: str) -> None:
    """Sets a node's text: the text node linked into the first of `keys` that has one (the shipped eval workflow's
    one prompt node, typed once), else the widget, the last of `keys`."""
    for key in keys:
        value = prompt[node_id]["inputs"].get(key)
        if is_link(value) and "value" in prompt[value[0]]["inputs"]:
            prompt[value[0]]["inputs"]["value"] = text
            return
    prompt[node_id]["inputs"][keys[-1]] = text


@dataclass
class EvalGraph(GraphSettings):
    """The evaluation's settings in its graph (beside the checkpoint, the first prompt's seed, steps and resolution)."""

    embedding: str = ""  # the server's name for it
    references: list[str] = field(default_factory=list)  # uploaded photo names (relative to the server's input folder)
    per_prompt: int = 1
    backend: str = "auto"
    clip_model: str | None = None  # None: no prompt score
    prefix: str = "cross_init_eval/run"
    lora: str | None = None  # the server's name of a LoRA file for the MODEL; None: the token alone
    lora_strength: float = 1.0


def build_prompt(workflow: dict[str, Any], settings: EvalGraph, text: str, index: int) -> dict[str, Any]:
    """The API prompt for prompt number `index` (0-based): N images of `text` with the embedding, scored."""
    prompt = start_prompt(workflow, settings)
    for loader in nodes_of(prompt, EMBEDDING_LOADER):  # (input_problems requires exactly one in a workflow file)
        prompt[loader]["inputs"]["name"] = settings.embedding
    _set_text(prompt, only(prompt, ENCODER), ("prompt", "text"), text)
    latent = prompt[only(prompt, "EmptyLatentImage")]["inputs"]
    latent["batch_size"] = settings.per_prompt
    if settings.resolution is not None:
        latent["width"] = latent["height"] = settings.resolution
    sampler = prompt[only(prompt, "KSampler")]["inputs"]
    sampler["seed"] = settings.seed + index
    if settings.steps is not None:
        sampler["steps"] = settings.steps
    prompt[only(prompt, "SaveImage")]["inputs"]["filename_prefix"] = f"{settings.prefix}/p{index:02d}"
    prompt[only(prompt, IDENTITY)]["inputs"]["backend"] = settings.backend
    scorer = only(prompt, PROMPT_SCORE) if nodes_of(prompt, PROMPT_SCORE) else None
    if settings.clip_model is None:
        if scorer is not None:
            for node_id in downstream(prompt, scorer):
                del prompt[node_id]
    else:
        if scorer is None:
            raise ValueError(f"the workflow has no {PROMPT_SCORE} node")
        prompt[scorer]["inputs"]["model"] = settings.clip_model
        _set_text(prompt, scorer, ("prompts", "prompt"), text)
    _reference_photos(prompt, settings.references)
    if settings.lora is not None:
        _apply_lora(prompt, settings.lora, settings.lora_strength)
    return prompt


def _apply_lora(prompt: dict[str, Any], lora: str, strength: float) -> None:
    """The LoRA on the sampler's MODEL, by the pack's Load LoRA + Token (it refuses a LoRA whose modules do not fit the
    model, where the stock LoraLoader only logs and samples without them). Only its MODEL output is used: the prompt
    is still encoded by the checkpoint's own CLIP with the --embedding token, exactly as in the token-only run."""
    sampler = only(prompt, "KSampler")
    model = prompt[sampler]["inputs"].get("model")
    clip = prompt[only(prompt, ENCODER)]["inputs"].get("clip")
    if not is_link(model) or not is_link(clip):
        raise ValueError(f"the workflow's KSampler model and {ENCODER} clip must be links to apply --lora")
    prompt[LORA_NODE] = {"class_type": LORA_LOADER, "_meta": {"title": "LoRA (CLI)"},
                         "inputs": {"model": list(model), "clip": list(clip), "lora_name": lora, "strength": strength,
                                    "token": ""}}
    for node_id, node in prompt.items():  # every reader of that MODEL (the sampler, and any other in a --workflow)
        if node_id != LORA_NODE:
            node["inputs"].update({key: [LORA_NODE, 0] for key, value in node["inputs"].items() if value == model})


def lora_prompt(workflow: dict[str, Any], settings: EvalGraph) -> dict[str, Any]:
    """The checkpoint with the LoRA loaded and nothing sampled: Load LoRA + Token refuses, in seconds and before any
    image, a file that is no LoRA, has no bundled token, or whose modules match or fit no layer of the model (a LoRA
    of another model family)."""
    if settings.lora is None:
        raise ValueError("lora_prompt needs settings.lora")
    prompt = build_prompt(workflow, settings, "", 0)
    keep = upstream(prompt, [LORA_NODE])
    probe = {k: v for k, v in prompt.items() if k in keep}
    probe[LORA_PROBE] = {"class_type": TEXT_PREVIEW, "inputs": {"source": [LORA_NODE, 0]}, "_meta": {"title": "LoRA check"}}
    return probe


def _reference_photos(prompt: dict[str, Any], references: list[str]) -> None:
    """The identity score's LoadImage becomes the pack's Load Photos with every reference photo: an image list, each
    photo whole at its own size and upright (the stock ImageBatch would crop later photos to the first one's shape)."""
    identity = only(prompt, IDENTITY)
    link = prompt[identity]["inputs"]["reference"]
    if not is_link(link) or prompt[link[0]]["class_type"] != "LoadImage":
        raise ValueError(f"the workflow's {IDENTITY} must take its reference from a LoadImage node")
    if reads_mask(prompt, link[0]):
        raise ValueError(f"the workflow reads the mask of the LoadImage that gives {IDENTITY} its reference; give that "
                         "node no other use")
    load_photo_list(prompt, link[0], references, "Reference photos (CLI)")


def family_prompt(workflow: dict[str, Any], settings: EvalGraph, text: str) -> dict[str, Any]:
    """The checkpoint's CLIP encoding `text` with the embedding, and nothing else: the encoder refuses an embedding of
    another model family (an SDXL file for an SD 1.5 checkpoint) in seconds, before any image is generated."""
    prompt = build_prompt(workflow, settings, text, 0)
    encoder = only(prompt, ENCODER)
    keep = upstream(prompt, [encoder])
    probe = {k: v for k, v in prompt.items() if k in keep}
    probe[FAMILY_PROBE] = {"class_type": TEXT_PREVIEW, "inputs": {"source": [encoder, 0]}, "_meta": {"title": "family check"}}
    return probe


def probe_prompt(workflow: dict[str, Any], references: list[str], backend: str) -> dict[str, Any]:
    """The reference photos scored against themselves: checks the identity backend runs and every reference
    photo shows a face, in seconds and before any image is generated (one report per photo: the score node maps
    its `images` list item by item)."""
    prompt = build_prompt(workflow, EvalGraph(ckpt_name="", references=references, backend=backend), "", 0)
    identity = only(prompt, IDENTITY)
    reference = prompt[identity]["inputs"]["reference"]
    prompt[identity]["inputs"]["images"] = list(reference)
    keep = upstream(prompt, [identity])
    probe = {k: v for k, v in prompt.items() if k in keep}
    probe["probe_report"] = {"class_type": TEXT_PREVIEW, "inputs": {"source": [identity, 1]}, "_meta": {"title": "probe"}}
    return probe


@dataclass
class Outcome:
    images: list[dict[str, Any]]  # SaveImage entries: filename, subfolder, type
    identity: dict[str, Any] | None
    prompt: dict[str, Any] | None


def read_outcome(prompt: dict[str, Any], outputs: dict[str, Any]) -> Outcome:
    """The saved images and the two score reports from a run's /history outputs (the reports are what the
    Preview as Text nodes on the score nodes' `report` outputs show)."""
    saver = only(prompt, "SaveImage")
    images = list((outputs.get(saver) or {}).get("images", []))
    reports: dict[str, dict[str, Any] | None] = {IDENTITY: None, PROMPT_SCORE: None}
    for class_type in reports:
        sources = nodes_of(prompt, class_type)
        if not sources:
            continue
        for node_id in nodes_of(prompt, TEXT_PREVIEW):
            if prompt[node_id]["inputs"].get("source") == [sources[0], 1]:
                text = (outputs.get(node_id) or {}).get("text") or []
                if text:
                    reports[class_type] = json.loads(text[0])
        if reports[class_type] is None:
            raise ValueError(f"the run reported no {class_type} report (a {TEXT_PREVIEW} node on its report output is needed)")
    return Outcome(images, reports[IDENTITY], reports[PROMPT_SCORE])
