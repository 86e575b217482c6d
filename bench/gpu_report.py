"""The GPU check's report (any python, no ComfyUI): its JSON rows (bench/rows.py) -> a markdown section with the
device, date and commit, the server-path table, the in-process training and peer tables, and what was not
reached; written into $OUT/benchmarks.md by the offline run, or into the marked section of docs/benchmarks.md."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

BEGIN = "<!-- gpu_check:begin -->"
END = "<!-- gpu_check:end -->"
TITLE = "## GPU check (`bash bench/device/run.sh` offline, `bash bench/gpu_check.sh` with a package index)"


def _fmt(value: Any, spec: str = ".2f", missing: str = "—") -> str:
    if value is None or value == "":
        return missing
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def commit(fallback: str = "unknown") -> str:
    """The checkout's commit (+local changes), or `fallback` where there is no git (the GPU machine's copy)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return fallback


def _vram(row: dict[str, Any], key: str, spec: str) -> str:
    """Peak VRAM of a row: `n/a (CPU)` where there is no GPU, `—` where it was not measured."""
    return _fmt(row.get(key), spec, "n/a (CPU)" if row.get("device") == "CPU" else "—")


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(names: list[str]) -> list[str]:
    """The header line and its `|---|` separator."""
    return [_row(names), "|" + "---|" * len(names)]


def _server_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "The user's path: a `main.py` server with its defaults, this pack in `custom_nodes/`, a random SD 1.5 "
        "checkpoint; the batch runner trains one person. *run s* is the runner's time for the job (upload, queue, "
        "training, save, file back), *wall s* its whole process; *peak VRAM* and *UNet dtype* come from the trained "
        "file's metadata; *moved* is the mean L2 distance of the tokens from their Cross-Init start; *host unchanged*: "
        "an image sampled with the host's models before and after training is identical (max pixel difference).",
        "",
        *_header(["host", "device", "mode", "dynamic VRAM", "run s", "wall s", "steps", "peak VRAM MiB", "UNet dtype", "moved",
                  "host unchanged", "error"]),
    ]
    for r in rows:
        moved = "—" if r.get("token_distance") is None else f"{_fmt(r.get('tokens_moved'))} ({r['token_distance']:.3f})"
        unchanged = "—" if r.get("host_unchanged") is None else f"{_fmt(r['host_unchanged'])} ({r.get('max_pixel_diff')})"
        lines.append(_row([
            str(r["host"]), str(r.get("device", "?")), str(r.get("mode", "?")), _fmt(r.get("dynamic_vram")),
            _fmt(r.get("run_s"), ".1f"), _fmt(r.get("wall_s"), ".1f"), _fmt(r.get("steps"), "d"),
            _vram(r, "peak_vram_mib", "d"), _fmt(r.get("unet_dtype")), moved, unchanged, _cell(r.get("error", "")),
        ]))
    return lines


def _pivotal_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Pivotal tuning on the user's path: the same server runs one graph, the fast workflow's trainer and then "
        "*Cross-Init Pivotal LoRA* on its token (the LoRA `fast` preset's rank, alpha, learning rate and batch; previews "
        "off) and *Cross-Init Save LoRA*. *s/step* from each node's progress events (first step to last); *LoRA / token "
        "per sample* divides each by its batch; *peak VRAM* of each stage from its file's metadata (weights included); "
        "*host unchanged* is checked after the LoRA as above.",
        "",
        *_header(["host", "device", "UNet dtype", "px", "token steps x batch", "token s/step", "LoRA rank/alpha",
                  "LoRA steps x batch", "LoRA s/step", "LoRA / token per sample", "LoRA peak VRAM MiB",
                  "token peak VRAM MiB", "graph s", "host unchanged", "error"]),
    ]
    for r in rows:
        unchanged = "—" if r.get("host_unchanged") is None else f"{_fmt(r['host_unchanged'])} ({r.get('max_pixel_diff')})"
        lines.append(_row([
            str(r["host"]), str(r.get("device", "?")), _fmt(r.get("unet_dtype")), _fmt(r.get("resolution"), "d"),
            f"{_fmt(r.get('token_steps'), 'd')} x {_fmt(r.get('token_batch'), 'd')}", _fmt(r.get("token_s_per_step"), ".3f"),
            f"{_fmt(r.get('lora_rank'), 'd')}/{_fmt(r.get('lora_alpha'), 'g')}",
            f"{_fmt(r.get('lora_steps'), 'd')} x {_fmt(r.get('lora_batch'), 'd')}", _fmt(r.get("lora_s_per_step"), ".3f"),
            _fmt(r.get("lora_per_sample_ratio"), ".2f"), _vram(r, "peak_vram_mib", "d"), _vram(r, "token_peak_vram_mib", "d"),
            _fmt(r.get("graph_s"), ".1f"), unchanged, _cell(r.get("error", "")),
        ]))
    return lines


def _training_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "In process (ComfyUI imported, no server; the host's dynamic VRAM is not switched on this way): training at "
        "the stated resolution and batch with `memory` = 8. *fast run s* is a whole fast-preset run, measured (setup "
        "included); *full run s* is **projected**: setup + 320 x the measured s/step of the full preset's first steps "
        "(*measured steps*). *grad cos* is the cosine of the token-vector gradient to the fp32 UNet's on one fixed "
        "draw, through the trainer's loss scaling; *unscaled* is fp16 without it.",
        "",
        *_header(["host", "device", "model", "UNet dtype", "fast run s (measured)", "fast s/step", "skipped",
                  "full s/step (measured steps)", "full run s (projected)", "peak VRAM MiB", "plan", "grad cos", "unscaled",
                  "error"]),
    ]
    for r in rows:
        lines.append(_row([
            str(r["host"]), str(r.get("device", "?")), str(r["model"]), str(r.get("fast_unet_dtype") or r.get("dtype", "—")),
            _fmt(r.get("fast_run_s"), ".1f"), _fmt(r.get("fast_s_per_step"), ".3f"), _fmt(r.get("fast_skipped"), "d"),
            f"{_fmt(r.get('full_s_per_step'), '.3f')} ({_fmt(r.get('full_steps'), 'd')})", _fmt(r.get("full_projected_s"), ".0f"),
            _vram(r, "full_peak_mib", ".0f"), str(r.get("full_plan", "—")), _fmt(r.get("grad_cosine"), ".4f"),
            _fmt(r.get("grad_cosine_unscaled"), ".4f"), _cell(r.get("error", "")),
        ]))
    return lines


def _peer_table(rows: list[dict[str, Any]]) -> list[str]:
    references = {r["model"]: r["diffusers_s_per_step"] for r in rows if r.get("diffusers_s_per_step")}
    lines = [
        "Peer: the trainer with the fp32 UNet (`memory` none, whole batch) against a diffusers `textual_inversion`-style "
        "step (fp32, whole token-embedding table trainable, VAE encode every step), same device, same run; "
        "ratio = ours / diffusers (below 1: faster).",
        "",
        *_header(["host", "device", "model", "ours fp32 s/step", "diffusers s/step", "ratio", "error"]),
    ]
    for r in rows:
        reference = r.get("diffusers_s_per_step") or references.get(r["model"])
        ours = r.get("ours_s_per_step")
        ratio = ours / reference if ours and reference else None
        borrowed = "" if r.get("diffusers_s_per_step") else (" (diffusers step from the other host)" if reference else "")
        lines.append(_row([str(r["host"]), str(r.get("device", "?")), str(r["model"]), _fmt(ours, ".3f"),
                           _fmt(reference, ".3f") + borrowed, _fmt(ratio, ".2f"), _cell(r.get("error", ""))]))
    return lines


def render(rows: list[dict[str, Any]], not_reached: list[str], notes: list[str], wall_s: float, smoke: bool,
           commit_text: str | None = None) -> str:
    """The marked section: header (device, date, commit), the four tables, what was not reached, notes."""
    devices = sorted({str(row.get("device", "?")) for row in rows}) or ["none"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, TITLE, ""]
    if smoke:
        lines += ["**CPU smoke run (`--smoke`): toy sizes — checks that the path works; these are not GPU numbers and "
                  "say nothing about speed on a GPU.**", ""]
    hosts = sorted({f"ComfyUI {r['host']} (torch {r['torch']})" if r.get("torch") else f"ComfyUI {r['host']}" for r in rows})
    lines += [f"Device: {', '.join(devices)}; {when}; commit {commit_text or commit()}; wall time of the whole check "
              f"{wall_s:.0f} s. Hosts: {', '.join(hosts) or 'none measured'}.", ""]
    server = [r for r in rows if r.get("path") == "server" and r.get("kind") != "pivotal"]
    pivotal = [r for r in rows if r.get("path") == "server" and r.get("kind") == "pivotal"]
    train = [r for r in rows if r.get("path") == "in_process" and r.get("kind") == "train"]
    peers = [r for r in rows if r.get("path") == "in_process" and r.get("kind") == "peer"]
    for table, part in ((server, _server_table), (pivotal, _pivotal_table), (train, _training_table), (peers, _peer_table)):
        if table:
            lines += [*part(table), ""]
    if not_reached:
        lines += ["Not reached before the deadline: " + "; ".join(not_reached) + ".", ""]
    if notes:
        lines += [*notes, ""]
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
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text, encoding="utf-8")
