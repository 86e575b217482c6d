"""The evaluation's plan and its checks before any work (no server needed): the prompts, the photos, the output
folder and the workflow; then, with a server's lists, which embedding and which CLIP scoring model to use."""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.errors import CrossInitError
from ..common import folder_problem, photo_problem
from ..prompt_graph import CKPT_LOADER, PROMPT_SCORE, WORKFLOW_DIR, load_workflow, nodes_of
from .graph import REQUIRED_NODES, checkpoint_loader_type
from .results import read_prompts

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
LORA_SUFFIXES = (".safetensors",)  # Cross-Init Load LoRA + Token reads safetensors only (no pickles)
WORKFLOW_NAME = "cross_init_eval.json"
DEFAULT_CLIP_MODEL = "clip-vit-base-patch32"  # the paper's judge, as docs/evaluation.md names its folder


@dataclass
class Plan:
    prompts: list[str]
    faces: list[Path]
    embeddings: list[str]  # as given: names or glob patterns, matched against the server's list later
    output: Path
    workflow: dict[str, Any] = field(default_factory=dict)
    loras: list[str] = field(default_factory=list)  # --lora as given: names or patterns in the server's loras folders

    @property
    def compares(self) -> bool:
        """Several runs side by side (more than one embedding, a pattern, or token + LoRA runs beside the token-only
        ones): one folder each and a comparison."""
        return len(self.embeddings) > 1 or any(is_pattern(e) for e in self.embeddings) or bool(self.loras)

    @property
    def results_file(self) -> Path:
        return self.output / ("comparison.json" if self.compares else "scores.json")


RESULT_FILES = ("scores.csv", "scores.json", "contact_sheet.jpg", "comparison.csv", "comparison.json")


def result_files(folder: Path) -> list[Path]:
    """What a run writes into an output folder and --overwrite replaces: the tables, the contact sheet and the images
    images/pPP_iII.png (no other file there is touched)."""
    found = [folder / name for name in RESULT_FILES if (folder / name).is_file()]
    images = folder / "images"
    if images.is_dir():
        found += sorted(p for p in images.glob("p*_i*.png") if p.is_file())
    return found


def is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or (len(value) > 1 and value[1] == ":")


def input_problems(args: argparse.Namespace) -> tuple[Plan | None, list[str]]:
    """Everything that can be checked without a server: the checkpoint if given as a path, the embedding
    name, the photos, the prompts, the output folder and the workflow. All problems at once."""
    problems: list[str] = []
    if _looks_like_path(args.checkpoint) and not Path(args.checkpoint).expanduser().is_file():
        problems.append(f"--checkpoint {args.checkpoint}: no such file; give an existing checkpoint file, or a name from "
                        "ComfyUI's checkpoints folders")
    embeddings = [e.strip() for e in args.embedding]
    for given, embedding in zip(args.embedding, embeddings, strict=True):
        if not embedding or _looks_like_path(embedding):
            hint = "empty" if not embedding else "no such file" if not Path(embedding).expanduser().exists() else "a path, not a name"
            problems.append(f"--embedding {given}: {hint}; give the embedding's name as Cross-Init Load Embedding lists it "
                            "(e.g. my_face, or a pattern such as 'my_face-step*'), and put the file into "
                            "ComfyUI/models/embeddings if it is elsewhere")
    loras = [name.strip() for name in args.lora or []]
    for given, lora in zip(args.lora or [], loras, strict=True):
        if not lora or _looks_like_path(lora):
            hint = "empty" if not lora else "no such file" if not Path(lora).expanduser().exists() else "a path, not a name"
            problems.append(f"--lora {given}: {hint}; give the LoRA's name in ComfyUI's loras folders (e.g. my_face, as "
                            "Cross-Init Save LoRA wrote it, or a pattern such as 'my_face-step*'), and put the file into "
                            "ComfyUI/models/loras if it is elsewhere")
    for photo in args.faces:
        problem = photo_problem(photo)
        if problem:
            problems.append(f"--faces {photo}: {problem}")
    prompts: list[str] = []
    try:
        prompts = read_prompts(args.prompts)
    except CrossInitError as exc:
        problems.append(str(exc))
    plan = Plan(prompts=prompts, faces=list(args.faces), embeddings=embeddings, output=Path(), loras=loras)
    default = Path("cross_init_eval") / ("comparison" if plan.compares else Path(embeddings[0]).stem if embeddings else "eval")
    plan.output = output = (args.output or default).expanduser()
    problem = folder_problem("--output", output)
    if problem:
        problems.append(problem)
    elif plan.results_file.exists() and not args.overwrite:
        problems.append(f"--output {output}: holds the results of an earlier run ({plan.results_file.name}); choose another "
                        "folder or pass --overwrite")
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
    plan.workflow = workflow
    return plan, []


def match_embeddings(patterns: Sequence[str], available: Sequence[str],
                     suffixes: Sequence[str] = EMBEDDING_SUFFIXES) -> tuple[list[str], list[str]]:
    """(the server's entries, in the order given, each pattern's matches sorted; the patterns matching nothing).
    `suffixes`: what a name may leave out (LORA_SUFFIXES for --lora)."""
    found: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        if is_pattern(pattern):
            hits = sorted(a for a in available if fnmatch.fnmatchcase(a, pattern) or fnmatch.fnmatchcase(Path(a).stem, pattern))
        else:
            hit = match_embedding(pattern, available, suffixes)
            hits = [hit] if hit else []
        if not hits:
            missing.append(pattern)
        found += [h for h in hits if h not in found]
    return found, missing


def match_embedding(name: str, available: Sequence[str], suffixes: Sequence[str] = EMBEDDING_SUFFIXES) -> str | None:
    """The server's entry for `name`: exact, else NAME plus one of `suffixes` (case-sensitive, as the files)."""
    if name in available:
        return name
    for suffix in suffixes:
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


