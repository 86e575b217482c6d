"""The training graph of one job, as plain JSON: the shipped workflows/api/cross_init_<mode>.json (or a --workflow
with the same node types) with the job's photos, checkpoint, name and settings."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ...common.settings import LEGACY_DETECTORS, PRESETS
from ..prompt_graph import (
    EMBEDDING_LOADER,
    FACE_PREP,
    SAVER,
    TRAINER,
    GraphSettings,
    load_photo_list,
    nodes_of,
    only,
    reads_mask,
    start_prompt,
    upstream,
)
from .lora_graph import LoraGraph, add_lora_stage, lora_graph

log = logging.getLogger(__name__)

CHECKPOINTS_OUTPUT = 2  # the trainer's checkpoints output (a list)


@dataclass
class TrainGraph(GraphSettings):
    """One job's settings in the training graph (beside the checkpoint, seed, steps and resolution)."""

    name: str = ""  # the name the save node writes on the server
    mode: str = "fast"
    overwrite: bool = False
    batch_size: int | None = None
    learning_rate: float | None = None
    samples: bool = False
    face_prep: dict[str, Any] = field(default_factory=dict)
    save_every: int = 0  # the trainer keeps checkpoints; the save node saves the list (NAME-stepNNNN and NAME)
    resume_file: str | None = None  # continue this uploaded file (relative to the input folder) instead of a fresh start
    lora: LoraGraph | None = None  # --lora: the pivotal LoRA stage after the trainer
    token_name: str = ""  # the job's NAME: the token's name bundled in the LoRA file (set per job)


def photo_loader(workflow: dict[str, Any]) -> str:
    """The workflow's one LoadImage (the face photos)."""
    loaders = nodes_of(workflow, "LoadImage")
    if len(loaders) != 1:
        raise ValueError(f"the workflow must have exactly one LoadImage node (the face photos); it has {len(loaders)}")
    return loaders[0]


def photos_stay_whole(workflow: dict[str, Any]) -> bool:
    """Whether the photos reach a Cross-Init Face Prep as an image list (each whole, at its own size): a face prep reads
    the LoadImage and nothing reads its mask. Otherwise they are batched, and ImageBatch crops photos of another shape."""
    loader = photo_loader(workflow)
    prep_reads = any(workflow[p]["inputs"].get("image") == [loader, 0] for p in nodes_of(workflow, FACE_PREP))
    return prep_reads and not reads_mask(workflow, loader)


def _batch_photos(prompt: dict[str, Any], loader: str, photos: list[str]) -> tuple[list[Any], set[str]]:
    """The LoadImage `loader` loads the first photo, each further one a LoadImage batched onto it with the stock
    ImageBatch (the photos share one shape: same_shape_problems refuses others before any work)."""
    prompt[loader]["inputs"]["image"] = photos[0]
    last: list[Any] = [loader, 0]
    added: set[str] = set()
    next_id = max((int(k) for k in prompt if k.isdigit()), default=0) + 1
    for photo in photos[1:]:
        load_id, batch_id = str(next_id), str(next_id + 1)
        next_id += 2
        prompt[load_id] = {"class_type": "LoadImage", "inputs": {"image": photo}, "_meta": {"title": "Face photo (CLI)"}}
        prompt[batch_id] = {"class_type": "ImageBatch", "inputs": {"image1": last, "image2": [load_id, 0]},
                            "_meta": {"title": "Batch photos (CLI)"}}
        added |= {load_id, batch_id}
        last = [batch_id, 0]
    return last, added


def build_prompt(workflow: dict[str, Any], settings: TrainGraph, images: list[str]) -> dict[str, Any]:
    """The API prompt for one embedding: the shipped graph with this job's inputs.

    `images` are the uploaded photos' names relative to the server's input directory. Nodes are found by class_type,
    never by id.
    """
    prompt = start_prompt(workflow, settings)
    trainer, saver = only(prompt, TRAINER), only(prompt, SAVER)

    # trainer: mode and seed; --steps/--batch-size/--learning-rate switch to custom with the preset's other values
    t = prompt[trainer]["inputs"]
    t["seed"] = settings.seed
    t["mode"] = settings.mode
    if any(v is not None for v in (settings.steps, settings.batch_size, settings.learning_rate)):
        preset = PRESETS[settings.mode]
        t["mode"] = "custom"
        t["steps"] = settings.steps if settings.steps is not None else preset.steps
        t["batch_size"] = settings.batch_size if settings.batch_size is not None else preset.batch_size
        t["learning_rate"] = settings.learning_rate if settings.learning_rate is not None else preset.learning_rate
    if settings.resolution is not None:
        t["resolution"] = settings.resolution
    if settings.save_every:
        t["save_every"] = settings.save_every
        prompt[saver]["inputs"]["embedding"] = [trainer, CHECKPOINTS_OUTPUT]
    if settings.resume_file is not None:  # the trainer's start: the uploaded file, loaded, instead of Embedding Init
        start = t["embedding"][0]
        prompt[start] = {"class_type": EMBEDDING_LOADER, "inputs": {"file": settings.resume_file},
                         "_meta": {"title": "Continued embedding (CLI)"}}
    # copy_to_output: the save node also puts the file where /view serves it, and reports it in /history
    prompt[saver]["inputs"].update(name=settings.name, overwrite=settings.overwrite, copy_to_output=True)
    # before the photos are placed: the LoRA stage reads the trainer's photo link, which they may rewire
    savers = [saver]
    if settings.lora is not None:
        savers.append(add_lora_stage(prompt, trainer, settings.lora, settings.seed, settings.name, settings.token_name))

    # the photos: the graph's LoadImage stands for them
    loader = photo_loader(prompt)
    for prep in nodes_of(prompt, FACE_PREP):
        prompt[prep]["inputs"].update(settings.face_prep)
    if photos_stay_whole(prompt):
        # face prep takes an image list: every photo reaches it whole, at its own size and upright
        load_photo_list(prompt, loader, images, "Face photos (CLI)")
    else:
        # the photos go to the trainer as one batch (checked to share one shape before any work: same_shape_problems)
        last, added = _batch_photos(prompt, loader, images)
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
        keep = upstream(prompt, savers)
        prompt = {k: v for k, v in prompt.items() if k in keep}
    return prompt


@dataclass(frozen=True)
class PromptBuilder:
    """The farm's prompt maker (farm.PromptMaker): the graph and the run's settings, filled per job and run. Plain data,
    so it also travels to a Ray actor."""

    workflow: dict[str, Any]
    settings: TrainGraph  # the run's settings; the name and the resume file are set per job and run

    def __call__(self, job: Any, images: list[str], folder: str, server: Any, save_as: str,
                 resume_file: str | None) -> dict[str, Any]:
        return build_prompt(self.workflow, replace(self.settings, name=save_as, resume_file=resume_file,
                                                   token_name=job.name), images)


def graph_settings(args: argparse.Namespace, ckpt_name: str, face_prep: dict[str, Any]) -> TrainGraph:
    """The run's settings in every job's graph (the name, folder loader and resume file are set per job and server);
    every server saves under a new run-unique name: never replaced, --out gets the files (farm.py)."""
    return TrainGraph(ckpt_name=ckpt_name, seed=args.seed, steps=args.steps, resolution=args.resolution, mode=args.mode,
                      overwrite=False, batch_size=args.batch_size, learning_rate=args.learning_rate, samples=args.samples,
                      face_prep=face_prep, save_every=args.save_every or 0, lora=lora_graph(args))


def face_prep_settings(args: argparse.Namespace, workflow: dict[str, Any], info: dict[str, Any] | None,
                       problems: list[str]) -> dict[str, Any]:
    """--detector/--on-no-face/--resolution for the face-prep node, checked against a server's node (`info`, its
    /object_info entry)."""
    from ..comfy_client import combo_options

    wanted = {"detector": args.detector, "on_no_face": args.on_no_face}
    if not workflow or not nodes_of(workflow, FACE_PREP) or info is None:
        for key, value in wanted.items():
            if value is not None:
                log.warning("--%s ignored: the workflow has no %s node", key.replace("_", "-"), FACE_PREP)
        return {}
    values: dict[str, Any] = {}
    for key, value in wanted.items():
        if value is None:
            continue
        options, _extra = combo_options(info, key)
        if key == "detector" and value in LEGACY_DETECTORS:
            value = LEGACY_DETECTORS[value]  # a name from an earlier version, still accepted
        if options is not None and value not in options:
            problems.append(f"--{key.replace('_', '-')} {value}: use one of {', '.join(map(str, options))}")
        values[key] = value
    if args.resolution is not None:
        _options, extra = combo_options(info, "crop_size")
        values["crop_size"] = min(max(args.resolution, int(extra.get("min", 64))), int(extra.get("max", 2048)))
    return values
