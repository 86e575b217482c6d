"""The batch runner's jobs: which embeddings to train from --images/--folder, the checks on them before any
server is asked (names, photos, files that would be replaced), and the summary table of how each went."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.embedding_names import (
    MAX_RUN_STEPS,
    checkpoint_name,
    continued_steps,
    validate_bundle_name,
    validate_name,
    validate_run_name,
)
from ...common.errors import CrossInitError
from ...common.settings import checkpoint_steps
from ...common.text_table import format_table
from ..common import IMAGE_SUFFIXES, UsageError, is_photo, photo_problem, photo_size
from .files import RUN_ID_SUFFIX, file_metadata, new_run_id

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    images: list[Path]
    source: str  # what the job came from, for messages
    status: str = "pending"
    message: str = ""
    path: str | None = None
    lora_path: str | None = None  # --lora: the LoRA file in --lora-out
    seconds: float | None = None
    final_loss: float | None = None
    steps: int | None = None
    resume_steps: int | None = None  # --resume: the steps the continued file counts on from (as the trainer counts them)
    resume_data: bytes | None = None  # --resume: the file in --out that this job continues, as it was read
    keep_as: str | None = None  # --resume: the name the continued file is kept under in --out
    run_ids: list[str] = field(default_factory=list)  # the id of every run (attempt) of this job, in order
    peak_vram_mib: int | None = None  # the training's peak GPU memory (from the file; None on the CPU)
    server: str | None = None  # the server that trained it (or failed it last)


def collect_jobs(args: argparse.Namespace) -> list[Job]:
    if args.images is not None:
        return [Job(name=args.name, images=list(args.images), source="--images")]
    folder: Path = args.folder
    if not folder.is_dir():
        raise UsageError(f"--folder {folder}: not a folder")
    jobs: list[Job] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            photos = sorted((p for p in entry.iterdir() if is_photo(p)), key=lambda p: p.name)
            if photos:
                jobs.append(Job(name=entry.name, images=photos, source=f"{entry}/"))
            else:
                log.warning("%s: no photos (%s) in this sub-folder; ignored", entry, ", ".join(IMAGE_SUFFIXES))
        elif is_photo(entry):
            jobs.append(Job(name=entry.stem, images=[entry], source=str(entry)))
    if not jobs:
        raise UsageError(f"--folder {folder}: no sub-folders with photos and no photos ({', '.join(IMAGE_SUFFIXES)}) in it")
    return jobs


def input_problems(jobs: list[Job]) -> list[str]:
    """Bad names, duplicate names and unreadable photos, for all jobs at once."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for job in jobs:
        try:
            job.name = validate_name(job.name)
        except CrossInitError as exc:
            problems.append(f"{job.source}: bad embedding {exc}")
            continue
        key = job.name.casefold()  # case-insensitive file systems would make these the same file
        if key in seen:
            problems.append(f"{job.source}: the name {job.name!r} is also used by {seen[key]}")
        seen[key] = job.source
    for job in jobs:
        for photo in job.images:
            problem = photo_problem(photo)
            if problem:
                problems.append(f"photo {photo}: {problem}")
    return problems


ASPECT_TOLERANCE = 0.01  # relative: ImageBatch's center crop of a photo this close to the first one's shape is a pixel or two


def same_shape_problems(jobs: list[Job], workflow_path: object) -> list[str]:
    """Where a workflow batches the photos (no Cross-Init Face Prep takes them as a list), each job's photos must share
    one shape: the stock ImageBatch resizes later photos to the first one's size, center-cropping those of another
    aspect ratio (a portrait after a landscape loses its top and bottom, often the face)."""
    problems = []
    for job in jobs:
        sizes = {photo: photo_size(photo) for photo in job.images}
        known = [size for size in sizes.values() if size is not None]
        if not known:
            continue
        first = known[0][0] / known[0][1]
        if any(abs(w / h - first) > ASPECT_TOLERANCE * first for w, h in known[1:]):
            listed = ", ".join(f"{photo.name} {size[0]}x{size[1]}" for photo, size in sizes.items() if size is not None)
            problems.append(f"{job.source}: photos of different shapes ({listed}), and workflow {workflow_path} batches them "
                            "without a Cross-Init Face Prep, which would crop them to the first one's shape; crop them to one "
                            "shape, or use a workflow whose face prep reads the photos (the shipped ones do)")
    return problems


@dataclass(frozen=True)
class Outputs:
    """What every job writes into a folder: NAME.safetensors and, with --save-every, its checkpoints; with --resume
    also the continued file, kept."""

    steps: int  # training steps of this run
    save_every: int = 0
    resume: bool = False

    def trained(self, job: Job) -> list[str]:
        """The file stems the trainer's save writes: NAME-stepNNNN for every checkpoint and NAME, or just NAME when
        there is one checkpoint (the step counts go on from the continued file's with --resume)."""
        steps = checkpoint_steps(self.steps, self.save_every, job.resume_steps or 0)
        return [*(checkpoint_name(job.name, k) for k in steps), job.name] if len(steps) > 1 else [job.name]

    def names(self, job: Job) -> list[str]:
        """Every file stem the job writes into the folder: the continued file kept (--resume), then `trained`."""
        return [*([job.keep_as] if self.resume and job.keep_as else []), *self.trained(job)]


def kept_name(name: str, steps: int | None, run_id: str) -> str:
    """Where --resume keeps the file it continues: NAME-stepNNNN (its step count) when the count is the trainer's own,
    else a name unique to this run, NAME-original-RUNID (another trainer's file, whose count says nothing here)."""
    return checkpoint_name(name, steps) if steps else f"{name}-original-{run_id}"


def resume_sources(jobs: list[Job], folder: Path) -> list[str]:
    """--resume: each job continues NAME.safetensors in `folder`, counting on from the steps the trainer will count on
    from (embedding_names.continued_steps, the server's own rule), and keeps it under `kept_name`; a problem for each
    job without one."""
    problems = []
    for job in jobs:
        source = folder / f"{job.name}.safetensors"
        if not source.is_file():
            problems.append(f"{job.name}: --resume needs {source} (the file to continue); train it first, or leave out --resume")
            continue
        job.resume_data = source.read_bytes()
        try:
            job.resume_steps = continued_steps(file_metadata(job.resume_data), str(source))
        except CrossInitError as exc:
            problems.append(f"{job.name}: {exc}")
            continue
        job.keep_as = kept_name(job.name, job.resume_steps, new_run_id())
    return problems


def bundle_name_problems(jobs: list[Job]) -> list[str]:
    """--lora bundles each token in its LoRA file as NAME: a NAME that readers would cut at a dot is refused now."""
    problems = []
    for job in jobs:
        try:
            validate_bundle_name(job.name)
        except CrossInitError as exc:
            problems.append(f"{job.source}: {exc} --lora bundles the token in the LoRA file under its name; rename it "
                            "(or --name) without '.'")
    return problems


def long_name_problems(jobs: list[Job], outputs: Outputs) -> list[str]:
    """Names whose derived file names would be too long, found before any work rather than after the training: the
    files in --out (checkpoints, the kept file) and the name the save node gets on the server (NAME-RUNID), by the
    node's own rule (room for any checkpoint a run could write)."""
    problems = []
    for job in jobs:
        try:
            for name in outputs.names(job):
                validate_name(name)
            validate_run_name(job.name + RUN_ID_SUFFIX, MAX_RUN_STEPS)
        except CrossInitError as exc:
            problems.append(f"{job.source}: the name {job.name!r} is too long for the files this run writes ({exc}); "
                            "choose a shorter name")
    return problems


def clash_problems(jobs: list[Job], folder: Path, outputs: Outputs, overwrite: bool, skip_existing: bool,
                   lora_folder: Path | None = None) -> list[str]:
    """A problem for every file a job would write that exists in `folder` (and, with --lora, its LoRA NAME in
    `lora_folder`), unless --overwrite; with --skip-existing a job whose files all exist is marked skipped instead, and
    one with only some of them is a problem (training it would replace the others). With --resume NAME itself is the
    file being continued: it is replaced (and kept under another name, which must be free or hold the same bytes
    already); its LoRA must be new."""
    problems: list[str] = []
    for job in jobs:
        target = folder / f"{job.name}.safetensors"
        lora_target = lora_folder / f"{job.name}.safetensors" if lora_folder is not None else None
        if skip_existing and target.exists() and (lora_target is None or lora_target.exists()):
            job.status, job.path, job.message = "skipped", str(target), "file exists (--skip-existing)"
            job.lora_path = None if lora_target is None else str(lora_target)
            continue
        if lora_target is not None and lora_target.exists() and not overwrite:
            problems.append(f"{job.name}: the LoRA {lora_target} already exists; choose another name, or pass --overwrite "
                            "to replace it" + (f"; --skip-existing skips a job only when {target} exists too" if skip_existing else ""))
        if skip_existing and lora_target is not None and target.exists():
            problems.append(f"{job.name}: {target} exists but its LoRA {lora_target} does not, and --lora trains both "
                            "together; pass --overwrite to train both again, or move the embedding away")
            continue
        for name in outputs.names(job):
            path = folder / f"{name}.safetensors"
            if not path.exists() or overwrite or (outputs.resume and name == job.name):
                continue
            if name == job.keep_as and path.is_file() and path.read_bytes() == job.resume_data:
                continue  # the continued file is kept there already, byte for byte: nothing is written
            problems.append(f"{job.name}: {path} already exists; choose another name, or pass --overwrite to replace it "
                            "(or --skip-existing to keep it)")
    return problems


def summary_rows(jobs: list[Job], lora: bool = False) -> list[dict[str, Any]]:
    """The summary as JSON rows; with --lora each row also has `lora_file`."""
    return [
        {"name": j.name, "images": len(j.images), "steps": j.steps, "seconds": None if j.seconds is None else round(j.seconds, 1),
         "final_loss": j.final_loss, "peak_vram_mib": j.peak_vram_mib, "server": j.server, "file": j.path,
         **({"lora_file": j.lora_path} if lora else {}), "status": j.status, "message": j.message}
        for j in jobs
    ]


def format_summary(jobs: list[Job], lora: bool = False) -> str:
    """The summary table; with --lora a `lora file` column follows `file`."""
    header = ("name", "images", "steps", "seconds", "final loss", "VRAM MiB", "server", "file",
              *(("lora file",) if lora else ()), "status")
    rows = []
    for j in jobs:
        status = j.status if not j.message or j.status == "ok" else f"{j.status}: {j.message}"
        rows.append((
            j.name, str(len(j.images)), "-" if j.steps is None else str(j.steps),
            "-" if j.seconds is None else f"{j.seconds:.1f}", "-" if j.final_loss is None else f"{j.final_loss:.4f}",
            "-" if j.peak_vram_mib is None else str(j.peak_vram_mib), j.server or "-", j.path or "-",
            *((j.lora_path or "-",) if lora else ()), status,
        ))
    ok = sum(j.status == "ok" for j in jobs)
    skipped = sum(j.status == "skipped" for j in jobs)
    failed = len(jobs) - ok - skipped
    return "\n".join([*format_table(header, rows, pad_last=False), f"{ok} written, {failed} failed, {skipped} skipped"]) + "\n"
