"""The evaluation protocol's pure parts: the prompt list, the score table and the contact sheet.

`python -m cross_init_core eval` renders N images per prompt with an embedding (eval/run.py) and scores each
batch with the identity and prompt score nodes; this module turns their JSON reports into one table (per prompt
and overall, CSV and JSON) and a contact sheet. Nothing here needs ComfyUI.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...common.atomic_files import replace_atomically
from ...common.errors import InvalidInputError
from ...common.prompt_text import PLACEHOLDER, scored_prompt
from ...common.text_table import format_table as table_lines

if TYPE_CHECKING:
    from PIL import Image

REFERENCE_SLOT = "{}"  # how the reference's prompt files mark the person
PAPER_PROMPTS_FILE = Path(__file__).resolve().parents[2] / "data" / "eval_prompts.txt"
MAX_PROMPT_CHARS = 1000


def parse_prompts(text: str, source: str) -> list[str]:
    """Prompts, one per non-blank line (`#` starts a comment line), each with the person marked exactly once,
    as `{}` (the reference's files) or `<face>`; returned with `<face>`.

    Raises InvalidInputError naming `source`, the line and the fix.
    """
    prompts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        marks = line.count(REFERENCE_SLOT) + line.count(PLACEHOLDER)
        if marks != 1:
            found = "no" if marks == 0 else str(marks)
            raise InvalidInputError(
                f"prompts: {where} has {found} person marks ({line!r}); write the person exactly once, "
                f"as {REFERENCE_SLOT} or {PLACEHOLDER}, e.g. 'a {PLACEHOLDER} person on the beach'"
            )
        if len(line) > MAX_PROMPT_CHARS:
            raise InvalidInputError(f"prompts: {where} is {len(line)} characters long; keep prompts under {MAX_PROMPT_CHARS}")
        prompts.append(line.replace(REFERENCE_SLOT, PLACEHOLDER))
    if not prompts:
        raise InvalidInputError(f"prompts: {source} holds no prompts; write one prompt per line with {PLACEHOLDER} where the person goes")
    return prompts


def read_prompts(spec: str) -> list[str]:
    """`paper` (the paper's 20 evaluation prompts) or a UTF-8 text file of prompts (see parse_prompts)."""
    if spec == "paper":
        return parse_prompts(PAPER_PROMPTS_FILE.read_text(encoding="utf-8"), "the paper's list")
    path = Path(spec)
    if not path.is_file():
        raise InvalidInputError(f"--prompts {spec}: no such file; give a text file with one prompt per line, or 'paper'")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"--prompts {spec}: cannot be read as UTF-8 text ({exc})") from None
    return parse_prompts(text, str(path))


# ---------------------------------------------------------------------------------------------
# The table


@dataclass
class ImageRow:
    prompt_index: int
    image_index: int
    file: str
    face: bool | None  # None: identity not scored
    identity: float | None  # None: no face (or not scored)
    match: bool | None
    prompt_score: float | None
    faces: int | None = None  # faces in the image (the identity is its best-matching face's)
    face_used: int | None = None  # which of them, counting left to right


@dataclass
class PromptRow:
    prompt_index: int
    prompt: str
    images: int
    faces_found: int | None
    identity_mean: float | None  # over this prompt's images with a face
    prompt_mean: float | None


@dataclass
class EvalTable:
    identity: dict[str, Any]  # backend, metric, higher_is_better, better, threshold, face_choice (from the first report)
    prompt_model: str | None
    prompts: list[PromptRow] = field(default_factory=list)
    images: list[ImageRow] = field(default_factory=list)
    error: str | None = None  # why this embedding's run stopped early, if it did

    def meaning(self) -> dict[str, Any]:
        """What the numbers are: the identity backend, metric, which way is better and the same-person threshold, and
        the prompt score's CLIP model (None where that score was not run)."""
        identity = self.identity or {}
        return {
            "identity_backend": identity.get("backend"),
            "identity_metric": identity.get("metric"),
            "identity_better": identity.get("better"),
            "identity_threshold": identity.get("threshold"),
            "prompt_model": self.prompt_model,
            "prompt_metric": None if self.prompt_model is None else "cosine",
            "prompt_better": None if self.prompt_model is None else "higher",
        }

    def overall(self) -> dict[str, Any]:
        """Over all images: identity mean over every image with a face (pooled, as the per-prompt reports
        average), prompt mean over every image, faces found of all images."""
        ids = [r.identity for r in self.images if r.identity is not None]
        prompts = [r.prompt_score for r in self.images if r.prompt_score is not None]
        faces = None if any(r.face is None for r in self.images) else sum(bool(r.face) for r in self.images)
        return {
            "images": len(self.images),
            "faces_found": faces,
            "identity_mean": _mean(ids),
            "prompt_mean": _mean(prompts),
        }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


IDENTITY_KEYS = ("backend", "metric", "higher_is_better", "threshold", "face_choice")
MEANING_COLUMNS = ("identity_backend", "identity_metric", "identity_better", "identity_threshold", "prompt_model")


def _better(higher_is_better: Any) -> str | None:
    return None if higher_is_better is None else "higher" if higher_is_better else "lower"


def add_prompt_result(table: EvalTable, prompt_index: int, prompt: str, files: Sequence[str],
                      identity_report: dict[str, Any] | None, prompt_report: dict[str, Any] | None) -> PromptRow:
    """Adds one prompt's batch to the table from the score nodes' JSON reports (either may be None when that
    score was not run). The reports must cover exactly the images in `files`, in order."""
    n = len(files)
    id_images = (identity_report or {}).get("images", [])
    pr_images = (prompt_report or {}).get("images", [])
    if identity_report is not None:
        if len(id_images) != n:
            raise ValueError(f"prompt {prompt_index}: the identity report covers {len(id_images)} images, {n} were made")
        described = {k: identity_report.get(k) for k in IDENTITY_KEYS}
        described["better"] = _better(described["higher_is_better"])
        if not table.identity:
            table.identity = described
        elif table.identity != described:
            raise ValueError(f"prompt {prompt_index}: identity scored with {described}, earlier prompts with {table.identity}")
    if prompt_report is not None and len(pr_images) != n:
        raise ValueError(f"prompt {prompt_index}: the prompt report covers {len(pr_images)} images, {n} were made")
    rows = []
    for i, file in enumerate(files):
        entry = id_images[i] if identity_report is not None else None
        rows.append(ImageRow(
            prompt_index=prompt_index, image_index=i, file=file,
            face=None if entry is None else bool(entry.get("face")),
            identity=None if entry is None else _finite(entry.get("score")),
            match=None if entry is None else entry.get("match"),
            prompt_score=_finite(pr_images[i].get("score")) if prompt_report is not None else None,
            faces=None if entry is None else entry.get("faces", int(bool(entry.get("face")))),
            face_used=None if entry is None else entry.get("face_used"),
        ))
    table.images.extend(rows)
    ids = [r.identity for r in rows if r.identity is not None]
    row = PromptRow(
        prompt_index=prompt_index, prompt=prompt, images=n,
        faces_found=None if identity_report is None else sum(bool(r.face) for r in rows),
        identity_mean=_mean(ids),
        prompt_mean=_mean([r.prompt_score for r in rows if r.prompt_score is not None]) if prompt_report is not None else None,
    )
    table.prompts.append(row)
    return row


CSV_COLUMNS = ("prompt_index", "prompt", "images", "faces_found", "identity_mean", "prompt_mean")  # then MEANING_COLUMNS


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def table_csv(table: EvalTable) -> str:
    """One row per prompt and a last row `overall` (empty cells: not scored / no face); every row also says what its
    numbers are (MEANING_COLUMNS), so a row read on its own cannot be taken the wrong way round."""
    import io

    meaning = table.meaning()
    described = [_cell(meaning[c]) for c in MEANING_COLUMNS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *MEANING_COLUMNS])
    for row in table.prompts:
        writer.writerow([*(_cell(getattr(row, c)) for c in CSV_COLUMNS), *described])
    overall = table.overall()
    writer.writerow(["overall", "", overall["images"], _cell(overall["faces_found"]),
                     _cell(overall["identity_mean"]), _cell(overall["prompt_mean"]), *described])
    return buffer.getvalue()


def table_json(table: EvalTable, run: dict[str, Any]) -> str:
    """Strict JSON (null, never NaN): the run's settings, the identity metric, per prompt, overall, per image."""
    data = {
        "run": run,
        "identity": table.identity or None,
        "prompt_model": table.prompt_model,
        "prompt_metric": None if table.prompt_model is None else "cosine",
        "meaning": table.meaning(),
        "error": table.error,
        "overall": table.overall(),
        "prompts": [{**asdict(r), "scored_prompt": scored_prompt(r.prompt)} for r in table.prompts],
        "images": [asdict(r) for r in table.images],
    }
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_table(folder: Path, table: EvalTable, run: dict[str, Any]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "scores.csv", folder / "scores.json"
    replace_atomically(csv_path, table_csv(table).encode("utf-8"))
    replace_atomically(json_path, table_json(table, run).encode("utf-8"))
    return csv_path, json_path


def format_table(table: EvalTable) -> str:
    """The table for the terminal."""
    better = (table.identity or {}).get("better")
    header = ("#", "prompt", "faces", f"identity ({better} is better)" if better else "identity", "prompt score (higher is better)")
    rows = [(str(r.prompt_index), r.prompt, "-" if r.faces_found is None else f"{r.faces_found}/{r.images}",
             "-" if r.identity_mean is None else f"{r.identity_mean:.4f}",
             "-" if r.prompt_mean is None else f"{r.prompt_mean:.4f}") for r in table.prompts]
    o = table.overall()
    rows.append(("all", "", "-" if o["faces_found"] is None else f"{o['faces_found']}/{o['images']}",
                 "-" if o["identity_mean"] is None else f"{o['identity_mean']:.4f}",
                 "-" if o["prompt_mean"] is None else f"{o['prompt_mean']:.4f}"))
    lines = table_lines(header, rows)
    lines.append(_meaning_line(table.meaning()))
    if table.error:
        lines.append(f"stopped early: {table.error}")
    return "\n".join(lines) + "\n"


def _meaning_line(meaning: dict[str, Any]) -> str:
    if meaning["identity_backend"]:
        identity = (f"identity: {meaning['identity_backend']} {meaning['identity_metric']} ({meaning['identity_better']} is better, "
                    f"same person at threshold {meaning['identity_threshold']}; each image's best-matching face)")
    else:
        identity = "identity: not scored"
    prompt = f"CLIP cosine with {meaning['prompt_model']} (higher is better)" if meaning["prompt_model"] else "not scored"
    return f"{identity}; prompt score: {prompt}"


# ---------------------------------------------------------------------------------------------
# Several embeddings side by side


COMPARED = ("faces_found", "identity_mean", "prompt_mean")  # per embedding, in each comparison row


def _meaning(tables: dict[str, EvalTable]) -> dict[str, Any]:
    """The run's meaning of the numbers: every embedding is scored alike, so the first table that scored says it."""
    scored = [t for t in tables.values() if t.identity] or list(tables.values())
    return scored[0].meaning()


def comparison_rows(tables: dict[str, EvalTable]) -> tuple[list[str], list[list[Any]]]:
    """One row per prompt and an `overall` row; per embedding its faces found, identity mean and prompt mean (None:
    not scored, or no face), its error in the overall row; then what the numbers are (MEANING_COLUMNS)."""
    names = list(tables)
    header = ["prompt_index", "prompt", *(f"{name}:{what}" for name in names for what in (*COMPARED, "error")),
              *MEANING_COLUMNS]
    meaning = _meaning(tables)
    described = [meaning[c] for c in MEANING_COLUMNS]
    longest = max(tables.values(), key=lambda t: len(t.prompts)).prompts
    rows: list[list[Any]] = []
    for index, row in enumerate(longest):
        cells: list[Any] = [row.prompt_index, row.prompt]
        for name in names:
            other = tables[name].prompts[index] if index < len(tables[name].prompts) else None
            cells += [*(getattr(other, what) if other else None for what in COMPARED), None]
        rows.append([*cells, *described])
    overall: list[Any] = ["overall", ""]
    for name in names:
        total = tables[name].overall()
        overall += [*(total[what] for what in COMPARED), tables[name].error]
    return header, [*rows, [*overall, *described]]


def write_comparison(folder: Path, tables: dict[str, EvalTable], folders: dict[str, str],
                     run: dict[str, Any], entries: dict[str, dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """comparison.csv (the rows above) and comparison.json (the run, what the numbers are, and per embedding its
    folder, error, overall and per-prompt means), written whole or not at all. `folders`: name_folders of every
    embedding of the run, not only of those in `tables` (a run that stopped early has fewer), so each entry names
    the folder its results are in. `entries`: more to say of each (its embedding and LoRA, with --lora)."""
    import io

    header, rows = comparison_rows(tables)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(c) for c in row] for row in rows])
    data = {"run": run, "meaning": _meaning(tables),
            "embeddings": {name: {"folder": folders[name], **(entries or {}).get(name, {}), "error": table.error,
                                  "overall": table.overall(), "prompts": [asdict(r) for r in table.prompts]}
                           for name, table in tables.items()}}
    csv_path, json_path = folder / "comparison.csv", folder / "comparison.json"
    replace_atomically(csv_path, buffer.getvalue().encode("utf-8"))
    replace_atomically(json_path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return csv_path, json_path


def format_comparison(tables: dict[str, EvalTable], folders: dict[str, str]) -> str:
    """The side-by-side table for the terminal: faces / identity / prompt score per embedding, each headed by its
    folder's name (as name_folders gives it: distinct where two embeddings share a stem) and the identity column by
    which way is better; a line per embedding that stopped early."""
    names = list(tables)
    _header, rows = comparison_rows(tables)
    meaning = _meaning(tables)
    per = len(COMPARED) + 1
    shown = []
    for row in rows:
        cells = [str(row[0]), str(row[1])[:40]]
        for k in range(len(names)):
            faces, ident, prompt, _error = row[2 + k * per: 2 + (k + 1) * per]
            cells += ["-" if faces is None else str(faces), *("-" if v is None else f"{v:.4f}" for v in (ident, prompt))]
        shown.append(cells)
    better = meaning["identity_better"]
    id_label = f"id ({better} better)" if better else "id"
    labels = ["#", "prompt", *(f"{folders[n]} {what}" for n in names for what in ("faces", id_label, "prompt"))]
    errors = [f"{folders[n]}: {tables[n].error}" for n in names if tables[n].error]
    return "\n".join([*table_lines(labels, shown), _meaning_line(meaning), *errors]) + "\n"


def name_folders(names: Sequence[str]) -> dict[str, str]:
    """The folder of each embedding's results in a comparison: its file stem, or its whole name (folders replaced by
    `_`) where two embeddings share a stem (my_face.pt and my_face.safetensors)."""
    stems = [Path(n).stem for n in names]
    return {n: stem if stems.count(stem) == 1 else n.replace("/", "_").replace("\\", "_") for n, stem in zip(names, stems, strict=True)}


# ---------------------------------------------------------------------------------------------
# The contact sheet

CELL = 160
CAPTION = 34
MARGIN = 6


def contact_sheet(rows: Sequence[Sequence[Image.Image]], table: EvalTable, cell: int = CELL) -> Image.Image:
    """One row per prompt: a caption (index, prompt, faces, means) over that prompt's images, each image
    framed green (a face that matches), orange (a face that does not), red (no face) or grey (not scored),
    with its scores under it."""
    from PIL import Image, ImageDraw

    if len(rows) != len(table.prompts):
        raise ValueError(f"{len(rows)} image rows for {len(table.prompts)} prompts")
    columns = max((len(r) for r in rows), default=1) or 1
    row_height = CAPTION + cell + 16 + MARGIN
    sheet = Image.new("RGB", (MARGIN + columns * (cell + MARGIN), MARGIN + len(rows) * row_height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    by_prompt: dict[int, list[ImageRow]] = {}
    for image_row in table.images:
        by_prompt.setdefault(image_row.prompt_index, []).append(image_row)
    for r, (images, info) in enumerate(zip(rows, table.prompts, strict=True)):
        top = MARGIN + r * row_height
        faces = "" if info.faces_found is None else f"faces {info.faces_found}/{info.images}  "
        ident = "" if info.identity_mean is None else f"identity {info.identity_mean:.3f}  "
        prompt = "" if info.prompt_mean is None else f"prompt {info.prompt_mean:.3f}"
        draw.text((MARGIN, top + 2), f"{info.prompt_index}: {info.prompt}"[: columns * cell // 6], fill=(235, 235, 235))
        draw.text((MARGIN, top + 17), f"{faces}{ident}{prompt}".strip(), fill=(190, 190, 190))
        scores = by_prompt.get(info.prompt_index, [])
        for c, image in enumerate(images):
            left = MARGIN + c * (cell + MARGIN)
            thumb = image.convert("RGB")
            thumb.thumbnail((cell, cell))
            sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + CAPTION + (cell - thumb.height) // 2))
            s = scores[c] if c < len(scores) else None
            colour = (120, 120, 120)
            if s is not None and s.face is not None:
                colour = (220, 40, 40) if not s.face else (40, 200, 70) if s.match else (240, 150, 30)
            draw.rectangle((left - 2, top + CAPTION - 2, left + cell + 1, top + CAPTION + cell + 1), outline=colour, width=2)
            if s is not None:
                label = " ".join(x for x in (
                    None if s.identity is None else f"id {s.identity:.3f}",
                    None if s.prompt_score is None else f"clip {s.prompt_score:.3f}",
                    "no face" if s.face is False else None,
                ) if x)
                draw.text((left, top + CAPTION + cell + 3), label, fill=(210, 210, 210))
    return sheet
