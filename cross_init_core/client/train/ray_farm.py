"""`train --ray ADDRESS`: the batch runner's jobs on a Ray cluster.

One actor per GPU (`--ray-gpus-per-job`, Ray sets its CUDA_VISIBLE_DEVICES) starts the ComfyUI at `--comfyui` on its
node as a loopback child, as the runner's local ComfyUI is started, and runs one job at a time through the same
HTTP client (farm.train_on). The photos go to the actor, and the trained files come back, through Ray's object store
(no shared disk); the driver writes them into --out with the farm's all-or-none rule. Failures, Ray's own means first:
a dead actor (its worker or node gone) is restarted by Ray (`max_restarts`) and its job goes back to the queue (at
most farm.MAX_ATTEMPTS runs in all, one result written per job); a job past `--job-timeout` has its actor killed and
restarted and counts as an attempt; a job that fails inside a node is not retried, as in the farm.

Ray is imported only here, and only under --ray: without it, --ray exits 2 with the install line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..comfy_client import ComfyClient, LocalServer, PromptFailed, PromptRejected, ServerGone
from ..common import UsageError, upright_photo
from .farm import MAX_ATTEMPTS, Server, Trained, check_servers, finish_job, remove_run_files, train_on
from .files import new_run_id
from .graph import PromptBuilder, face_prep_settings, graph_settings
from .jobs import Job

log = logging.getLogger(__name__)
T = TypeVar("T")

START_SECONDS = 600.0  # an actor's ComfyUI start and checks (models load lazily; the first start may compile kernels)
POLL_SECONDS = 1.0  # how often the driver looks at job time limits while it waits


def import_ray() -> Any:
    """The ray package, or UsageError (exit 2) with the install line."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the ray package: install it with ComfyUI's Python, e.g. `python -m pip install ray` "
                         "(on the Windows portable build: python_embeded\\python.exe -m pip install ray)") from None
    return ray


# ---------------------------------------------------------------------------------------------
# The actor (runs on a cluster node)


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to its end from an actor method (Ray may already run an event loop in the actor's thread)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass(frozen=True)
class WorkerSetup:
    """What every actor needs to start its ComfyUI: the same paths on every node."""

    comfyui: str
    base_directory: str | None
    checkpoint: str
    cpu: bool


@dataclass
class WorkerInfo:
    """What an actor reports once its ComfyUI is up: problems of the preflight, and the node facts the graph needs."""

    problems: list[str]
    face_prep: dict[str, Any] | None = None
    ckpt_name: str = ""
    node: str = ""


class ComfyWorker:
    """A Ray actor: one ComfyUI child on its node, one job at a time (made a Ray actor class in `run_on_ray`)."""

    def __init__(self, setup: WorkerSetup) -> None:
        import socket

        from ..local_comfyui import local_server_setup, looks_like_comfyui

        self.node = socket.gethostname()
        self.info: WorkerInfo | None = None  # set when the actor cannot work: prepare() reports it
        self.scratch = Path(tempfile.mkdtemp(prefix="cross_init_ray_"))
        comfyui = Path(setup.comfyui)
        if not looks_like_comfyui(comfyui):  # a clear problem rather than a failing __init__ that Ray would restart
            self.info = WorkerInfo([f"ray actor on {self.node}: --comfyui {comfyui} is not a ComfyUI folder there (no main.py, "
                                    "folder_paths.py and comfy/); every node needs ComfyUI with this pack at that path"],
                                   node=self.node)
            return
        base = Path(setup.base_directory) if setup.base_directory else None
        args, self.ckpt_name, self.embeddings = local_server_setup(comfyui, base, setup.checkpoint, self.scratch, setup.cpu,
                                                                   link_pack=False)
        self.output = self.embeddings.parents[1] / "output"
        self.server = LocalServer(comfyui.resolve(), args, log_path=self.scratch / "comfyui.log")
        # started from the actor's own thread: on Linux the child's parent-death signal follows the thread that started
        # it, and the helper thread of _run_async ends with each call
        self.server.start()
        _run_async(self._wait_up())

    async def _wait_up(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            try:
                await self.server.wait_up(session)
            except ServerGone as exc:
                self.info = WorkerInfo([f"ray actor on {self.node}: {exc}"], node=self.node)

    def prepare(self, node_types: set[str], needs: dict[str, set[str]]) -> WorkerInfo:
        """The farm's preflight against this actor's ComfyUI (run once, before any job)."""
        if self.info is not None:
            return self.info
        return _run_async(self._prepare(node_types, needs))

    async def _prepare(self, node_types: set[str], needs: dict[str, set[str]]) -> WorkerInfo:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            server = Server(ComfyClient(self.server.url, session))
            problems = [f"ray actor on {self.node}: {p}" for p in await check_servers([server], self.ckpt_name, node_types, needs)]
        return WorkerInfo(problems, server.face_prep, self.ckpt_name, self.node)

    def pid(self) -> int:
        import os

        return os.getpid()

    def run_job(self, job: Job, photos: list[tuple[bytes, str]], make_prompt: PromptBuilder) -> Trained:
        """One run of `job`; the files it saved on this node's ComfyUI (its LoRA too) are removed once they are fetched."""
        return _run_async(self._run_job(job, photos, make_prompt))

    async def _run_job(self, job: Job, photos: list[tuple[bytes, str]], make_prompt: PromptBuilder) -> Trained:
        import aiohttp

        if not self.server.alive():
            raise ServerGone(f"ray actor on {self.node}: its ComfyUI is not running")
        run_id = new_run_id()
        job.run_ids = [run_id]
        async with aiohttp.ClientSession() as session:
            server = Server(ComfyClient(self.server.url, session))
            try:
                return await train_on(server, job, make_prompt, run_id, photos=photos)
            finally:
                remove_run_files([job], self.embeddings, self.output)

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
        scratch = getattr(self, "scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class _Running:
    job: Job
    actor: Any
    number: int  # the actor's index, for messages
    started: float
    timed_out: bool = False


@dataclass
class RaySettings:
    address: str
    gpus_per_job: float
    actors: int | None
    job_timeout: float
    setup: WorkerSetup
    overwrite: bool
    lora_out: Path | None = None  # --lora: where the LoRA files go
    log: list[str] = field(default_factory=list)


def _init(ray: Any, address: str) -> bool:
    """Connects to the cluster; True when this run started it (and stops it at the end)."""
    import os

    # the client travels to the actors as code (no shared disk); the pack itself must be in the nodes' ComfyUI
    package = Path(__file__).resolve().parents[2]  # cross_init_core/
    runtime_env = {"py_modules": [str(package)], "excludes": ["__pycache__"]}
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address == "local":
        ray.init(runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
        return True
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    return False


def _actor_count(ray: Any, settings: RaySettings, jobs: int) -> int:
    if settings.actors:
        return min(settings.actors, jobs)
    if settings.gpus_per_job <= 0:
        return 1
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus < settings.gpus_per_job:
        raise UsageError(f"--ray: the cluster has {gpus:g} GPU(s), fewer than --ray-gpus-per-job {settings.gpus_per_job:g}; "
                         "use --ray-gpus-per-job 0 for a CPU-only cluster")
    return max(1, min(jobs, int(gpus // settings.gpus_per_job)))


def run_on_ray(args: argparse.Namespace, jobs: list[Job], workflow: dict[str, Any], out_dir: Path,
               settings: RaySettings, node_types: set[str], needs: dict[str, set[str]]) -> None:
    """Runs every pending job on Ray actors; sets each job's status, message, path, server, seconds, loss, steps."""
    ray = import_ray()
    started_here = _init(ray, settings.address)
    try:
        count = _actor_count(ray, settings, len(jobs))
        actor_class = ray.remote(ComfyWorker).options(num_cpus=1, num_gpus=settings.gpus_per_job, max_restarts=MAX_ATTEMPTS,
                                                      max_task_retries=0, max_concurrency=1)
        actors = [actor_class.remote(settings.setup) for _ in range(count)]
        log.info("ray: %d actor(s), %g GPU(s) each, starting ComfyUI (%s) on their nodes ...", count,
                 settings.gpus_per_job, settings.setup.comfyui)
        try:
            infos: list[WorkerInfo] = ray.get([a.prepare.remote(node_types, needs) for a in actors], timeout=START_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise UsageError(f"--ray: the actors' ComfyUI did not answer within {START_SECONDS:.0f} s (is there room on the "
                             "cluster for them? `ray status` shows it)") from None
        except ray.exceptions.RayError as exc:
            raise UsageError(f"--ray: an actor could not start: {str(exc).strip().splitlines()[-1]}") from None
        problems = [p for info in infos for p in info.problems]
        face_prep = face_prep_settings(args, workflow, infos[0].face_prep, problems)
        if problems:
            raise UsageError("\n".join(problems))
        make_prompt = PromptBuilder(workflow, graph_settings(args, infos[0].ckpt_name, face_prep))
        _schedule(ray, actors, [i.node for i in infos], jobs, make_prompt, out_dir, settings)
    finally:
        if started_here:
            ray.shutdown()


def _schedule(ray: Any, actors: list[Any], nodes: list[str], jobs: list[Job], make_prompt: PromptBuilder, out_dir: Path,
              settings: RaySettings) -> None:
    from ray.exceptions import RayActorError, RayTaskError

    pending = deque(jobs)
    idle = list(range(len(actors)))
    running: dict[Any, _Running] = {}
    recovering: dict[Any, int] = {}  # a restarted actor's readiness call -> the actor's index
    attempts: dict[str, int] = {}
    deaths = [0] * len(actors)

    def restarted(index: int) -> None:
        """An actor that died (or was killed) takes jobs again once Ray has restarted it; for good after too many."""
        deaths[index] += 1
        if deaths[index] <= MAX_ATTEMPTS:
            recovering[actors[index].pid.options(max_task_retries=-1).remote()] = index

    numbers = {job.name: i for i, job in enumerate(jobs, start=1)}
    while pending or running:
        while pending and idle:
            job, index = pending.popleft(), idle.pop(0)
            attempts[job.name] = attempts.get(job.name, 0) + 1
            photos = [upright_photo(p) for p in job.images]  # as the farm uploads them
            log.info("[%d/%d] %s: %d photo(s) on ray actor %d (%s)%s", numbers[job.name], len(jobs), job.name, len(photos),
                     index, nodes[index], f" (attempt {attempts[job.name]})" if attempts[job.name] > 1 else "")
            ref = actors[index].run_job.remote(job, photos, make_prompt)
            running[ref] = _Running(job, actors[index], index, time.perf_counter())
        if not running and not recovering:  # every actor is gone for good
            for job in pending:
                job.status, job.message = "failed", "no ray actor left to run it (each died more often than Ray restarts it)"
                log.error("%s: failed: %s", job.name, job.message)
            return
        ready, _ = ray.wait([*running, *recovering], num_returns=1, timeout=POLL_SECONDS)
        now = time.perf_counter()
        for ref in [r for r in ready if r in recovering]:
            index = recovering.pop(ref)
            try:
                ray.get(ref)
            except RayActorError:
                log.warning("ray actor %d is gone for good (Ray did not restart it)", index)
                continue
            log.info("ray actor %d is back (restarted by Ray)", index)
            idle.append(index)
        ready = [r for r in ready if r in running]
        for entry in running.values():
            if not entry.timed_out and now - entry.started > settings.job_timeout:
                entry.timed_out = True  # its call now ends with RayActorError: an attempt, like a dead actor's
                log.warning("%s: past --job-timeout (%.0f s) on ray actor %d; the actor is killed and Ray restarts it",
                            entry.job.name, settings.job_timeout, entry.number)
                ray.kill(entry.actor, no_restart=False)
        for ref in ready:
            entry = running.pop(ref)
            job = entry.job
            try:
                trained: Trained = ray.get(ref)
            except RayActorError as exc:
                restarted(entry.number)
                if not entry.timed_out:
                    log.warning("ray actor %d died under %s (%s); Ray restarts it (restart %d of at most %d)", entry.number,
                                job.name, type(exc).__name__, deaths[entry.number], MAX_ATTEMPTS)
                why = "past --job-timeout" if entry.timed_out else "its ray actor died"
                _retry_or_fail(job, entry, attempts, pending, why, now)
                continue
            except RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, ServerGone):  # its ComfyUI died: a restarted actor starts a fresh one
                    log.warning("ray actor %d: %s; the actor is restarted", entry.number, cause)
                    ray.kill(entry.actor, no_restart=False)
                    restarted(entry.number)
                    _retry_or_fail(job, entry, attempts, pending, str(cause), now)
                    continue
                idle.append(entry.number)
                message = str(cause) if isinstance(cause, (PromptFailed, PromptRejected, ValueError, OSError)) else str(exc)
                _fail(job, entry, message, now)  # inside a node: the same graph fails the same way, not retried
                continue
            idle.append(entry.number)
            try:
                finish_job(job, f"ray actor {entry.number} ({nodes[entry.number]})", trained, out_dir, settings.overwrite,
                           settings.lora_out)
            except OSError as exc:
                _fail(job, entry, str(exc), now)
                continue
            job.seconds = now - entry.started
            log.info("%s: saved %s (use it as embedding:%s) [ray actor %d, %.1f s]", job.name, job.path, job.name, entry.number,
                     job.seconds)


def _retry_or_fail(job: Job, entry: _Running, attempts: dict[str, int], pending: deque[Job], why: str, now: float) -> None:
    if attempts[job.name] < MAX_ATTEMPTS:
        log.warning("%s: %s; the job goes back to the queue", job.name, why)
        pending.appendleft(job)
    else:
        _fail(job, entry, f"{attempts[job.name]} attempts failed; last: {why}", now)


def _fail(job: Job, entry: _Running, message: str, now: float) -> None:
    job.status, job.message, job.server = "failed", message, f"ray actor {entry.number}"
    job.seconds = now - entry.started
    log.error("%s: failed on ray actor %d: %s", job.name, entry.number, message)
