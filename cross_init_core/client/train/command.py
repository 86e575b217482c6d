"""Headless batch runner: `python -m cross_init_core train ...` trains face embeddings from a terminal.

It is a client of ComfyUI's HTTP API: it queues the shipped API workflow (workflows/api/cross_init_<mode>.json)
with the given photos, checkpoint and settings on one or more ComfyUI servers (`--server`), or on a ComfyUI it
starts itself on loopback for the run, and writes the trained files into --out (default: the local ComfyUI's
embeddings folder). See docs/batch_runner.md.

Output: progress bars and log messages go to stderr (a logging handler and the bar's own writes); the
summary table goes to stdout, so `... > summary.txt` keeps just the table.
Exit codes: 0 all embeddings written, 1 some training failed, 2 bad arguments or inputs (nothing was run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ... import __version__
from ...common.atomic_files import replace_atomically
from ...common.lora_settings import PRESETS as LORA_PRESETS
from ...common.lora_settings import RANK
from ...common.settings import BATCH_SIZE, DETECTORS, MODES, PRESETS, RESOLUTION, SEED, STEPS, IntRange
from ..common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    IMAGE_SUFFIXES,
    PROG,
    UsageError,
    add_console_options,
    add_local_comfyui_options,
    file_problem,
    folder_problem,
    int_in,
    learning_rate,
    parse_command,
    run_command,
)
from ..progress import ProgressBar
from ..prompt_graph import EMBEDDING_LOADER, PHOTO_LOADER, SAVER, TRAINER, WORKFLOW_DIR, load_workflow, nodes_of
from .graph import PromptBuilder, face_prep_settings, graph_settings, photos_stay_whole
from .jobs import (
    Job,
    Outputs,
    bundle_name_problems,
    clash_problems,
    collect_jobs,
    format_summary,
    input_problems,
    long_name_problems,
    resume_sources,
    same_shape_problems,
    summary_rows,
)
from .lora_graph import LORA_SAVER, LORA_SAVER_INPUTS, PIVOTAL_LORA

# the HTTP client (comfy_client, aiohttp) and the modules on it load inside the functions that run, so --help,
# --version and bad arguments never load them; here they are named for the type checker only
if TYPE_CHECKING:
    from ..comfy_client import LocalServer
    from .farm import Server

log = logging.getLogger(__name__)

PRESET_MODES = tuple(m for m in MODES if m != "custom")
ADDRESSES = "auto (the cluster this machine belongs to), ray://HOST:PORT (a remote one) or local (a cluster for this run)"
DEFAULT_JOB_TIMEOUT = 6 * 3600.0  # generous: a full SDXL run with samples on a slow card stays well inside it


# ---------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    fast, full = PRESETS["fast"], PRESETS["full"]
    parser = argparse.ArgumentParser(
        prog=f"{PROG} train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train Cross-Init face embeddings without the ComfyUI editor: queues the pack's shipped API workflow\n"
            "on ComfyUI servers over their HTTP API (--server; without it, a ComfyUI started on loopback for this\n"
            "run) and saves NAME.safetensors into --out (default: ComfyUI's embeddings folder, models/embeddings),\n"
            "usable in any prompt as embedding:NAME."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} train --checkpoint v1-5-pruned-emaonly.safetensors --images me1.jpg me2.jpg --name my_face\n"
            f"  {PROG} train --checkpoint sd15.safetensors --folder faces/ --mode full --skip-existing\n"
            f"  {PROG} train --checkpoint /models/sd15.safetensors --images a.png --name anna --steps 50 --seed 7\n"
            f"  {PROG} train --checkpoint sd15.safetensors --folder faces/ --server http://gpu1:8188 --server http://gpu2:8188\n"
            f"  {PROG} train --checkpoint sd15.safetensors --images me.jpg --name me --lora   # + loras/me.safetensors\n\n"
            f"presets: fast = {fast.steps} steps, batch {fast.batch_size}, lr {fast.learning_rate}; "
            f"full = {full.steps} steps, batch {full.batch_size}, lr {full.learning_rate} (the paper).\n"
            f"LoRA presets (--lora-mode): fast = {_lora_preset_text('fast')}; full = {_lora_preset_text('full')}.\n"
            "--steps/--batch-size/--learning-rate switch the trainer to mode `custom` with the preset's other values.\n\n"
            "output: progress and messages on stderr, the summary table on stdout.\n"
            "exit codes: 0 all embeddings written; 1 some training failed (the others were still trained);\n"
            "            2 bad arguments or inputs (missing checkpoint or photo, bad or clashing name, a server that\n"
            "            lacks the checkpoint or the pack): nothing was run; 130 stopped with Ctrl-C."
        ),
    )
    parser.add_argument("--version", action="version", version=f"Cross-Init {__version__}")

    what = parser.add_argument_group("what to train (give --images with --name, or --folder)")
    source = what.add_mutually_exclusive_group()
    source.add_argument("--images", nargs="+", metavar="FACE", type=Path,
                        help=f"1-5 photos of one person's face ({', '.join(IMAGE_SUFFIXES)}); one embedding named --name.")
    source.add_argument("--folder", type=Path, metavar="DIR",
                        help="batch mode: one embedding per sub-folder of DIR (named after the sub-folder, trained on its photos) "
                             "and one per photo directly in DIR (named after the file stem). Hidden entries are ignored.")
    what.add_argument("--name", help="embedding name with --images: letters, digits, _ - . (no spaces); "
                                     "written as models/embeddings/NAME.safetensors, used as embedding:NAME.")
    what.add_argument("--checkpoint", required=False, metavar="FILE",
                      help="SD 1.x/2.x/SDXL checkpoint: a name in ComfyUI's checkpoints folders (as the Load Checkpoint node "
                           "lists it, e.g. sd15/model.safetensors; every --server must have it) or, for the local ComfyUI, a "
                           "path to a checkpoint file anywhere (its folder is added to the checkpoint search paths for this "
                           "run only; nothing is copied). Required.")

    train = parser.add_argument_group("training")
    train.add_argument("--mode", choices=PRESET_MODES, default="fast",
                       help="preset: fast (default) or full; selects workflows/api/cross_init_<mode>.json.")
    train.add_argument("--seed", type=int_in(SEED), default=0, help="training seed (default 0; same seed = same result on CPU).")
    train.add_argument("--steps", type=int_in(STEPS), metavar="N", help="training steps (overrides the preset).")
    train.add_argument("--batch-size", type=int_in(BATCH_SIZE), metavar="B", help="samples per step (overrides the preset).")
    train.add_argument("--learning-rate", type=learning_rate, metavar="LR", help="AdamW learning rate (overrides the preset).")
    train.add_argument("--resolution", type=int_in(RESOLUTION), metavar="PX",
                       help="training resolution, a multiple of 64 (default: the workflow's, 512; 1024 for SDXL). Also the "
                            "face-prep crop size when the workflow has a face-prep node.")
    train.add_argument("--detector", metavar="NAME", help=f"face-prep detector ({', '.join(DETECTORS)}); only for workflows "
                                                          "with a Cross-Init Face Prep node.")
    train.add_argument("--on-no-face", metavar="WHAT", help="face-prep: error (default) stops that embedding on a photo "
                                                            "without a face; skip drops the photo.")

    out = parser.add_argument_group("output")
    clash = out.add_mutually_exclusive_group()
    clash.add_argument("--overwrite", action="store_true", help="replace existing files of the names the run writes in --out "
                                                                "(without it, a taken name stops the run before any work).")
    clash.add_argument("--skip-existing", action="store_true", help="do not train names whose file already exists (resume a batch).")
    clash.add_argument("--resume", action="store_true",
                       help="continue each NAME from its file in --out for --steps (or the preset's) more steps: the "
                            "regularizer still pulls toward its Cross-Init start, the step count goes on, the optimizer "
                            "goes on from the state the file carries (files from 0.3.0 on; else it starts fresh). NAME is "
                            "replaced; the continued file is kept as NAME-stepNNNN (its step count), or as "
                            "NAME-original-RUNID when another trainer wrote it. Any other file it would write must be new.")
    out.add_argument("--save-every", type=int_in(STEPS), metavar="N",
                     help="also keep the tokens every N steps: NAME-stepNNNN.safetensors beside NAME in --out (e.g. 80 with "
                          "the full preset gives 4), to pick the best step with `eval`.")
    out.add_argument("--out", type=Path, metavar="DIR",
                     help="folder the trained NAME.safetensors files are written to (default: the local ComfyUI's "
                          "embeddings folder, models/embeddings; required with --server when no local ComfyUI is found).")
    out.add_argument("--samples", action="store_true",
                     help="also run the workflow's sample renders (KSampler -> SaveImage, files "
                          "output/cross_init/NAME_*.png on the server that trained NAME; NAME-RUNID_*.png on a remote one) and save the "
                          "loss curve; "
                          "default: train and save only.")
    out.add_argument("--summary-json", type=Path, metavar="FILE", help="also write the summary as JSON to FILE.")
    add_console_options(out, "summary table")

    host = parser.add_argument_group("ComfyUI")
    host.add_argument("--server", action="append", metavar="URL|FILE",
                      help="a running ComfyUI server to train on (http://host:port); repeat it for several, or give a file "
                           "with one URL per line. Each server trains one person at a time. Without --server the runner "
                           "starts the local ComfyUI on 127.0.0.1 for the run and stops it afterwards.")
    add_local_comfyui_options(host, "an API-format workflow to run instead of the shipped one (same node types; nodes are "
                                    "found by type).")
    _add_lora_options(parser)
    cluster = parser.add_argument_group("Ray cluster (instead of --server; needs `pip install ray`)")
    cluster.add_argument("--ray", metavar="ADDRESS",
                         help=f"run the jobs on a Ray cluster: {ADDRESSES}. One actor per GPU starts the ComfyUI at --comfyui "
                              "(the same path on every node, with this pack installed) on its node and trains one person at "
                              "a time; photos and files travel through Ray's object store.")
    cluster.add_argument("--ray-gpus-per-job", type=float, default=1.0, metavar="G",
                         help="GPUs per actor (default 1; 0 for CPU-only clusters).")
    cluster.add_argument("--ray-actors", type=int_in(IntRange(1, 4096)), metavar="N",
                         help="how many actors (default: one per --ray-gpus-per-job GPUs of the cluster, at most one per "
                              "person; 1 on a CPU-only cluster).")
    cluster.add_argument("--job-timeout", type=float, default=DEFAULT_JOB_TIMEOUT, metavar="SECONDS",
                         help=f"a job running longer has its actor killed and restarted, and runs again as a further "
                              f"attempt (default {DEFAULT_JOB_TIMEOUT:.0f} s).")
    return parser


def _lora_preset_text(mode: str) -> str:
    p = LORA_PRESETS[mode]
    return f"rank {p.rank}, alpha {p.alpha:g}, lr {p.learning_rate:g}, {p.steps} steps of batch {p.batch_size}"


def _add_lora_options(parser: argparse.ArgumentParser) -> None:
    lora = parser.add_argument_group("pivotal LoRA (experimental; docs/pivotal.md)")
    lora.add_argument("--lora", action="store_true",
                      help="after Cross-Init, train a UNet LoRA around each trained token (Cross-Init Pivotal LoRA) and "
                           "bring it back too: NAME.safetensors into --lora-out, with the token bundled as NAME, beside "
                           "NAME.safetensors in --out. Both files are written, or neither.")
    lora.add_argument("--lora-mode", choices=PRESET_MODES, default="fast",
                      help="the LoRA stage's preset: fast (default) or full.")
    lora.add_argument("--lora-steps", type=int_in(STEPS), metavar="N", help="LoRA training steps (overrides the preset).")
    lora.add_argument("--lora-rank", type=int_in(RANK), metavar="R",
                      help="LoRA rank (overrides the preset; alpha follows it, keeping the preset's alpha / rank).")
    lora.add_argument("--lora-batch-size", type=int_in(BATCH_SIZE), metavar="B",
                      help="LoRA samples per step (overrides the preset).")
    lora.add_argument("--lora-out", type=Path, metavar="DIR",
                      help="folder the LoRA files are written to (made when missing). Default: the loras folder beside "
                           "the default --out (the local ComfyUI's models/loras), or DIR/loras when --out DIR is given.")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    if not argv:
        parser.print_usage(sys.stderr)
        parser.exit(EXIT_USAGE, f"{PROG}: error: give a command: train (see --help)\n")
    elif argv[0] not in ("train", "-h", "--help", "--version"):
        parser.error(f"unknown command {argv[0]!r}: the command is `train` (see --help)")
    args = parse_command(parser, argv, "train")
    if args.checkpoint is None:
        parser.error("--checkpoint is required")
    if args.images is None and args.folder is None:
        parser.error("give --images FACE... with --name NAME, or --folder DIR")
    if args.images is not None and not args.name:
        parser.error("--images needs --name NAME (the embedding's file name)")
    if args.folder is not None and args.name:
        parser.error("--name is for --images; with --folder the names come from the sub-folders and files")
    if not args.lora:
        given = [f"--{k.replace('_', '-')}" for k in ("lora_steps", "lora_rank", "lora_batch_size", "lora_out")
                 if getattr(args, k) is not None]
        if given or args.lora_mode != "fast":
            parser.error(f"{', '.join(given) or '--lora-mode'} is for the LoRA stage: add --lora")
    elif args.save_every:
        parser.error("--save-every and --lora: the LoRA stage's checkpoints are not brought back (yet); train the token "
                     "with --save-every, pick its best step with `eval`, and train the LoRA in the editor, or leave out "
                     "--save-every")
    if args.ray is not None:
        if args.server:
            parser.error("--ray and --server exclude each other: the jobs go to a Ray cluster or to servers")
        if args.ray != "local" and args.ray != "auto" and not args.ray.startswith("ray://"):
            parser.error(f"--ray {args.ray}: use {ADDRESSES}")
        if args.ray_gpus_per_job < 0 or args.job_timeout <= 0:
            parser.error("--ray-gpus-per-job must be 0 or more and --job-timeout more than 0")
    return args


def server_urls(values: list[str]) -> list[str]:
    """--server values: URLs, or files with one URL per line (blank lines and # comments ignored)."""
    from ..comfy_client import normalize_url

    urls: list[str] = []
    for value in values:
        path = Path(value).expanduser()
        if "://" not in value and path.is_file():
            lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
            found = [line for line in lines if line]
            if not found:
                raise UsageError(f"--server {value}: the file lists no URLs")
            urls += [normalize_url(u) for u in found]
        else:
            urls.append(normalize_url(value))
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    if duplicates:
        raise UsageError(f"--server: {', '.join(duplicates)} given twice (each server runs one job at a time)")
    return urls


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs the CLI; returns the exit code (130 when stopped with Ctrl-C)."""
    return run_command(argv, parse_args, _run, "interrupted: files already written are complete; nothing half-written was left",
                       stdout, stderr)


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from .. import local_comfyui

    jobs = collect_jobs(args)
    problems = input_problems(jobs)
    if args.lora:
        problems += bundle_name_problems(jobs)
    workflow_path = args.workflow or WORKFLOW_DIR / f"cross_init_{args.mode}.json"
    try:
        workflow = load_workflow(Path(workflow_path))
    except (OSError, ValueError) as exc:
        problems.append(f"workflow {workflow_path}: cannot be read ({exc})")
        workflow = {}
    for class_type in (TRAINER, SAVER, "LoadImage"):
        if workflow and not nodes_of(workflow, class_type):
            problems.append(f"workflow {workflow_path}: it has no {class_type} node")
    if workflow and len(nodes_of(workflow, "LoadImage")) == 1 and not photos_stay_whole(workflow):
        problems += same_shape_problems(jobs, workflow_path)
    # where the results go: refused now rather than after the training
    if args.out is not None and (problem := folder_problem("--out", args.out.expanduser())):
        problems.append(problem)
    if args.summary_json is not None and (problem := file_problem("--summary-json", args.summary_json)):
        problems.append(problem)
    urls = server_urls(args.server) if args.server else []
    if problems:
        raise UsageError("\n".join(problems))

    with tempfile.TemporaryDirectory(prefix="cross_init_run_") as scratch:
        local = None
        local_embeddings: Path | None = None
        ckpt_name = args.checkpoint
        if not urls and not args.ray:
            local, ckpt_name, local_embeddings = local_comfyui.local_comfyui(args.comfyui, args.base_directory, args.checkpoint,
                                                                             Path(scratch), args.cpu)
        elif args.out is None:
            comfyui = args.comfyui or local_comfyui.default_comfyui_path()[0]
            if comfyui is not None and local_comfyui.looks_like_comfyui(comfyui):
                local_embeddings = comfyui.resolve() / "models" / "embeddings"
            else:
                raise UsageError("--out DIR is needed: no local ComfyUI was found whose embeddings folder could take the files")
        out_dir: Path = (args.out or local_embeddings).expanduser()  # type: ignore[union-attr]
        lora_dir = _lora_dir(args, out_dir, problems)
        if args.resume:
            problems += resume_sources(jobs, out_dir)
        steps = args.steps or PRESETS[args.mode].steps
        outputs = Outputs(steps, args.save_every or 0, args.resume)
        # every name the run writes into --out (and --lora-out) is known now (the servers save under new run-unique
        # names only)
        problems += clash_problems(jobs, out_dir, outputs, args.overwrite, args.skip_existing, lora_dir)
        problems += long_name_problems(jobs, outputs)
        if problems:
            raise UsageError("\n".join(problems))
        if args.ray:
            return _serve_on_ray(args, jobs, workflow, out_dir, lora_dir, stdout)
        try:
            return asyncio.run(_serve(args, jobs, workflow, ckpt_name, urls, local, out_dir, lora_dir, stdout, stderr))
        finally:
            if local is not None:
                local.stop()
                if local_embeddings is not None:
                    from .farm import remove_run_files

                    remove_run_files(jobs, local_embeddings, local_embeddings.parents[1] / "output")


def _lora_dir(args: argparse.Namespace, out_dir: Path, problems: list[str]) -> Path | None:
    """--lora: where the LoRA files go (--lora-out; default: the loras folder beside the default --out, the local
    ComfyUI's models/loras, or OUT/loras). It must be a folder other than --out: both files are NAME.safetensors."""
    if not args.lora:
        return None
    if args.lora_out is not None:
        lora_dir = args.lora_out.expanduser()
    else:
        lora_dir = out_dir.parent / "loras" if args.out is None else out_dir / "loras"
    if (problem := folder_problem("--lora-out", lora_dir)):
        problems.append(problem)
    elif lora_dir.resolve() == out_dir.resolve():
        problems.append(f"--lora-out {lora_dir}: it is --out too, and both files are NAME.safetensors; give another folder")
    return lora_dir


async def _serve(args: argparse.Namespace, jobs: list[Job], workflow: dict[str, Any], ckpt_name: str, urls: list[str],
                 local: LocalServer | None, out_dir: Path, lora_dir: Path | None, stdout: TextIO, stderr: TextIO) -> int:
    import aiohttp

    from .. import local_comfyui
    from ..comfy_client import ComfyClient
    from . import farm

    async with aiohttp.ClientSession() as session:
        if local is not None:
            servers = [farm.Server(await local_comfyui.connect_local(local, session), local=local)]
        else:
            servers = [farm.Server(ComfyClient(url, session)) for url in urls]

        node_types, needs = _node_needs(args, workflow)
        problems = await farm.check_servers(servers, ckpt_name, node_types, needs)
        face_prep = face_prep_settings(args, workflow, servers[0].face_prep if servers else None, problems)
        if problems:
            raise UsageError("\n".join(problems))
        pending = [j for j in jobs if j.status == "pending"]
        log.info("checkpoint: %s; output folder: %s%s; %d embedding(s) to train on %d server(s)", ckpt_name, out_dir,
                 f" (LoRAs: {lora_dir})" if lora_dir is not None else "", len(pending), len(servers))

        make_prompt = PromptBuilder(workflow, graph_settings(args, ckpt_name, face_prep))

        enabled = not args.no_progress and not args.quiet

        def progress(job: Job, server: Server, number: int) -> ProgressBar:
            label = f"[{number}/{len(pending)}] {job.name}" + ("" if len(servers) == 1 else f" @ {server.label}")
            return ProgressBar(stderr, label, enabled=enabled, redraw=len(servers) == 1)

        if pending:
            await farm.run_jobs(servers, pending, make_prompt, out_dir, progress, args.overwrite, lora_dir)

    return _summary(args, jobs, stdout)


def _node_needs(args: argparse.Namespace, workflow: dict[str, Any]) -> tuple[set[str], dict[str, set[str]]]:
    """The node types this run's graph uses and the inputs it needs that older packs lack (refused before any work,
    naming the server)."""
    node_types = {node["class_type"] for node in workflow.values()} | ({EMBEDDING_LOADER} if args.resume else set())
    if photos_stay_whole(workflow):
        node_types.add(PHOTO_LOADER)
    needs = {TRAINER: {"save_every"} if args.save_every else set(), EMBEDDING_LOADER: {"file"} if args.resume else set()}
    if args.lora:  # the pivotal nodes, and a Save LoRA that saves as the runner needs (refused before any work)
        node_types |= {PIVOTAL_LORA, LORA_SAVER}
        needs[LORA_SAVER] = set(LORA_SAVER_INPUTS)
    return node_types, needs


def _serve_on_ray(args: argparse.Namespace, jobs: list[Job], workflow: dict[str, Any], out_dir: Path, lora_dir: Path | None,
                  stdout: TextIO) -> int:
    from .. import local_comfyui
    from . import ray_farm

    comfyui = args.comfyui or local_comfyui.default_comfyui_path()[0]
    if comfyui is None:
        raise UsageError("--ray: give --comfyui PATH, the ComfyUI (with this pack in its custom_nodes) at the same path on "
                         "every node")
    setup = ray_farm.WorkerSetup(str(Path(comfyui).expanduser().resolve()),
                                 str(args.base_directory.expanduser().resolve()) if args.base_directory else None,
                                 args.checkpoint, args.cpu or args.ray_gpus_per_job == 0)
    settings = ray_farm.RaySettings(args.ray, args.ray_gpus_per_job, args.ray_actors, args.job_timeout, setup, args.overwrite,
                                    lora_dir)
    pending = [j for j in jobs if j.status == "pending"]
    if pending:
        node_types, needs = _node_needs(args, workflow)
        ray_farm.run_on_ray(args, pending, workflow, out_dir, settings, node_types, needs)
    return _summary(args, jobs, stdout)


def _summary(args: argparse.Namespace, jobs: list[Job], stdout: TextIO) -> int:
    stdout.write(format_summary(jobs, args.lora))
    stdout.flush()
    if args.summary_json:
        replace_atomically(args.summary_json, (json.dumps(summary_rows(jobs, args.lora), indent=2) + "\n").encode("utf-8"))
    return EXIT_OK if all(j.status in ("ok", "skipped") for j in jobs) else EXIT_FAILED
