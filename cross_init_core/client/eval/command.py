"""`python -m cross_init_core eval ...`: the paper's evaluation of one trained embedding, from a terminal.

For every prompt (the paper's 20, or a file) it runs the shipped workflows/api/cross_init_eval.json on a
ComfyUI server through its HTTP API (the client's comfy_client.py; a local ComfyUI is started as a child
process unless --server is given): N images with the embedding, the
identity score against the reference photos and the CLIP prompt score. The images, a table per prompt and
overall (scores.csv, scores.json) and a contact sheet (contact_sheet.jpg) land in one output folder. Several
embeddings, or --lora (each embedding once with its token alone and once with the token + each LoRA on the model,
same prompts and seeds), give one folder per run and comparison.csv/json side by side.

Exit codes: 0 done; 1 a run failed on the server (that embedding's table holds the prompts finished before it and
the error; in a comparison the other embeddings still run); 2 bad arguments or inputs (an embedding that does not fit
the checkpoint included), found before any image is generated; 130 stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ... import __version__
from ...common.settings import IntRange
from ..common import (
    PROG,
    UsageError,
    add_console_options,
    add_local_comfyui_options,
    int_in,
    parse_command,
    run_command,
)
from .plan import DEFAULT_CLIP_MODEL, WORKFLOW_NAME, input_problems

MAX_PER_PROMPT = 64
MAX_LORA_STRENGTH = 10.0  # Cross-Init Load LoRA + Token's strength range
MAX_SEED = 2**64 - 1 - 10_000  # KSampler's seed maximum, less room for seed + prompt index


# ---------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Scores a trained face embedding as the Cross Initialization paper does: N images per prompt with the "
            "embedding, the identity score of each image against the reference photos, and the CLIP similarity of "
            "each image and its prompt (without the person token)."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} eval --checkpoint v2-1_512-ema-pruned.safetensors --embedding my_face --faces me.jpg\n"
            f"  {PROG} eval --checkpoint sd15.safetensors --embedding my_face --faces me1.jpg me2.jpg --prompts mine.txt "
            "--per-prompt 8 --no-prompt-score\n"
            f"  {PROG} eval --checkpoint sd15.safetensors --embedding 'my_face-step*' --faces me.jpg    # a run's checkpoints\n"
            f"  {PROG} eval --checkpoint sd15.safetensors --embedding my_face --lora my_face --faces me.jpg  # token vs token + LoRA\n\n"
            "output (in --output, default ./cross_init_eval/EMBEDDING/): images/pPP_iII.png, scores.csv and scores.json\n"
            "(one row per prompt and an overall row), contact_sheet.jpg. Several embeddings (default ./cross_init_eval/\n"
            "comparison/): that in one folder per embedding, and comparison.csv/json side by side. With --lora, each\n"
            "embedding runs with its token alone (folder EMBEDDING) and with the token + each LoRA (folder\n"
            "EMBEDDING+lora_LORA), same prompts and seeds, side by side in comparison.csv/json. See docs/evaluation.md.\n\n"
            "exit codes: 0 done; 1 a run failed on the server (that embedding's table holds the prompts finished\n"
            "            before it and the error; a comparison runs the other embeddings); 2 bad arguments or inputs\n"
            "            (missing checkpoint, embedding, photo or scoring model, an embedding for another model family,\n"
            "            bad prompts file, N < 1): nothing was generated; 130 stopped with Ctrl-C."
        ),
    )
    parser.add_argument("--version", action="version", version=f"Cross-Init {__version__}")
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--checkpoint", required=True, metavar="FILE",
                      help="the checkpoint to generate with (the one the embedding was trained on; the paper: SD 2.1-base, "
                           "v2-1_512-ema-pruned.safetensors): a name in ComfyUI's checkpoints folders or a path to a file.")
    what.add_argument("--embedding", required=True, nargs="+", metavar="NAME",
                      help="the trained embedding, by name as Cross-Init Load Embedding lists it (my_face or "
                           "my_face.safetensors, in ComfyUI's embeddings folders, where `train` writes it). Several, or a "
                           "quoted pattern such as 'my_face-step*' (a run's checkpoints), are evaluated alike and tabled side "
                           "by side (comparison.csv/json, one folder each).")
    what.add_argument("--lora", nargs="+", metavar="LORA",
                      help="also evaluate each embedding with this LoRA on the model: a file in ComfyUI's loras folders "
                           "(my_face or my_face.safetensors, as Cross-Init Save LoRA wrote it, with its token bundled), or "
                           "a quoted pattern such as 'my_face-step*' (a LoRA run's checkpoints). Each embedding then runs "
                           "with its token alone and with the token + each LoRA, with the same prompts and seeds; the token "
                           "always comes from --embedding. comparison.csv/json table the runs side by side.")
    what.add_argument("--lora-strength", type=_lora_strength, default=1.0, metavar="S",
                      help=f"how strongly --lora changes the model (default 1; -{MAX_LORA_STRENGTH:g}..{MAX_LORA_STRENGTH:g}, "
                           "not 0). The text encoder is never changed: the token-only and LoRA runs encode alike.")
    what.add_argument("--faces", required=True, nargs="+", type=Path, metavar="PHOTO",
                      help="reference photo(s) of the person (the paper: the one photo trained on). Several are averaged.")
    what.add_argument("--prompts", default="paper", metavar="paper|FILE",
                      help="`paper` (default): the paper's 20 evaluation prompts; or a text file, one prompt per line with "
                           "the person written as {} or <face> (e.g. 'a {} person on the beach'); # starts a comment.")
    what.add_argument("--per-prompt", type=int_in(IntRange(1, MAX_PER_PROMPT)), default=4, metavar="N",
                      help=f"images per prompt (1..{MAX_PER_PROMPT}, default 4; the authors' script makes 16).")
    what.add_argument("--seed", type=int_in(IntRange(0, MAX_SEED)), default=0,
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
    sampling.add_argument("--steps", type=int_in(IntRange(1, 1000)), metavar="N", help="sampler steps (default 50).")
    sampling.add_argument("--resolution", type=int_in(IntRange(64, 2048, multiple=8)), metavar="PX",
                          help="image size in pixels (default 512; 768 for SD 2.x 768-v, 1024 for SDXL).")

    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, metavar="DIR", help="folder for images, tables and the contact sheet "
                                                                 "(default: ./cross_init_eval/EMBEDDING).")
    out.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --output (its images, "
                                                               "tables and contact sheet are removed once every check passes).")
    add_console_options(out, "table")

    host = parser.add_argument_group("ComfyUI")
    host.add_argument("--server", metavar="URL",
                      help="a running ComfyUI server (http://host:port) to run on; without it a local ComfyUI is started on "
                           "127.0.0.1 for the run. The photos are uploaded; the images are downloaded.")
    add_local_comfyui_options(host, f"an API-format workflow to run instead of the shipped workflows/api/{WORKFLOW_NAME} "
                                    "(same node types).")
    return parser


def _lora_strength(text: str) -> float:
    """An argparse type: a LoRA strength in Cross-Init Load LoRA + Token's range; 0 would be the token-only run again."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (-MAX_LORA_STRENGTH <= value <= MAX_LORA_STRENGTH) or value == 0:
        raise argparse.ArgumentTypeError(f"{value:g} is out of range: use a value from -{MAX_LORA_STRENGTH:g} to "
                                         f"{MAX_LORA_STRENGTH:g} other than 0 (0 is the token-only run)")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = parse_command(build_parser(), argv, "eval")
    if args.lora_strength != 1.0 and not args.lora:
        build_parser().error("--lora-strength needs --lora")
    return args


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs the command; returns the exit code (130 when stopped with Ctrl-C)."""
    return run_command(argv, parse_args, _run, "interrupted", stdout, stderr)


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    plan, problems = input_problems(args)
    if problems or plan is None:
        raise UsageError("\n".join(problems))
    from . import run  # the HTTP client and aiohttp load only when there is work to do

    return run.run(args, plan, stdout, stderr)
