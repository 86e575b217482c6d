"""The training graph of one job, as plain JSON: the shipped workflows/api/cross_init_<mode>.json (or a --workflow
with the same node types) with the job's photos, checkpoint, name and settings."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...settings import LEGACY_DETECTORS, PRESETS
from ..prompt_graph import (
    EMBEDDING_LOADER,
    FACE_PREP,
    FOLDER_LOADER,
    SAVER,
    TRAINER,
    GraphSettings,
    load_photos,
    nodes_of,
    only,
    start_prompt,
    upstream,
)

log = logging.getLogger(__name__)

CHECKPOINTS_OUTPUT = 2  # the trainer's checkpoints output (a list)
FOLDER_LOADER_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what the stock folder loader reads


@dataclass
class TrainGraph(GraphSettings):
    """One job's settings in the training graph (beside the checkpoint, seed, steps and resolution)."""

    name: str = ""  # the name the save node writes on the server
    mode: str = "fast"
    overwrite: bool = False
    use_folder_loader: bool = True  # the server has the stock folder loader (face prep gets an image list)
    batch_size: int | None = None
    learning_rate: float | None = None
    samples: bool = False
    face_prep: dict[str, Any] = field(default_factory=dict)
    save_every: int = 0  # the trainer keeps checkpoints; the save node saves the list (NAME-stepNNNN and NAME)
    resume_file: str | None = None  # continue this uploaded file (relative to the input folder) instead of a fresh start


def build_prompt(workflow: dict[str, Any], settings: TrainGraph, images: list[str], image_folder: str) -> dict[str, Any]:
    """The API prompt for one embedding: the shipped graph with this job's inputs.

    `images` are the uploaded photos' names relative to the server's input directory, `image_folder` the
    folder holding them (also relative). Nodes are found by class_type, never by id.
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
    folder_readable = all(Path(name).suffix.lower() in FOLDER_LOADER_SUFFIXES for name in images)
    if prep_reads_loader and not mask_read and settings.use_folder_loader and folder_readable:
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


@dataclass(frozen=True)
class PromptBuilder:
    """The farm's prompt maker (farm.PromptMaker): the graph and the run's settings, filled per job and run. Plain data,
    so it also travels to a Ray actor."""

    workflow: dict[str, Any]
    settings: TrainGraph  # the run's settings; name, folder loader and resume file are set per job and server

    def __call__(self, job: Any, images: list[str], folder: str, server: Any, save_as: str,
                 resume_file: str | None) -> dict[str, Any]:
        settings = replace(self.settings, name=save_as, use_folder_loader=server.folder_loader, resume_file=resume_file)
        return build_prompt(self.workflow, settings, images, folder)


def graph_settings(args: argparse.Namespace, ckpt_name: str, face_prep: dict[str, Any]) -> TrainGraph:
    """The run's settings in every job's graph (the name, folder loader and resume file are set per job and server);
    every server saves under a new run-unique name: never replaced, --out gets the files (farm.py)."""
    return TrainGraph(ckpt_name=ckpt_name, seed=args.seed, steps=args.steps, resolution=args.resolution, mode=args.mode,
                      overwrite=False, batch_size=args.batch_size, learning_rate=args.learning_rate, samples=args.samples,
                      face_prep=face_prep, save_every=args.save_every or 0)


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
