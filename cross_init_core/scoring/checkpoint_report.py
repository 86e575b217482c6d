"""Picking the best step: the checkpoints of one run with the identity and prompt scores of their samples, as a table
(JSON and text), a plot (identity, prompt score and loss against step) and the best checkpoint. The checkpoints are
the token trainer's (embeddings) or the pivotal LoRA stage's (LoRAs): one rule for both.

The rule (also in the report node's tooltip and docs/evaluation.md): a checkpoint whose samples show no face has no
identity and is passed over whenever any checkpoint has one; among those with a face whose prompt score is within
`margin` of the best prompt score among them, the one with the best identity (the highest ArcFace cosine, or the
lowest dlib distance); ties go to the earlier step. Without any identity the best prompt score decides, and without
any score the last checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..common.embedding_names import trained_steps
from ..common.errors import InvalidInputError
from ..common.text_table import format_table
from ..embeddings.embedding import CrossInitEmbedding
from ..training.loss_plot import moving_average, plot_font, scale_to_pixels

if TYPE_CHECKING:
    from ..lora.weights import LoraModel

# a token trainer's checkpoint or a LoRA stage's: both carry metadata `steps`, loss_history and loss_steps
Checkpoint = Union[CrossInitEmbedding, "LoraModel"]
STAGES = ("token", "lora")  # whose checkpoints: the token trainer's, or the LoRA stage's

DEFAULT_MARGIN = 0.01  # CLIP cosine: about a third of the prompt-score gap between the paper's methods
RULE = ("checkpoints whose samples show no face are passed over; among the others whose prompt score is within {margin} "
        "of their best prompt score, the best identity ({direction}); ties go to the earlier step")
LOSS_WINDOW = 10  # a checkpoint's loss: the mean of the last steps before it


@dataclass
class CheckpointRow:
    step: int
    identity: float | None  # mean over its samples with a face; None: no face (or not scored)
    faces: str  # "found/images"
    prompt: float | None
    loss: float | None  # mean of the last LOSS_WINDOW losses up to this step
    best: bool = False


@dataclass
class Report:
    rows: list[CheckpointRow]
    best: int  # index into rows
    margin: float
    identity: dict[str, Any]  # backend, metric, higher_is_better, threshold
    prompt_model: str | None
    losses: list[float]  # every applied step's loss, from the last checkpoint's history
    loss_steps: list[int] | None = None  # the step each loss belongs to (fp16 skipped steps leave gaps)
    stage: str = "token"  # whose checkpoints: the token trainer's ("token") or the LoRA stage's ("lora")

    @property
    def higher_is_better(self) -> bool:
        return bool(self.identity.get("higher_is_better", True))

    def rule(self) -> str:
        direction = "highest" if self.higher_is_better else "lowest"
        return RULE.format(margin=f"{self.margin:g}", direction=f"{direction} {self.identity.get('metric', 'score')}")

    def as_json(self) -> str:
        data = {"stage": self.stage, "rule": self.rule(), "margin": self.margin, "best_step": self.rows[self.best].step,
                "identity": self.identity or None, "prompt_model": self.prompt_model,
                "checkpoints": [asdict(row) for row in self.rows]}
        return json.dumps(data, indent=2, allow_nan=False)

    def as_text(self) -> str:
        header = ("step", "identity", "faces", "prompt", "loss", "")
        cells = [(str(r.step), _num(r.identity), r.faces, _num(r.prompt), _num(r.loss), "<- best" if r.best else "")
                 for r in self.rows]
        backend = f"{self.identity.get('backend')} {self.identity.get('metric')}" if self.identity else "not scored"
        return "\n".join([*format_table(header, cells, pad_last=False),
                          f"identity: {backend}; prompt score: {self.prompt_model or 'not scored'}",
                          f"best: step {self.rows[self.best].step} ({self.rule()})"]) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _reports(texts: Sequence[str], what: str, count: int) -> list[dict[str, Any]]:
    """The score nodes' JSON reports, one per checkpoint (none: that score was not connected)."""
    if not texts:
        return [{} for _ in range(count)]
    if len(texts) != count:
        raise InvalidInputError(
            f"{what}: {len(texts)} report(s) for {count} checkpoints; connect the {what} score's report of each "
            "checkpoint's samples (the score node runs once per checkpoint when its images come from the checkpoints list)."
        )
    try:
        reports = [json.loads(text) for text in texts]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what}: not a score report ({exc}); connect the score node's report output.") from None
    for index, report in enumerate(reports, start=1):
        images = report.get("images", []) if isinstance(report, dict) else None
        if not isinstance(images, list) or not all(isinstance(image, dict) for image in images):
            raise InvalidInputError(f"{what}: report {index} of {count} is JSON but not a score report (an object with a "
                                    "list of images); connect the score node's report output.")
    return reports


def build_report(checkpoints: Sequence[Checkpoint], identity_reports: Sequence[str],
                 prompt_reports: Sequence[str], margin: float = DEFAULT_MARGIN, stage: str = "token") -> Report:
    """The table and the best checkpoint (see the module docstring for the rule). `stage`: "token" for the trainer's
    checkpoints (embeddings), "lora" for Cross-Init Pivotal LoRA's (LoRAs); it names their source in the messages."""
    if stage not in STAGES:
        raise ValueError(f"stage: {stage!r}; use one of {STAGES}")
    what = "checkpoints"
    source = "Cross-Init Pivotal LoRA's checkpoints output" if stage == "lora" else "the trainer's checkpoints output"
    if not checkpoints:
        raise InvalidInputError(f"{what}: the list is empty; connect {source}.")
    if not math.isfinite(margin) or margin < 0:
        raise InvalidInputError(f"margin: got {margin}; use a prompt-score difference >= 0, e.g. {DEFAULT_MARGIN}.")
    identities = _reports(identity_reports, "identity", len(checkpoints))
    prompts = _reports(prompt_reports, "prompt", len(checkpoints))
    described = [{k: r.get(k) for k in ("backend", "metric", "higher_is_better", "threshold")} for r in identities]
    if any(d != described[0] for d in described):
        raise InvalidInputError("identity: the checkpoints were scored with different backends; score them all alike.")
    rows = []
    for item, identity, prompt in zip(checkpoints, identities, prompts, strict=True):
        # a plain LORA_MODEL dict (core Train LoRA's, a loaded file) has no metadata: no step to table it at
        steps = trained_steps(getattr(item, "metadata", {}))
        if steps is None:
            raise InvalidInputError(f"{what}: an item has no step count (metadata steps); connect {source}.")
        losses = [loss for loss, _reg in getattr(item, "loss_history", [])]
        images = identity.get("images") or []
        rows.append(CheckpointRow(
            step=steps, identity=_finite(identity.get("mean")),
            faces=f"{identity.get('faces_found', sum(bool(i.get('face')) for i in images))}/{len(images)}" if identity else "-",
            prompt=_finite(prompt.get("mean")), loss=float(np.mean(losses[-LOSS_WINDOW:])) if losses else None))
    identity_info = described[0] if identity_reports else {}
    last_history, last_steps = getattr(checkpoints[-1], "loss_history", []), getattr(checkpoints[-1], "loss_steps", [])
    loss_steps = list(last_steps) if len(last_steps) == len(last_history) else None
    report = Report(rows, 0, margin, identity_info, prompts[0].get("model"), [loss for loss, _ in last_history], loss_steps,
                    stage)
    report.best = choose_best(rows, margin, report.higher_is_better)
    rows[report.best].best = True
    return report


def choose_best(rows: Sequence[CheckpointRow], margin: float, higher_is_better: bool = True) -> int:
    """The index of the best checkpoint by the rule in the module docstring."""
    with_face = [i for i, r in enumerate(rows) if r.identity is not None]
    candidates = with_face or list(range(len(rows)))  # no face anywhere: the prompt score alone decides
    scored = [i for i in candidates if rows[i].prompt is not None]
    if scored:
        top = max(rows[i].prompt for i in scored)  # type: ignore[type-var]
        candidates = [i for i in scored if rows[i].prompt >= top - margin]  # type: ignore[operator]
    if with_face:
        sign = 1.0 if higher_is_better else -1.0
        return max(candidates, key=lambda i: (sign * rows[i].identity, -rows[i].step))  # type: ignore[operator]
    if scored:
        return max(candidates, key=lambda i: (rows[i].prompt, -rows[i].step))  # type: ignore[arg-type]
    return len(rows) - 1


# ---------------------------------------------------------------------------------------------
# The plot

WIDTH, PANEL, MARGIN_LEFT, MARGIN_RIGHT, TOP = 768, 150, 80, 30, 52
IDENTITY_COLOR, PROMPT_COLOR, LOSS_COLOR, BEST_COLOR = (40, 150, 70), (40, 90, 200), (200, 90, 40), (230, 180, 0)


def render_plot(report: Report) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: identity, prompt score and loss against step (three panels, one step axis), the best
    checkpoint marked."""
    steps = [r.step for r in report.rows]
    last = max(steps[-1], 1)
    height = TOP + 3 * PANEL + 40
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.font = plot_font()
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    whose = "LoRA checkpoints" if report.stage == "lora" else "checkpoints"
    draw.text((left, 8), f"Cross-Init {whose}: best step {report.rows[report.best].step}", fill="black")

    def x_of(step: float) -> float:
        return left + (step / last) * (right - left)

    # each loss at its own step (fp16 skipped steps leave gaps; a continued run's count goes on from its file's); a
    # history without steps is taken as the last steps up to the last checkpoint
    offset = max(report.rows[-1].step - len(report.losses), 0)
    loss_steps = report.loss_steps or list(range(offset + 1, offset + len(report.losses) + 1))
    loss_curve = moving_average(report.losses, max(1, len(report.losses) // 20)) if report.losses else []
    no_face = "no face in any sample" if report.identity else "not scored"
    panels = (
        ("identity" + ("" if report.higher_is_better else " (lower is better)"), IDENTITY_COLOR, steps,
         [r.identity for r in report.rows], no_face),
        ("prompt score", PROMPT_COLOR, steps, [r.prompt for r in report.rows], "not scored"),
        ("loss (moving average)", LOSS_COLOR, loss_steps, loss_curve, "no loss history"),
    )
    for index, (label, color, xs, ys, empty) in enumerate(panels):
        top = TOP + index * PANEL
        bottom = top + PANEL - 22
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, top - 17), label, fill=color)  # above its panel: clear of the border
        best_x = x_of(report.rows[report.best].step)
        draw.line([(best_x, top), (best_x, bottom)], fill=BEST_COLOR, width=2)
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if not points:
            draw.text((left + 8, (top + bottom) // 2), empty, fill="gray")
            continue
        low, high = min(y for _x, y in points), max(y for _x, y in points)
        scaled = list(zip([x_of(x) for x, _y in points],
                          scale_to_pixels([y for _x, y in points], low, high, top + 4, bottom - 4), strict=True))
        draw.text((6, top + 14), f"{high:.4g}", fill="black")
        draw.text((6, bottom - 12), f"{low:.4g}", fill="black")
        if len(scaled) > 1:
            draw.line(scaled, fill=color, width=2)
        if xs is steps:
            for x, y in scaled:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=color, width=2)
    axis = TOP + 3 * PANEL - 18
    for step in steps:
        draw.text((x_of(step) - 10, axis), str(step), fill="black")
    draw.text(((left + right) // 2 - 14, height - 18), "step", fill="black")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
