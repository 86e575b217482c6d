"""`python -m cross_init_core eval ...`: the paper's evaluation of one trained embedding, from a terminal.

For every prompt (the paper's 20, or a file) it runs the shipped workflows/api/cross_init_eval.json on a
ComfyUI server through its HTTP API (the batch runner's client, cross_init_core/comfy_client.py; a local
ComfyUI is started as a child process unless --server is given): N images with the embedding, the
identity score against the reference photos and the CLIP prompt score. The images, a table per prompt and
overall (scores.csv, scores.json) and a contact sheet (contact_sheet.jpg) land in one output folder.

Exit codes: 0 done; 1 a run failed on the server (the table holds the prompts finished before it);
2 bad arguments or inputs, found before any image is generated.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .cli_comfy import WORKFLOW_DIR
from .cli_common import (
    UsageError,
    add_console_options,
    add_local_comfyui_options,
    check_console_and_local,
    int_in,
    photo_problem,
    run_command,
)
from .errors import CrossInitError
from .eval_graph import CKPT_LOADER, PROMPT_SCORE, REQUIRED_NODES, checkpoint_loader_type
from .prompt_graph import load_workflow, nodes_of

log = logging.getLogger(__name__)

PROG = "python -m cross_init_core eval"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
WORKFLOW_NAME = "cross_init_eval.json"
MAX_PER_PROMPT = 64
MAX_SEED = 2**64 - 1 - 10_000  # KSampler's seed maximum, less room for seed + prompt index
DEFAULT_CLIP_MODEL = "clip-vit-base-patch32"  # the paper's judge, as docs/evaluation.md names its folder


# ---------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Scores a trained face embedding as the Cross Initialization paper does: N images per prompt with the "
            "embedding, the identity score of each image against the reference photos, and the CLIP similarity of "
            "each image and its prompt (without the person token)."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} --checkpoint v2-1_512-ema-pruned.safetensors --embedding my_face --faces me.jpg\n"
            f"  {PROG} --checkpoint sd15.safetensors --embedding my_face --faces me1.jpg me2.jpg --prompts mine.txt "
            "--per-prompt 8 --no-prompt-score\n\n"
            "output (in --output, default ./cross_init_eval/EMBEDDING/): images/pPP_iII.png, scores.csv and scores.json\n"
            "(one row per prompt and an overall row), contact_sheet.jpg. See docs/evaluation.md for what the numbers mean.\n\n"
            "exit codes: 0 done; 1 a run failed on the server (the table holds the prompts finished before it);\n"
            "            2 bad arguments or inputs (missing checkpoint, embedding, photo or scoring model, bad prompts\n"
            "            file, N < 1): nothing was generated."
        ),
    )
    parser.add_argument("--version", action="version", version=f"Cross-Init {__version__}")
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--checkpoint", required=True, metavar="FILE",
                      help="the checkpoint to generate with (the one the embedding was trained on; the paper: SD 2.1-base, "
                           "v2-1_512-ema-pruned.safetensors): a name in ComfyUI's checkpoints folders or a path to a file.")
    what.add_argument("--embedding", required=True, metavar="NAME",
                      help="the trained embedding, by name as Cross-Init Load Embedding lists it (my_face or "
                           "my_face.safetensors, in ComfyUI's embeddings folders, where `train` writes it).")
    what.add_argument("--faces", required=True, nargs="+", type=Path, metavar="PHOTO",
                      help="reference photo(s) of the person (the paper: the one photo trained on). Several are averaged.")
    what.add_argument("--prompts", default="paper", metavar="paper|FILE",
                      help="`paper` (default): the paper's 20 evaluation prompts; or a text file, one prompt per line with "
                           "the person written as {} or <face> (e.g. 'a {} person on the beach'); # starts a comment.")
    what.add_argument("--per-prompt", type=int_in(1, MAX_PER_PROMPT), default=4, metavar="N",
                      help=f"images per prompt (1..{MAX_PER_PROMPT}, default 4; the authors' script makes 16).")
    what.add_argument("--seed", type=int_in(0, MAX_SEED), default=0,
                      help="sampler seed of the first prompt (prompt i uses seed + i); same seed, same images.")

    score = parser.add_argument_group("scores")
    score.add_argument("--identity-backend", choices=("auto", "insightface", "dlib"), default="auto",
                       help="face recognizer: insightface ArcFace (cosine, comparable with papers), dlib (distance, a quick "
                            "check), or auto (insightface when its models are installed, else dlib).")
    clip = score.add_mutually_exclusive_group()
    clip.add_argument("--clip-model", metavar="NAME",
                      help="the CLIP for the prompt score, a folder in ComfyUI/models/clip_scoring/ "
                           f"(default: {DEFAULT_CLIP_MODEL} when present, else the only one there).")
    clip.add_argument("--no-prompt-score", action="store_true",
                      help="skip the prompt score (no CLIP scoring model needed); the table leaves it empty.")

    sampling = parser.add_argument_group("sampling (defaults: the workflow's, i.e. the paper's)")
    sampling.add_argument("--steps", type=int_in(1, 1000), metavar="N", help="sampler steps (default 50).")
    sampling.add_argument("--resolution", type=int_in(64, 2048, multiple=8), metavar="PX",
                          help="image size in pixels (default 512; 768 for SD 2.x 768-v, 1024 for SDXL).")

    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, metavar="DIR", help="folder for images, tables and the contact sheet "
                                                                 "(default: ./cross_init_eval/EMBEDDING).")
    out.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --output.")
    add_console_options(out, "table")

    host = parser.add_argument_group("ComfyUI")
    host.add_argument("--server", metavar="URL",
                      help="a running ComfyUI server (http://host:port) to run on; without it a local ComfyUI is started on "
                           "127.0.0.1 for the run. The photos are uploaded; the images are downloaded.")
    add_local_comfyui_options(host, f"an API-format workflow to run instead of the shipped workflows/api/{WORKFLOW_NAME} "
                                    "(same node types).")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    argv = list(argv)
    if argv and argv[0] == "eval":
        argv = argv[1:]
    args = parser.parse_args(argv)
    check_console_and_local(parser, args)
    return args


# ---------------------------------------------------------------------------------------------
# Checks before any work (no ComfyUI needed)


@dataclass
class Plan:
    prompts: list[str]
    faces: list[Path]
    embedding: str  # as given (a name; matched against the server's list later)
    output: Path
    workflow: dict[str, Any] = field(default_factory=dict)


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or (len(value) > 1 and value[1] == ":")


def input_problems(args: argparse.Namespace) -> tuple[Plan | None, list[str]]:
    """Everything that can be checked without a server: the checkpoint if given as a path, the embedding
    name, the photos, the prompts, the output folder and the workflow. All problems at once."""
    from .evaluation import read_prompts

    problems: list[str] = []
    if _looks_like_path(args.checkpoint) and not Path(args.checkpoint).expanduser().is_file():
        problems.append(f"--checkpoint {args.checkpoint}: no such file; give an existing checkpoint file, or a name from "
                        "ComfyUI's checkpoints folders")
    embedding = args.embedding.strip()
    if not embedding or _looks_like_path(embedding):
        hint = "empty" if not embedding else "no such file" if not Path(embedding).expanduser().exists() else "a path, not a name"
        problems.append(f"--embedding {args.embedding}: {hint}; give the embedding's name as Cross-Init Load Embedding "
                        "lists it (e.g. my_face), and put the file into ComfyUI/models/embeddings if it is elsewhere")
    for photo in args.faces:
        problem = photo_problem(photo, IMAGE_SUFFIXES)
        if problem:
            problems.append(f"--faces {photo}: {problem}")
    prompts: list[str] = []
    try:
        prompts = read_prompts(args.prompts)
    except CrossInitError as exc:
        problems.append(str(exc))
    output = (args.output or Path("cross_init_eval") / Path(embedding).stem).expanduser()
    if output.exists() and not output.is_dir():
        problems.append(f"--output {output}: exists and is not a folder")
    elif (output / "scores.json").exists() and not args.overwrite:
        problems.append(f"--output {output}: holds the results of an earlier run (scores.json); choose another folder or "
                        "pass --overwrite")
    workflow: dict[str, Any] = {}
    workflow_path = args.workflow or WORKFLOW_DIR / WORKFLOW_NAME
    try:
        workflow = load_workflow(Path(workflow_path))
        for class_type in REQUIRED_NODES:
            if class_type == PROMPT_SCORE and args.no_prompt_score:
                continue
            if len(nodes_of(workflow, class_type)) != 1:
                problems.append(f"--workflow {workflow_path}: needs exactly one {class_type} node")
        if checkpoint_loader_type(workflow) is None:
            problems.append(f"--workflow {workflow_path}: needs exactly one checkpoint loader (a node with a ckpt_name input, "
                            f"e.g. {CKPT_LOADER})")
    except (OSError, ValueError) as exc:
        problems.append(f"--workflow {workflow_path}: cannot be read ({exc})")
    if problems:
        return None, problems
    return Plan(prompts=prompts, faces=list(args.faces), embedding=embedding, output=output, workflow=workflow), []


def match_embedding(name: str, available: Sequence[str]) -> str | None:
    """The server's entry for `name`: exact, else NAME plus an embedding suffix (case-sensitive, as the files)."""
    if name in available:
        return name
    for suffix in EMBEDDING_SUFFIXES:
        if f"{name}{suffix}" in available:
            return f"{name}{suffix}"
    return None


def choose_clip_model(wanted: str | None, available: Sequence[str], no_model: str) -> tuple[str | None, str | None]:
    """(model, problem): --clip-model if listed, else the default if listed, else the only model listed."""
    models = [m for m in available if m != no_model]
    hint = ("put a full CLIP (e.g. openai/clip-vit-base-patch32, transformers layout) into ComfyUI/models/clip_scoring/"
            "<name>/ (docs/evaluation.md), or pass --no-prompt-score to skip the prompt score")
    if wanted is not None:
        if wanted in models:
            return wanted, None
        listed = ", ".join(models) or "none"
        return None, f"--clip-model {wanted}: not in the clip_scoring models folders (found: {listed}); {hint}"
    if not models:
        return None, f"no CLIP scoring model found for the prompt score; {hint}"
    if DEFAULT_CLIP_MODEL in models:
        return DEFAULT_CLIP_MODEL, None
    if len(models) == 1:
        return models[0], None
    return None, f"several CLIP scoring models ({', '.join(models)}): choose one with --clip-model"


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs the command; returns the exit code."""
    return run_command(argv, parse_args, _run, [log], "interrupted", stdout, stderr)


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    plan, problems = input_problems(args)
    if problems or plan is None:
        raise UsageError("\n".join(problems))
    from . import eval_run  # the HTTP client and aiohttp load only when there is work to do

    return eval_run.run(args, plan, stdout, stderr)
