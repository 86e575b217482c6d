"""The evaluation's execution: a ComfyUI server (local child or --server) driven over its HTTP API.

Uses the client's HTTP client (comfy_client), the local ComfyUI (local_comfyui) and the server checks
(preflight) that `train` uses, so `eval` finds ComfyUI, the pack and the checkpoint as `train` does.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from ... import __version__
from .. import local_comfyui
from ..comfy_client import ComfyClient, LocalServer, PromptFailed, PromptRejected, ServerGone
from ..common import EXIT_FAILED, EXIT_OK, UsageError, upright_photo
from ..preflight import preflight
from ..progress import ProgressBar
from ..prompt_graph import CKPT_LOADER, EMBEDDING_LOADER, LORA_LOADER, PHOTO_LOADER, PROMPT_SCORE, TEXT_PREVIEW, only
from .graph import (
    REQUIRED_NODES,
    EvalGraph,
    build_prompt,
    checkpoint_loader_type,
    family_prompt,
    lora_prompt,
    probe_prompt,
    read_outcome,
)
from .plan import LORA_SUFFIXES, Plan, choose_clip_model, match_embeddings, result_files
from .results import (
    EvalTable,
    add_prompt_result,
    contact_sheet,
    format_comparison,
    format_table,
    name_folders,
    write_comparison,
    write_table,
)

log = logging.getLogger(__name__)

UPLOAD_SUBFOLDER = "cross_init_eval"
NO_MODEL_PREFIX = "("  # the prompt score's placeholder option when its folder is empty: "(no CLIP model found)"


def run(args: argparse.Namespace, plan: Plan, stdout: TextIO, stderr: TextIO) -> int:
    with tempfile.TemporaryDirectory(prefix="cross_init_eval_") as scratch:
        local: LocalServer | None = None
        ckpt_name = args.checkpoint
        if not args.server:
            local, ckpt_name, _embeddings = local_comfyui.local_comfyui(args.comfyui, args.base_directory, args.checkpoint,
                                                                        Path(scratch), args.cpu)
        try:
            return asyncio.run(_serve(args, plan, ckpt_name, local, stdout, stderr))
        finally:
            if local is not None:
                local.stop()


@dataclass(frozen=True)
class Server:
    """What the preflight found on the server: its names of the embeddings and LoRAs, and the CLIP scoring model."""

    embeddings: list[str]
    loras: list[str]
    clip_model: str | None


@dataclass(frozen=True)
class EvalRun:
    """One column of the comparison: an embedding with its token alone, or with a LoRA on the model."""

    key: str  # its name in the tables (the embedding's server name; "EMBEDDING + LoRA LORA" for a LoRA run)
    folder: str  # its results' folder in a comparison
    embedding: str
    lora: str | None


def eval_runs(embeddings: list[str], loras: list[str]) -> list[EvalRun]:
    """Per embedding its token-only run, then a run with each LoRA (embedding-major, so each pair sits side by side)."""
    folders, lora_folders = name_folders(embeddings), name_folders(loras)
    runs = []
    for embedding in embeddings:
        runs.append(EvalRun(embedding, folders[embedding], embedding, None))
        runs += [EvalRun(f"{embedding} + LoRA {lora}", f"{folders[embedding]}+lora_{lora_folders[lora]}", embedding, lora)
                 for lora in loras]
    return runs


async def _preflight(client: ComfyClient, args: argparse.Namespace, plan: Plan, ckpt_name: str) -> Server:
    """The server's names of the embeddings and LoRAs and the CLIP model (or None); UsageError listing every problem."""
    loader = checkpoint_loader_type(plan.workflow) or CKPT_LOADER
    needed = set(REQUIRED_NODES) | {TEXT_PREVIEW, PHOTO_LOADER} | ({LORA_LOADER} if plan.loras else set())
    if args.no_prompt_score:
        needed.discard(PROMPT_SCORE)
    nodes, problems = await preflight(client, needed, ckpt_name, loader=loader)
    if problems:
        raise UsageError("\n".join(problems))
    listed, _ = nodes.options(EMBEDDING_LOADER, "name")
    embeddings, missing = match_embeddings(plan.embeddings, [str(e) for e in listed or []])
    known = ", ".join(map(str, (listed or [])[:10])) or "none"
    for pattern in missing:
        problems.append(f"--embedding {pattern}: not in the server's embeddings folders (it has: {known}); train it with "
                        "`python -m cross_init_core train` or copy the file into ComfyUI/models/embeddings")
    lora_files = nodes.files(LORA_LOADER, "lora_name") if plan.loras else []
    loras, missing = match_embeddings(plan.loras, lora_files, LORA_SUFFIXES)
    known = ", ".join(lora_files[:10]) or "none"
    for pattern in missing:
        problems.append(f"--lora {pattern}: not in the server's loras folders (it has: {known}); save it with Cross-Init "
                        "Save LoRA, or copy the .safetensors file into ComfyUI/models/loras (then it is listed without a "
                        "restart)")
    clip_model = None
    if not args.no_prompt_score:
        models, _ = nodes.options(PROMPT_SCORE, "model")
        listed = [str(m) for m in models or [] if not str(m).startswith(NO_MODEL_PREFIX)]
        clip_model, problem = choose_clip_model(args.clip_model, listed, "")
        if problem:
            problems.append(problem)
    if problems:
        raise UsageError("\n".join(problems))
    return Server(embeddings, loras, clip_model)


async def _check_families(client: ComfyClient, plan: Plan, settings: list[EvalGraph]) -> None:
    """Every embedding against the checkpoint's CLIP, before any prompt runs: UsageError naming each that does not fit
    (an SDXL embedding for an SD 1.5 checkpoint, say)."""
    problems = []
    for each in settings:
        try:
            await client.run(family_prompt(plan.workflow, each, plan.prompts[0]))
        except (PromptFailed, PromptRejected) as exc:
            problems.append(f"--embedding {each.embedding}: does not fit checkpoint {each.ckpt_name}: {exc}")
        except (ServerGone, ValueError) as exc:
            raise UsageError(f"the server could not check --embedding {each.embedding}: {exc}") from None
    if problems:
        raise UsageError("\n".join(problems))


async def _check_loras(client: ComfyClient, plan: Plan, settings: EvalGraph, loras: list[str]) -> None:
    """Every LoRA loaded onto the checkpoint's model before any prompt runs: UsageError naming each the pack's loader
    refuses (another model family's modules, no bundled token, not a LoRA)."""
    problems = []
    for lora in loras:
        try:
            await client.run(lora_prompt(plan.workflow, replace(settings, lora=lora)))
        except (PromptFailed, PromptRejected) as exc:
            problems.append(f"--lora {lora}: cannot be used with checkpoint {settings.ckpt_name}: {exc}; give a LoRA "
                            "trained on this checkpoint's model family (Cross-Init Pivotal LoRA + Save LoRA, token bundled)")
        except (ServerGone, ValueError) as exc:
            raise UsageError(f"the server could not check --lora {lora}: {exc}") from None
    if problems:
        raise UsageError("\n".join(problems))


def _clear_results(folder: Path) -> None:
    """--overwrite: removes what an earlier run wrote into `folder` (its images, tables and contact sheet), so no image
    of a larger --per-prompt or a longer prompt list is left beside the new ones. Other files are left alone."""
    for path in result_files(folder):
        path.unlink(missing_ok=True)


async def _serve(args: argparse.Namespace, plan: Plan, ckpt_name: str, local: LocalServer | None, stdout: TextIO,
                 stderr: TextIO) -> int:
    async with aiohttp.ClientSession() as session:
        # the preflight asks the server first whether it answers (a UsageError naming it when not)
        client = await local_comfyui.connect_local(local, session) if local is not None else ComfyClient(args.server, session)
        server = await _preflight(client, args, plan, ckpt_name)
        run_id = uuid.uuid4().hex[:8]
        runs = eval_runs(server.embeddings, server.loras)
        # the same seeds, prompts and sampler for every run, so their images pair up (a LoRA run differs only by its LoRA)
        all_settings = [EvalGraph(ckpt_name=ckpt_name, embedding=each.embedding, per_prompt=args.per_prompt, seed=args.seed,
                                  backend=args.identity_backend, clip_model=server.clip_model, steps=args.steps,
                                  resolution=args.resolution, prefix=f"cross_init_eval/{each.folder}_{run_id}",
                                  lora=each.lora, lora_strength=args.lora_strength)
                        for each in runs]
        token_only = [each for each in all_settings if each.lora is None]
        await _check_families(client, plan, token_only)
        if server.loras:
            await _check_loras(client, plan, token_only[0], server.loras)
        references = []
        try:
            for i, photo in enumerate(plan.faces):  # upright: a phone's sideways JPEG goes up as the PNG it shows
                data, suffix = upright_photo(photo)
                references.append(await client.upload_image(photo, UPLOAD_SUBFOLDER, f"{run_id}_ref{i}{suffix}", data=data))
            # the reference photos against themselves: the backend runs and each photo shows a face
            probe = probe_prompt(plan.workflow, references, args.identity_backend)
            outcome = await client.run(probe)
            report = outcome.outputs.get("probe_report", {}).get("text", [""])[0]
            log.info("identity backend and reference photos checked (%s)", report.split(",")[0].strip("{ ") or "ok")
        except (PromptFailed, PromptRejected) as exc:
            raise UsageError(f"--faces: the identity score cannot use the reference photos: {exc}") from None
        except (ServerGone, ValueError) as exc:
            raise UsageError(f"the server could not check the reference photos: {exc}") from None

        tables: dict[str, EvalTable] = {}
        status = EXIT_OK
        folders = {each.key: each.folder for each in runs}
        if args.overwrite:  # every check passed: what this run replaces goes now, before its first image
            if plan.compares:
                _clear_results(plan.output)
            for each in runs:
                _clear_results(plan.output / each.folder if plan.compares else plan.output)
        for each, settings in zip(runs, all_settings, strict=True):
            settings.references = references
            folder = plan.output / each.folder if plan.compares else plan.output
            table, failed = await _evaluate(client, args, plan, settings, folder, stderr)
            tables[each.key] = table
            if failed:
                status = EXIT_FAILED
            run_info = {
                "version": __version__, "checkpoint": ckpt_name, "embedding": each.embedding, "lora": each.lora,
                "lora_strength": args.lora_strength if each.lora else None, "faces": [str(p) for p in plan.faces],
                "prompts": args.prompts, "per_prompt": args.per_prompt, "seed": args.seed,
                "identity_backend": args.identity_backend, "sampler": _sampler_settings(build_prompt(plan.workflow, settings, "", 0)),
                "server": "local" if local is not None else args.server, "complete": not failed,
            }
            if table.prompts:
                write_table(folder, table, run_info)
                log.info("wrote scores.csv, scores.json, contact_sheet.jpg and %d images in %s", len(table.images), folder)
                if not plan.compares:
                    stdout.write(format_table(table))
            else:  # no scores file: it would stand for results and keep a rerun from this folder without --overwrite
                log.warning("%s: no prompt finished; no scores written", each.key)
            if failed == "server":  # the server is gone: every later run would fail the same way
                break

    if plan.compares:
        if any(t.prompts for t in tables.values()):
            entries = {each.key: {"embedding": each.embedding, "lora": each.lora,
                                  "lora_strength": args.lora_strength if each.lora else None} for each in runs}
            write_comparison(plan.output, tables, folders, {
                "version": __version__, "checkpoint": ckpt_name, "embeddings": list(tables), "loras": server.loras,
                "lora_strength": args.lora_strength if server.loras else None,
                "complete": status == EXIT_OK and len(tables) == len(runs)}, entries)
            stdout.write(format_comparison(tables, folders))
            log.info("wrote comparison.csv and comparison.json for %d runs in %s", len(tables), plan.output)
        else:
            log.warning("no prompt finished; no comparison written")
    stdout.flush()
    return status


async def _evaluate(client: ComfyClient, args: argparse.Namespace, plan: Plan, settings: EvalGraph, folder: Path,
                    stderr: TextIO) -> tuple[EvalTable, str]:
    """Every prompt with one embedding: images into folder/images/ (made with the first image), the table, the
    contact sheet; (table, "" when every prompt finished, else "prompt" or, when the server is gone, "server").
    A failure stops this embedding only; its error is in the table, and the prompts finished before it stay."""
    from PIL import Image

    images_dir = folder / "images"
    table = EvalTable(identity={}, prompt_model=settings.clip_model)
    rows: list[list[Image.Image]] = []
    enabled = not args.no_progress and not args.quiet
    failed = ""
    log.info("%d prompts x %d images with %s on %s; output: %s", len(plan.prompts), args.per_prompt, settings.embedding,
             settings.ckpt_name, folder)
    for index, text in enumerate(plan.prompts):
        bar = ProgressBar(stderr, f"[{index + 1}/{len(plan.prompts)}] {text[:40]}", enabled=enabled)
        files, images = [], []
        try:
            prompt = build_prompt(plan.workflow, settings, text, index)
            outcome = await client.run(prompt, on_progress=bar.hook)
            result = read_outcome(prompt, outcome.outputs)
            for j, entry in enumerate(result.images):
                data = await client.download(entry["filename"], entry.get("subfolder", ""), entry.get("type", "output"))
                path = images_dir / f"p{index:02d}_i{j:02d}.png"
                images_dir.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                files.append(str(path.relative_to(folder)))
                with Image.open(io.BytesIO(data)) as image:
                    images.append(image.convert("RGB"))
            # inside the try: a report that does not fit the table ends this embedding, not the run
            add_prompt_result(table, index, text, files, result.identity, result.prompt)
        except (PromptFailed, PromptRejected, ServerGone, ValueError, OSError) as exc:
            table.error = f"prompt {index} ({text}): {exc}"
            log.error("%s: prompt %d (%s) failed: %s; its table holds the %d prompts before it", settings.embedding, index,
                      text, exc, index)
            failed = "server" if isinstance(exc, ServerGone) else "prompt"
            break
        finally:
            bar.finish()
        rows.append(images)
    if rows:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            contact_sheet(rows, table).save(folder / "contact_sheet.jpg", quality=90)
        except (OSError, ValueError) as exc:  # the tables and images are the results; the sheet only shows them
            log.error("%s: the contact sheet could not be written: %s", settings.embedding, exc)
    return table, failed


def _sampler_settings(prompt: dict[str, Any]) -> dict[str, Any]:
    sampler = prompt[only(prompt, "KSampler")]["inputs"]
    return {key: sampler.get(key) for key in ("steps", "cfg", "sampler_name", "scheduler")}
