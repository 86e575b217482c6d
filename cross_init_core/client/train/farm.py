"""Runs the batch runner's jobs (one person each) on one or more ComfyUI servers over their HTTP API.

Every server takes one job at a time; an idle server takes the next job. A job whose server stops
answering mid-run, or whose prompt vanishes from the server (in neither its queue nor its history), goes back
to the queue and runs again, on another server when there is one (at most MAX_ATTEMPTS runs in all); a job the
server refused or that failed inside a node is not retried: the same graph fails the same way. The trained
files are fetched from the server (the save node's copies under output/, each checked against the size and sha256
the node reports) and only when every one has come back whole are they written into the output folder, all or
none (atomic_files.write_all: an error part-way puts back what was already replaced).

A server's files are never replaced: each run writes only new files there, named after the job and the run
(`NAME-RUNID.safetensors` in its embeddings folder and under output/cross_init_embeddings/, the photos under
input/cross_init_cli/RUNID_NAME/), so an attempt given up for dead that still finishes can never write NAME. On a
remote server they stay (docs/batch_runner.md says how to clean them up); the local ComfyUI's are removed once it
has stopped (`remove_run_files`).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...common.atomic_files import TAKEN_NAME_SUFFIX_GLOB, write_all_paths
from ...common.embedding_names import DOWNLOAD_SUBFOLDER, LORA_DOWNLOAD_SUBFOLDER, checkpoint_name, trained_steps
from ..comfy_client import ComfyClient, LocalServer, PromptFailed, PromptRejected, ServerGone
from ..common import upright_photo
from ..preflight import preflight
from ..progress import ProgressBar
from ..prompt_graph import FACE_PREP, SAVER, TRAINER
from .files import file_metadata, lora_file_problem, metadata_int, new_run_id
from .lora_graph import LORA_SAVER

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # runs of one job when servers drop out under it (or lose its prompt)
RECOVER_SECONDS = 60.0  # how long a dropped server may take to answer again before it is given up
INPUT_SUBFOLDER = "cross_init_cli"  # the runner's uploads go under ComfyUI's input/cross_init_cli/

# (job, uploaded photo names, their folder, server, the name the save node writes, the uploaded file a --resume run
# continues or None) -> the API prompt for that run
PromptMaker = Callable[["Job", list[str], str, "Server", str, "str | None"], dict[str, Any]]


@dataclass
class Server:
    client: ComfyClient
    local: LocalServer | None = None
    face_prep: dict[str, Any] | None = None  # /object_info of the face-prep node
    down: bool = False

    @property
    def label(self) -> str:
        return "local" if self.local is not None else self.client.url


# ---------------------------------------------------------------------------------------------
# Before any work


async def check_servers(servers: list[Server], ckpt_name: str, node_types: set[str],
                        needs: dict[str, set[str]] | None = None) -> list[str]:
    """Every server answers, has the pack (new enough: `needs` names further inputs this run uses), every node type
    of the graph and the checkpoint."""
    wanted = {SAVER: {"copy_to_output"}, **{k: v for k, v in (needs or {}).items() if v}}

    async def check(server: Server) -> list[str]:
        nodes, problems = await preflight(server.client, node_types | {SAVER, TRAINER}, ckpt_name)
        for class_type, inputs in wanted.items():
            lacking = sorted(inputs - nodes.inputs(class_type)) if nodes.has(class_type) else []
            if lacking:
                problems.append(f"server {nodes.url}: its Cross-Init pack is older than this runner ({class_type} has no "
                                f"{', '.join(lacking)}); update the pack there")
        server.face_prep = nodes.infos.get(FACE_PREP)
        return problems

    return [problem for found in await asyncio.gather(*(check(s) for s in servers)) for problem in found]


# ---------------------------------------------------------------------------------------------
# The queue


@dataclass
class _Queue:
    servers: list[Server]
    pending: list[Job] = field(default_factory=list)
    failed_on: dict[str, set[str]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def work_left(self) -> bool:
        return bool(self.pending) or self.in_flight > 0

    def _pick(self, server: Server) -> Job | None:
        others = [s for s in self.servers if s is not server and not s.down]
        for job in self.pending:
            tried = self.failed_on.get(job.name, set())
            # a job goes back to a server it dropped on only when no other server is left to try
            if server.client.url not in tried or all(s.client.url in tried for s in others):
                return job
        return None

    async def take(self, server: Server) -> Job | None:
        async with self.changed:
            while True:
                job = self._pick(server)
                if job is not None:
                    self.pending.remove(job)
                    self.in_flight += 1
                    return job
                if not self.work_left():
                    return None
                await self.changed.wait()

    async def done(self, job: Job, retry: bool) -> None:
        async with self.changed:
            self.in_flight -= 1
            if retry:
                self.pending.insert(0, job)
            self.changed.notify_all()


async def run_jobs(servers: list[Server], jobs: list[Job], make_prompt: PromptMaker, out_dir: Path,
                   progress: Callable[[Job, Server, int], ProgressBar], overwrite: bool = False,
                   lora_dir: Path | None = None) -> None:
    """Runs every job on the servers; sets each job's status, message, path, server, seconds, loss, steps. Files in
    `out_dir` (and the LoRAs in `lora_dir`, with --lora) are replaced only with `overwrite` (and NAME by a --resume job,
    which keeps the file it continues)."""
    queue = _Queue(servers, pending=list(jobs))
    numbers = {job.name: i for i, job in enumerate(jobs, start=1)}

    async def worker(server: Server) -> None:
        while True:
            job = await queue.take(server)
            if job is None:
                return
            retry = False
            attempt = queue.attempts[job.name] = queue.attempts.get(job.name, 0) + 1
            log.info("[%d/%d] %s: %d photo(s) on %s%s", numbers[job.name], len(jobs), job.name, len(job.images), server.label,
                     f" (attempt {attempt})" if attempt > 1 else "")
            started = time.perf_counter()
            try:
                try:
                    await _run_one(server, job, make_prompt, out_dir, progress(job, server, numbers[job.name]), overwrite,
                                   lora_dir)
                except asyncio.CancelledError:
                    if server.local is None:  # stopped (Ctrl-C): the remote server should not train on for nobody
                        await server.client.interrupt()
                    raise
                job.seconds = time.perf_counter() - started
                log.info("%s: saved %s (use it as embedding:%s) [%s, %.1f s]", job.name, job.path, job.name, server.label,
                         job.seconds)
            except ServerGone as exc:
                queue.failed_on.setdefault(job.name, set()).add(server.client.url)
                if attempt < MAX_ATTEMPTS:
                    log.warning("%s: %s; the job goes back to the queue", job.name, exc)
                    retry = True
                else:
                    _fail(job, server, started, f"servers dropped out under it {attempt} times; last: {exc}")
            except (PromptRejected, PromptFailed, ValueError, OSError) as exc:
                _fail(job, server, started, str(exc))
            finally:
                await queue.done(job, retry)
            if retry and not await _recovered(server, queue):
                server.down = True
                log.warning("server %s is given up: it is not answering", server.label)
                async with queue.changed:
                    queue.changed.notify_all()
                return

    await asyncio.gather(*(worker(s) for s in servers if not s.down))
    for job in queue.pending:
        job.status, job.message = "failed", "no server left to run it (every server stopped answering)"
        log.error("%s: failed: %s", job.name, job.message)


async def _recovered(server: Server, queue: _Queue) -> bool:
    """After a drop: waits for the server to answer again (a restart), while there is still work for it."""
    def worth_waiting() -> bool:
        alive = server.local is None or server.local.alive()
        return alive and queue.work_left()

    try:
        await server.client.wait_until_up(RECOVER_SECONDS, is_alive=worth_waiting)
        return True
    except ServerGone:
        return False


def _fail(job: Job, server: Server, started: float, message: str) -> None:
    job.status, job.message, job.server = "failed", message, server.label
    job.seconds = time.perf_counter() - started
    log.error("%s: failed on %s: %s", job.name, server.label, message)
    if len(job.images) > 1:
        log.error("%s: photo order in the run: %s", job.name, ", ".join(f"{i}={p}" for i, p in enumerate(job.images)))


def saved_name(job: Job, run_id: str) -> str:
    """The name the save node writes on a server: new and unique to the run (the local ComfyUI's embeddings folder is
    the user's; a remote one is someone's), so a save never replaces a file and a dead attempt never writes NAME."""
    return f"{job.name}-{run_id}"


@dataclass
class Trained:
    """What one run of a job brought back: its files for --out (checkpoints, then NAME) as the save node wrote them."""

    files: list[tuple[str, bytes]]  # (file stem in --out, data)
    final_loss: float | None
    lora_files: list[tuple[str, bytes]] = field(default_factory=list)  # --lora: (file stem in --lora-out, data)


async def train_on(server: Server, job: Job, make_prompt: PromptMaker, run_id: str,
                   on_progress: Callable[..., None] | None = None,
                   photos: list[tuple[bytes, str]] | None = None) -> Trained:
    """One run of `job` on `server`: uploads the photos upright (`photos`: (bytes, suffix) as `upright_photo` gives
    them, else read from the job's paths) and the file a
    --resume continues, runs the graph, and fetches every file the save node wrote, each checked against the size
    and sha256 it reports. Writes nothing locally."""
    client = server.client
    # a fresh folder and name per run: re-runs and retries never mix photos or meet an earlier run's files
    folder = f"{INPUT_SUBFOLDER}/{run_id}_{job.name}"
    names = []
    for index, photo in enumerate(job.images):  # upright: a phone's sideways JPEG goes up as the PNG it shows
        data, suffix = upright_photo(photo) if photos is None else photos[index]
        names.append(await client.upload_image(photo, folder, f"{index:02d}_{photo.stem}{suffix}", data=data))
    resume_file = None
    if job.resume_data is not None:  # --resume: the file it continues goes up with the photos, as it was read
        resume_file = await client.upload_image(Path(f"{job.name}.safetensors"), folder, f"{job.name}.safetensors",
                                                data=job.resume_data)
    prompt = make_prompt(job, names, folder, server, saved_name(job, run_id), resume_file)
    outcome = await client.run(prompt, on_progress=on_progress)
    entries = _saved_entries(outcome.outputs, prompt, SAVER, "cross_init_embedding", client.url, job.name)
    # the last entry is NAME (the final tokens); earlier ones are its checkpoints, NAME-stepNNNN
    files = [(entry, checkpoint_name(job.name, int(entry["steps"]))) for entry in entries[:-1]] + [(entries[-1], job.name)]
    # every file is fetched and checked before any is written: a check or a transfer that fails part-way leaves --out as
    # it was, never a set mixed from two runs (the files are small enough to wait in memory)
    fetched = [(name, await _fetch(client, entry)) for entry, name in files]
    lora_files: list[tuple[str, bytes]] = []
    if any(node.get("class_type") == LORA_SAVER for node in prompt.values()):  # --lora: the LoRA comes back too
        entry = _saved_entries(outcome.outputs, prompt, LORA_SAVER, "cross_init_lora", client.url, job.name)[-1]
        data = await _fetch(client, entry)
        problem = lora_file_problem(data, job.name)
        if problem:  # the server's pack wrote something else than the runner expects: the same graph would do it again
            raise PromptFailed(f"{client.url}: the LoRA file saved for {job.name} is not usable: {problem}")
        lora_files.append((job.name, data))
    return Trained(fetched, entries[-1].get("final_loss"), lora_files)


def _saved_entries(outputs: dict[str, Any], prompt: dict[str, Any], class_type: str, key: str, url: str,
                   name: str) -> list[dict[str, Any]]:
    """The files the graph's `class_type` save node reports in its UI result under `key` (in /history)."""
    ids = [k for k, v in prompt.items() if v.get("class_type") == class_type]
    entries = (outputs.get(ids[0], {}) if ids else {}).get(key) or []
    if not entries:
        raise PromptFailed(f"{url} reported no file of {class_type} for {name} (is its Cross-Init pack up to date?)")
    return entries


async def _fetch(client: ComfyClient, entry: dict[str, Any]) -> bytes:
    """A saved file's copy under output/, checked against the size and sha256 its save node reported."""
    data = await client.download(entry["filename"], entry.get("subfolder", ""), entry.get("type", "output"))
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        # another run replaced the copy in between, or the transfer broke: fetch nothing rather than a wrong file
        raise ServerGone(f"{client.url}: the downloaded {entry['filename']} does not match what the save node wrote")
    return data


def finish_job(job: Job, label: str, trained: Trained, out_dir: Path, overwrite: bool, lora_dir: Path | None = None) -> None:
    """Writes a run's files into --out (and its LoRA into `lora_dir`), all or none, and records the job's result."""
    path, lora_path = _write_out(job, out_dir, trained, overwrite, lora_dir)
    job.status, job.message, job.path, job.server = "ok", "", str(path), label
    job.lora_path = None if lora_path is None else str(lora_path)
    job.final_loss = trained.final_loss
    metadata = file_metadata(trained.files[-1][1])
    job.steps = trained_steps(metadata)
    job.peak_vram_mib = metadata_int(metadata, "peak_vram_mib")


async def _run_one(server: Server, job: Job, make_prompt: PromptMaker, out_dir: Path, bar: ProgressBar,
                   overwrite: bool, lora_dir: Path | None) -> None:
    run_id = new_run_id()
    job.run_ids.append(run_id)
    try:
        trained = await train_on(server, job, make_prompt, run_id, bar.hook)
    finally:
        bar.finish()
    finish_job(job, server.label, trained, out_dir, overwrite, lora_dir)


def _write_out(job: Job, out_dir: Path, trained: Trained, overwrite: bool,
               lora_dir: Path | None) -> tuple[Path, Path | None]:
    """Writes a job's files into --out and its LoRA into `lora_dir`, all or none across both; returns NAME's paths
    (the LoRA's None without one). --resume first keeps the file it continued (byte-identical, under `job.keep_as`;
    nothing when that file holds these bytes already) and replaces NAME; its LoRA is always new."""
    writes: list[tuple[Path, bytes, bool]] = []
    if job.resume_data is not None and job.keep_as is not None:
        kept = out_dir / f"{job.keep_as}.safetensors"
        if not (kept.is_file() and kept.read_bytes() == job.resume_data):
            writes.append((kept, job.resume_data, False))
    if trained.lora_files:
        if lora_dir is None:
            raise ValueError(f"{job.name}: the server saved a LoRA but the run has no --lora-out folder for it")
        writes += [(lora_dir / f"{name}.safetensors", data, overwrite) for name, data in trained.lora_files]
    # NAME last: once it is there, its checkpoints (and its LoRA) are too
    writes += [(out_dir / f"{name}.safetensors", data, overwrite or (job.resume_data is not None and name == job.name))
               for name, data in trained.files]
    try:
        written = write_all_paths(writes)
    except FileExistsError as exc:
        raise OSError(f"{exc.filename} appeared in --out or --lora-out during the run; nothing there was changed. Run "
                      "again with another name, or with --overwrite to replace it") from None
    return written[-1], (written[-1 - len(trained.files)] if trained.lora_files else None)


def remove_run_files(jobs: list[Job], embeddings: Path, output: Path, loras: Path | None = None) -> None:
    """Removes what the jobs' runs saved on the local ComfyUI (NAME-RUNID and its checkpoints, in its embeddings and
    loras folders (`loras`: default models/loras beside `embeddings`) and the copies under output/cross_init_embeddings/
    and output/cross_init_loras/): --out holds the results. Call it once that server has stopped, so that no attempt
    still running can save after it."""
    loras = loras if loras is not None else embeddings.parent / "loras"
    copies = (output / DOWNLOAD_SUBFOLDER, output / LORA_DOWNLOAD_SUBFOLDER)
    for job in jobs:
        for run_id in job.run_ids:
            stem = glob.escape(saved_name(job, run_id))
            for folder in (embeddings, loras, *copies):
                patterns = [f"{stem}.safetensors", f"{stem}-step*.safetensors"]
                if folder in copies:  # a copy whose name was taken there is NAME-xxxxxxxx (atomic_files.write_new)
                    patterns.append(f"{stem}{TAKEN_NAME_SUFFIX_GLOB}.safetensors")
                for path in (p for pattern in patterns for p in folder.glob(pattern)):
                    try:
                        path.unlink()
                    except OSError as exc:
                        log.warning("could not remove %s, a file this run saved on the local ComfyUI: %s", path, exc)
