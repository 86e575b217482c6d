"""Runs the batch runner's jobs (one person each) on one or more ComfyUI servers over their HTTP API.

Every server takes one job at a time; an idle server takes the next job. A job whose server stops
answering mid-run goes back to the queue and runs on another server (at most MAX_ATTEMPTS runs in all);
a job the server refused or that failed inside a node is not retried: the same graph fails the same way.
The trained file is fetched from the server (the save node's copy under output/, checked against the
size and sha256 the node reports) and written into the output folder atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic_files import replace_atomically
from .cli_comfy import CKPT_LOADER, FACE_PREP, FOLDER_LOADER, INPUT_SUBFOLDER, SAVER, TRAINER, ProgressBar
from .comfy_client import ComfyClient, LocalServer, PromptFailed, PromptRejected, ServerGone, combo_options

if TYPE_CHECKING:
    from .cli_jobs import Job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # runs of one job when servers drop out under it
RECOVER_SECONDS = 60.0  # how long a dropped server may take to answer again before it is given up

# (job, uploaded photo names, their folder, server) -> the API prompt for that job on that server
PromptMaker = Callable[["Job", list[str], str, "Server"], dict[str, Any]]


@dataclass
class Server:
    client: ComfyClient
    local: LocalServer | None = None
    folder_loader: bool = False  # has the stock "Load Image Dataset from Folder" node
    face_prep: dict[str, Any] | None = None  # /object_info of the face-prep node
    down: bool = False

    @property
    def label(self) -> str:
        return "local" if self.local is not None else self.client.url


# ---------------------------------------------------------------------------------------------
# Before any work


async def preflight(servers: list[Server], ckpt_name: str, node_types: set[str]) -> list[str]:
    """Every server answers, has the pack (new enough), every node type of the graph and the checkpoint."""
    problems: list[str] = []

    async def check(server: Server) -> list[str]:
        url = server.client.url
        infos: dict[str, dict[str, Any] | None] = {}

        async def info(class_type: str) -> dict[str, Any] | None:  # each node type asked for once
            if class_type not in infos:
                infos[class_type] = await server.client.object_info(class_type)
            return infos[class_type]

        try:
            await server.client.system_stats()
            saver = await info(SAVER)
            if saver is None or await info(TRAINER) is None:
                return [f"server {url}: the Cross-Init nodes are not installed there (custom_nodes); install the pack "
                        "on that server and restart it"]
            inputs = saver.get("input") or {}
            if "copy_to_output" not in {**inputs.get("required", {}), **inputs.get("optional", {})}:
                return [f"server {url}: its Cross-Init pack is older than this runner (the save node has no copy_to_output); "
                        "update the pack there"]
            found: list[str] = []
            for class_type in sorted(node_types - {SAVER, TRAINER}):
                if await info(class_type) is None:
                    found.append(f"server {url}: it has no node {class_type!r}, which the workflow uses")
            options, _ = combo_options(await info(CKPT_LOADER), "ckpt_name")
            if options is None or ckpt_name not in options:
                known = ", ".join(map(str, (options or [])[:10])) or "none"
                found.append(f"server {url}: checkpoint {ckpt_name!r} not found in its checkpoints folders (it has: {known}); "
                             "copy it there, or choose a name every server has")
            server.folder_loader = await info(FOLDER_LOADER) is not None
            if FACE_PREP in node_types:
                server.face_prep = await info(FACE_PREP)
            return found
        except ServerGone as exc:
            return [f"server {url}: not answering ({exc}); start it or leave it out"]

    for found in await asyncio.gather(*(check(s) for s in servers)):
        problems += found
    return problems


# ---------------------------------------------------------------------------------------------
# Output


def file_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file (read from its JSON header); empty when it cannot be read."""
    import json
    import struct

    try:
        size = struct.unpack("<Q", data[:8])[0]
        metadata = json.loads(data[8:8 + size]).get("__metadata__") or {}
        return {str(k): str(v) for k, v in metadata.items()}
    except Exception:  # the summary still shows the run without it
        return {}


def _metadata_int(metadata: dict[str, str], key: str) -> int | None:
    try:
        return int(metadata[key])
    except (KeyError, ValueError):
        return None


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
                   progress: Callable[[Job, Server, int], ProgressBar]) -> None:
    """Runs every job on the servers; sets each job's status, message, path, server, seconds, loss, steps."""
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
                    await _run_one(server, job, make_prompt, out_dir, progress(job, server, numbers[job.name]))
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


async def _run_one(server: Server, job: Job, make_prompt: PromptMaker, out_dir: Path, bar: ProgressBar) -> None:
    client = server.client
    # a fresh folder per run: re-runs and retries never mix photos, and the folder loader sees only these
    folder = f"{INPUT_SUBFOLDER}/{uuid.uuid4().hex[:8]}_{job.name}"
    names = [await client.upload_image(photo, folder, f"{index:02d}_{photo.name}") for index, photo in enumerate(job.images)]
    prompt = make_prompt(job, names, folder, server)
    try:
        outcome = await client.run(prompt, on_progress=bar.hook)
    finally:
        bar.finish()
    saver_ids = [k for k, v in prompt.items() if v.get("class_type") == SAVER]
    entries = (outcome.outputs.get(saver_ids[0], {}) if saver_ids else {}).get("cross_init_embedding") or []
    if not entries:
        raise PromptFailed(f"{client.url} reported no saved file for {job.name} (is its Cross-Init pack up to date?)")
    entry = entries[0]
    data = await client.download(entry["filename"], entry.get("subfolder", ""), entry.get("type", "output"))
    if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        # another run replaced the copy in between, or the transfer broke: fetch nothing rather than a wrong file
        raise ServerGone(f"{client.url}: the downloaded {entry['filename']} does not match what the save node wrote")
    path = replace_atomically(out_dir / f"{job.name}.safetensors", data)
    job.status, job.message, job.path, job.server = "ok", "", str(path), server.label
    job.final_loss = entry.get("final_loss")
    metadata = file_metadata(data)
    job.steps = _metadata_int(metadata, "steps")
    job.peak_vram_mib = _metadata_int(metadata, "peak_vram_mib")
