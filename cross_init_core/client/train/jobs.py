"""The batch runner's jobs: which embeddings to train from --images/--folder, the checks on them before any
server is asked (names, photos, files that would be replaced), and the summary table of how each went."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...embedding_names import checkpoint_name, validate_name
from ...errors import CrossInitError
from ...settings import checkpoint_steps
from ...text_table import format_table
from ..common import IMAGE_SUFFIXES, UsageError, is_photo, photo_problem, photo_size
from .files import RUN_ID_SUFFIX, file_steps

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    images: list[Path]
    source: str  # what the job came from, for messages
    status: str = "pending"
    message: str = ""
    path: str | None = None
    seconds: float | None = None
    final_loss: float | None = None
    steps: int | None = None
    resume_steps: int | None = None  # --resume: the steps of the file in --out that this job continues
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
    """What every job writes into a folder: NAME.safetensors and, with --save-every, its checkpoints."""

    steps: int  # training steps of this run
    save_every: int = 0
    resume: bool = False

    def names(self, job: Job) -> list[str]:
        """The file stems: NAME-stepNNNN for every checkpoint and NAME, or just NAME when there is one checkpoint
        (the step counts go on from the continued file's with --resume)."""
        steps = checkpoint_steps(self.steps, self.save_every, job.resume_steps or 0)
        return [*(checkpoint_name(job.name, k) for k in steps), job.name] if len(steps) > 1 else [job.name]


def resume_sources(jobs: list[Job], folder: Path) -> list[str]:
    """--resume: each job continues NAME.safetensors in `folder` (from the step count it records); a problem for
    each job without one."""
    problems = []
    for job in jobs:
        source = folder / f"{job.name}.safetensors"
        if not source.is_file():
            problems.append(f"{job.name}: --resume needs {source} (the file to continue); train it first, or leave out --resume")
            continue
        job.resume_steps = file_steps(source) or 0  # a file without a step count (another trainer's) starts the count at 0
    return problems


def long_name_problems(jobs: list[Job], outputs: Outputs, remote: bool) -> list[str]:
    """Names whose derived file names (checkpoints; on a remote server the run's id too) would be too long, found
    before any work rather than after the training."""
    problems = []
    for job in jobs:
        longest = max(outputs.names(job), key=len)
        try:
            validate_name(longest.replace(job.name, job.name + RUN_ID_SUFFIX, 1) if remote else longest)
        except CrossInitError as exc:
            problems.append(f"{job.source}: the name {job.name!r} is too long for the files this run writes ({exc}); "
                            "choose a shorter name")
    return problems


def clash_problems(jobs: list[Job], folder: Path, outputs: Outputs, overwrite: bool, skip_existing: bool,
                   where: str = "") -> list[str]:
    """A problem for every file a job would write that exists in `folder` (`where` says which folder, in the
    message), unless --overwrite; with --skip-existing a job whose NAME exists is marked skipped instead. With
    --resume NAME itself is the file being continued: it is replaced, the others must be new."""
    problems: list[str] = []
    for job in jobs:
        names = outputs.names(job)
        if outputs.resume:
            names = [n for n in names if n != job.name]
        target = folder / f"{job.name}.safetensors"
        if skip_existing and target.exists():
            job.status, job.path, job.message = "skipped", str(target), "file exists (--skip-existing)"
            continue
        for name in names:
            path = folder / f"{name}.safetensors"
            if path.exists() and not overwrite:
                problems.append(f"{job.name}: {path} already exists{where}; choose another name, or pass --overwrite to "
                                "replace it (or --skip-existing to keep it)")
    return problems


def summary_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    return [
        {"name": j.name, "images": len(j.images), "steps": j.steps, "seconds": None if j.seconds is None else round(j.seconds, 1),
         "final_loss": j.final_loss, "peak_vram_mib": j.peak_vram_mib, "server": j.server, "file": j.path, "status": j.status,
         "message": j.message}
        for j in jobs
    ]


def format_summary(jobs: list[Job]) -> str:
    header = ("name", "images", "steps", "seconds", "final loss", "VRAM MiB", "server", "file", "status")
    rows = []
    for j in jobs:
        status = j.status if not j.message or j.status == "ok" else f"{j.status}: {j.message}"
        rows.append((
            j.name, str(len(j.images)), "-" if j.steps is None else str(j.steps),
            "-" if j.seconds is None else f"{j.seconds:.1f}", "-" if j.final_loss is None else f"{j.final_loss:.4f}",
            "-" if j.peak_vram_mib is None else str(j.peak_vram_mib), j.server or "-", j.path or "-", status,
        ))
    ok = sum(j.status == "ok" for j in jobs)
    skipped = sum(j.status == "skipped" for j in jobs)
    failed = len(jobs) - ok - skipped
    return "\n".join([*format_table(header, rows, pad_last=False), f"{ok} written, {failed} failed, {skipped} skipped"]) + "\n"
