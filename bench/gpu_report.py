"""The report half of bench/gpu_check.py (any python, no ComfyUI): its JSON rows -> the marked section of
docs/benchmarks.md (device, date, commit, training table, peer table, notes) and a printed summary."""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("gpu_check")
summary = logging.getLogger("gpu_check.summary")

BEGIN = "<!-- gpu_check:begin -->"
END = "<!-- gpu_check:end -->"


def _fmt(value: Any, spec: str = ".2f", missing: str = "—") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing if value is None else "nan"
    return format(value, spec)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(rows: list[dict[str, Any]], notes: list[str], wall_s: float, smoke: bool) -> str:
    """The marked section: header (device, date, commit), training table, peer table, notes."""
    devices = sorted({row["device"] for row in rows}) or ["none"]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = "## GPU check (`bash bench/gpu_check.sh`)"
    lines = [BEGIN, title, ""]
    if smoke:
        lines += ["**CPU smoke run (`--smoke`): tiny models, 64 px, batch 2 — checks that the script works; these are "
                  "not GPU numbers and say nothing about speed on a GPU.**", ""]
    lines += [f"Device: {', '.join(devices)}; {when}; commit {_commit()}; wall time of the whole check {wall_s:.0f} s. "
              "Lanes: " + ", ".join(sorted({f"{r['lane']} (ComfyUI {r['host']}, torch {r['torch']})" for r in rows})) + ".", ""]
    train = [r for r in rows if r.get("kind") == "train"]
    lines += [
        "Training at the stated resolution and batch with `memory` = 8. *fast run s* is a whole fast-preset run, "
        "measured (setup included); *full run s* is **projected**: setup + 320 x the measured s/step of the full "
        "preset's first steps (*measured steps*). *grad cos* is the cosine of the token-vector gradient to the "
        "fp32 UNet's on one fixed draw, through the trainer's loss scaling; *unscaled* is fp16 without it.",
        "",
        "| host | model | UNet dtype | fast run s (measured) | fast s/step | skipped | full s/step (measured steps) | "
        "full run s (projected) | peak VRAM MiB | plan | grad cos | unscaled | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in train:
        lines.append(
            f"| {r['lane']} {r['host']} | {r['model']} | {r.get('fast_unet_dtype') or r['dtype']} | {_fmt(r.get('fast_run_s'), '.1f')} | "
            f"{_fmt(r.get('fast_s_per_step'), '.3f')} | {_fmt(r.get('fast_skipped'), 'd')} | "
            f"{_fmt(r.get('full_s_per_step'), '.3f')} ({_fmt(r.get('full_steps'), 'd')}) | {_fmt(r.get('full_projected_s'), '.0f')} | "
            f"{_fmt(r.get('full_peak_mib'), '.0f', 'n/a (CPU)')} | {r.get('full_plan', '—')} | {_fmt(r.get('grad_cosine'), '.4f')} | "
            f"{_fmt(r.get('grad_cosine_unscaled'), '.4f')} | {'; '.join(r.get('errors', [])) or ''} |"
        )
    peers = [r for r in rows if r.get("kind") == "peer"]
    references = {r["model"]: r["diffusers_s_per_step"] for r in peers if r.get("diffusers_s_per_step")}
    lines += [
        "",
        "Peer: the trainer with the fp32 UNet (`memory` none, whole batch) against a diffusers "
        "`textual_inversion`-style step (fp32, whole token-embedding table trainable, VAE encode every step), "
        "same device, same run; ratio = ours / diffusers (below 1: faster).",
        "",
        "| host | model | ours fp32 s/step | diffusers s/step | ratio | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in peers:
        reference = r.get("diffusers_s_per_step") or references.get(r["model"])
        ours = r.get("ours_s_per_step")
        ratio = ours / reference if ours and reference else None
        borrowed = "" if r.get("diffusers_s_per_step") else (" (diffusers step from the other lane)" if reference else "")
        lines.append(f"| {r['lane']} {r['host']} | {r['model']} | {_fmt(ours, '.3f')} | {_fmt(reference, '.3f')}{borrowed} | "
                     f"{_fmt(ratio, '.2f')} | {'; '.join(r.get('errors', [])) or ''} |")
    if notes:
        lines += ["", *notes]
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Replaces the text between the markers (inclusive) in `path`, or appends the section."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def report(rows_path: Path, output: Path | None, notes: list[str], wall_s: float, smoke: bool) -> int:
    rows = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if rows_path.exists() else []
    section = render(rows, notes, wall_s, smoke)
    for line in section.splitlines():
        if not line.startswith("<!--"):
            summary.info(line)
    if output is not None:
        replace_section(output, section)
        log.info("wrote the gpu_check section of %s", output)
    failed = not rows or any(r.get("errors") for r in rows)
    return 1 if failed else 0
