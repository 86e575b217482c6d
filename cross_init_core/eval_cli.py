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
import copy
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .cli import EXIT_USAGE, _int_in
from .errors import CrossInitError

log = logging.getLogger(__name__)

PROG = "python -m cross_init_core eval"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
WORKFLOW_NAME = "cross_init_eval.json"
MAX_PER_PROMPT = 64
MAX_SEED = 2**64 - 1 - 10_000  # KSampler's seed maximum, less room for seed + prompt index
DEFAULT_CLIP_MODEL = "clip-vit-base-patch32"  # the paper's judge, as docs/evaluation.md names its folder

CKPT_LOADER = "CheckpointLoaderSimple"
EMBEDDING_LOADER = "CrossInitLoadEmbedding"
ENCODER = "CrossInitCLIPTextEncode"
IDENTITY = "CrossInitIdentityScore"
PROMPT_SCORE = "CrossInitPromptScore"
TEXT_PREVIEW = "PreviewAny"
REQUIRED_NODES = (EMBEDDING_LOADER, ENCODER, "KSampler", "EmptyLatentImage", "SaveImage", "LoadImage", IDENTITY,
                  PROMPT_SCORE)


class UsageError(CrossInitError):
    """Bad arguments or inputs: exit code 2, nothing generated."""


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
    what.add_argument("--per-prompt", type=_int_in(1, MAX_PER_PROMPT), default=4, metavar="N",
                      help=f"images per prompt (1..{MAX_PER_PROMPT}, default 4; the authors' script makes 16).")
    what.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0,
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
    sampling.add_argument("--steps", type=_int_in(1, 1000), metavar="N", help="sampler steps (default 50).")
    sampling.add_argument("--resolution", type=_int_in(64, 2048, multiple=8), metavar="PX",
                          help="image size in pixels (default 512; 768 for SD 2.x 768-v, 1024 for SDXL).")

    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, metavar="DIR", help="folder for images, tables and the contact sheet "
                                                                 "(default: ./cross_init_eval/EMBEDDING).")
    out.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --output.")
    out.add_argument("--no-progress", action="store_true", help="no progress bar.")
    out.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's and the pack's log messages.")
    out.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the table.")

    host = parser.add_argument_group("ComfyUI")
    host.add_argument("--server", metavar="URL",
                      help="a running ComfyUI server (http://host:port) to run on; without it a local ComfyUI is started on "
                           "127.0.0.1 for the run. The photos are uploaded; the images are downloaded.")
    host.add_argument("--comfyui", type=Path, metavar="PATH",
                      help="the local ComfyUI folder to start (default: the ComfyUI this pack is installed in, else $COMFYUI_PATH).")
    host.add_argument("--base-directory", type=Path, metavar="DIR", help="the local ComfyUI's --base-directory.")
    host.add_argument("--workflow", type=Path, metavar="FILE",
                      help=f"an API-format workflow to run instead of the shipped workflows/api/{WORKFLOW_NAME} (same node types).")
    host.add_argument("--cpu", action="store_true", help="run the local ComfyUI on the CPU even when a GPU is available.")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    argv = list(argv)
    if argv and argv[0] == "eval":
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("--verbose and --quiet exclude each other")
    if args.server and (args.comfyui or args.base_directory or args.cpu):
        parser.error("--comfyui, --base-directory and --cpu are for the local ComfyUI; with --server the server has its own")
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
    from PIL import Image

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
        if not photo.is_file():
            problems.append(f"--faces {photo}: {'not a file' if photo.exists() else 'file not found'}")
        elif photo.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"--faces {photo}: use {', '.join(IMAGE_SUFFIXES)} files")
        else:
            try:
                with Image.open(photo) as image:
                    image.verify()
            except Exception as exc:  # PIL raises many types for broken files
                problems.append(f"--faces {photo}: not a readable image ({exc})")
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
    workflow_path = args.workflow or Path(__file__).resolve().parents[1] / "workflows" / "api" / WORKFLOW_NAME
    try:
        workflow = json.loads(Path(workflow_path).read_text(encoding="utf-8"))
        if not isinstance(workflow, dict):
            raise ValueError("not an API-format workflow (a JSON object of nodes)")
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


def checkpoint_loader_type(workflow: dict[str, Any]) -> str | None:
    """The class of the workflow's one checkpoint loader (the node with a ckpt_name input); None unless exactly one."""
    loaders = [node.get("class_type") for node in workflow.values() if isinstance(node, dict) and "ckpt_name" in node.get("inputs", {})]
    return str(loaders[0]) if len(loaders) == 1 else None


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
# The graph of one prompt (plain JSON; nodes found by type, never by id)


def nodes_of(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if isinstance(node, dict) and node.get("class_type") == class_type]


def _only(prompt: dict[str, Any], class_type: str) -> str:
    found = nodes_of(prompt, class_type)
    if len(found) != 1:
        raise ValueError(f"the workflow must have exactly one {class_type} node; it has {len(found)}")
    return found[0]


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _set_text(prompt: dict[str, Any], node_id: str, key: str, text: str) -> None:
    """Sets a text input, or the text node it is linked to (the eval workflow's one prompt node)."""
    value = prompt[node_id]["inputs"].get(key)
    if _is_link(value) and "value" in prompt[value[0]]["inputs"]:
        prompt[value[0]]["inputs"]["value"] = text
    else:
        prompt[node_id]["inputs"][key] = text


def _readers(prompt: dict[str, Any], source: str) -> set[str]:
    """`source` and every node downstream of it."""
    found = {source}
    changed = True
    while changed:
        changed = False
        for node_id, node in prompt.items():
            if node_id not in found and any(_is_link(v) and v[0] in found for v in node["inputs"].values()):
                found.add(node_id)
                changed = True
    return found


@dataclass
class GraphSettings:
    ckpt_name: str
    embedding: str  # the server's name for it
    references: list[str]  # uploaded photo names (relative to the server's input folder)
    per_prompt: int
    seed: int
    backend: str
    clip_model: str | None  # None: no prompt score
    steps: int | None = None
    resolution: int | None = None
    prefix: str = "cross_init_eval/run"


def build_prompt(workflow: dict[str, Any], settings: GraphSettings, text: str, index: int) -> dict[str, Any]:
    """The API prompt for prompt number `index` (0-based): N images of `text` with the embedding, scored."""
    prompt = copy.deepcopy(workflow)
    for node in prompt.values():
        if "ckpt_name" in node.get("inputs", {}):
            node["inputs"]["ckpt_name"] = settings.ckpt_name
    for loader in nodes_of(prompt, EMBEDDING_LOADER):  # (input_problems requires exactly one in a workflow file)
        prompt[loader]["inputs"]["name"] = settings.embedding
    _set_text(prompt, _only(prompt, ENCODER), "text", text)
    latent = prompt[_only(prompt, "EmptyLatentImage")]["inputs"]
    latent["batch_size"] = settings.per_prompt
    if settings.resolution is not None:
        latent["width"] = latent["height"] = settings.resolution
    sampler = prompt[_only(prompt, "KSampler")]["inputs"]
    sampler["seed"] = settings.seed + index
    if settings.steps is not None:
        sampler["steps"] = settings.steps
    prompt[_only(prompt, "SaveImage")]["inputs"]["filename_prefix"] = f"{settings.prefix}/p{index:02d}"
    prompt[_only(prompt, IDENTITY)]["inputs"]["backend"] = settings.backend
    scorer = _only(prompt, PROMPT_SCORE) if nodes_of(prompt, PROMPT_SCORE) else None
    if settings.clip_model is None:
        if scorer is not None:
            for node_id in _readers(prompt, scorer):
                del prompt[node_id]
    else:
        if scorer is None:
            raise ValueError(f"the workflow has no {PROMPT_SCORE} node")
        prompt[scorer]["inputs"]["model"] = settings.clip_model
        _set_text(prompt, scorer, "prompt", text)
    _reference_photos(prompt, settings.references)
    return prompt


def _reference_photos(prompt: dict[str, Any], references: list[str]) -> None:
    """The identity score's LoadImage gets the first photo; further photos are batched onto it with the stock
    ImageBatch (which resizes them to the first's size; the score finds the face in each anyway)."""
    identity = _only(prompt, IDENTITY)
    link = prompt[identity]["inputs"]["reference"]
    if not _is_link(link) or prompt[link[0]]["class_type"] != "LoadImage":
        raise ValueError(f"the workflow's {IDENTITY} must take its reference from a LoadImage node")
    loader = link[0]
    prompt[loader]["inputs"]["image"] = references[0]
    last: list[Any] = [loader, 0]
    next_id = max((int(k) for k in prompt if k.isdigit()), default=0) + 1
    for photo in references[1:]:
        load_id, batch_id = str(next_id), str(next_id + 1)
        next_id += 2
        prompt[load_id] = {"class_type": "LoadImage", "inputs": {"image": photo}, "_meta": {"title": "Reference photo (CLI)"}}
        prompt[batch_id] = {"class_type": "ImageBatch", "inputs": {"image1": last, "image2": [load_id, 0]},
                            "_meta": {"title": "Batch reference photos (CLI)"}}
        last = [batch_id, 0]
    prompt[identity]["inputs"]["reference"] = last


def probe_prompt(workflow: dict[str, Any], references: list[str], backend: str) -> dict[str, Any]:
    """The reference photos scored against themselves: checks the identity backend runs and every reference
    photo shows a face, in seconds and before any image is generated."""
    prompt = build_prompt(workflow, GraphSettings("", "", references, 1, 0, backend, None), "", 0)
    identity = _only(prompt, IDENTITY)
    reference = prompt[identity]["inputs"]["reference"]
    prompt[identity]["inputs"]["images"] = list(reference)
    keep: set[str] = set()
    todo = [identity]
    while todo:
        node_id = todo.pop()
        if node_id not in keep:
            keep.add(node_id)
            todo += [v[0] for v in prompt[node_id]["inputs"].values() if _is_link(v)]
    probe = {k: v for k, v in prompt.items() if k in keep}
    probe["probe_report"] = {"class_type": TEXT_PREVIEW, "inputs": {"source": [identity, 1]}, "_meta": {"title": "probe"}}
    return probe


@dataclass
class Outcome:
    images: list[dict[str, Any]]  # SaveImage entries: filename, subfolder, type
    identity: dict[str, Any] | None
    prompt: dict[str, Any] | None


def read_outcome(prompt: dict[str, Any], outputs: dict[str, Any]) -> Outcome:
    """The saved images and the two score reports from a run's /history outputs (the reports are what the
    Preview as Text nodes on the score nodes' `report` outputs show)."""
    saver = _only(prompt, "SaveImage")
    images = list((outputs.get(saver) or {}).get("images", []))
    reports: dict[str, dict[str, Any] | None] = {IDENTITY: None, PROMPT_SCORE: None}
    for class_type in reports:
        sources = nodes_of(prompt, class_type)
        if not sources:
            continue
        for node_id in nodes_of(prompt, TEXT_PREVIEW):
            if prompt[node_id]["inputs"].get("source") == [sources[0], 1]:
                text = (outputs.get(node_id) or {}).get("text") or []
                if text:
                    reports[class_type] = json.loads(text[0])
        if reports[class_type] is None:
            raise ValueError(f"the run reported no {class_type} report (a {TEXT_PREVIEW} node on its report output is needed)")
    return Outcome(images, reports[IDENTITY], reports[PROMPT_SCORE])


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs the command; returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s"))
    target = logging.getLogger() if args.verbose else log
    saved = (target.level, target.propagate)
    target.addHandler(handler)
    target.setLevel(logging.WARNING if args.quiet else logging.INFO)
    if not args.verbose:
        log.propagate = False
    try:
        plan, problems = input_problems(args)
        if problems or plan is None:
            raise UsageError("\n".join(problems))
        return _execute(args, plan, stdout, stderr)
    except UsageError as exc:
        for line in str(exc).splitlines():
            log.error("error: %s", line)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        target.removeHandler(handler)
        target.setLevel(saved[0])
        target.propagate = saved[1]


def _execute(args: argparse.Namespace, plan: Plan, stdout: TextIO, stderr: TextIO) -> int:
    from . import eval_run  # the HTTP client and aiohttp load only when there is work to do

    return eval_run.run(args, plan, stdout, stderr)
