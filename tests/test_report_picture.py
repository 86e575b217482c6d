"""The checkpoint report's picture as users see it: labels clear of the panels, and the documentation's example
rendered by the report node from the documented illustrative series."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _example_script():
    spec = importlib.util.spec_from_file_location("make_report_example", REPO / "scripts" / "make_report_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(pack, example):
    core = pack.cross_init_core
    history = example.loss_history()
    checkpoints = [core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.zeros(2, 768)}, metadata={"steps": str(s)},
                                                     loss_history=history[:s]) for s in example.STEPS]
    node = pack.nodes.checkpoint_report.CrossInitCheckpointReport
    return node.execute(checkpoints, [example.identity_report(example.IDENTITY[s]) for s in example.STEPS],
                        [example.prompt_report(example.PROMPT[s]) for s in example.STEPS], [0.01])


def test_the_documented_series_picks_the_trade_off_step_and_every_panel_has_points(pack):
    example = _example_script()
    out = _report(pack, example)
    table = out.result[0]
    assert "160   0.2600    3/3    0.2930" in table and "<- best" in table.splitlines()[3]  # within 0.01 of 0.300
    assert "best: step 160" in table
    plot = (out.result[2][0] * 255).round().to(torch.int16)
    report = pack.cross_init_core.scoring.checkpoint_report
    for color in (report.IDENTITY_COLOR, report.PROMPT_COLOR, report.LOSS_COLOR):
        drawn = ((plot - torch.tensor(color, dtype=torch.int16)).abs().sum(-1) == 0)
        inside = drawn[:, report.MARGIN_LEFT + 2: report.WIDTH - report.MARGIN_RIGHT - 2]
        assert int(inside.sum()) > 200, color  # a curve in its panel, not an empty panel


def test_panel_labels_stay_clear_of_the_panel_borders(pack):
    """Each label sits above its panel, starting at the panels' left edge: no label pixel in the left margin (where
    the numbers go) and none inside any panel."""
    out = _report(pack, _example_script())
    plot = (out.result[2][0] * 255).round().to(torch.int16)
    report = pack.cross_init_core.scoring.checkpoint_report
    left, right = report.MARGIN_LEFT, report.WIDTH - report.MARGIN_RIGHT
    for index, color in enumerate((report.IDENTITY_COLOR, report.PROMPT_COLOR, report.LOSS_COLOR)):
        near = ((plot - torch.tensor(color, dtype=torch.int16)).abs().sum(-1) < 60)
        top = report.TOP + index * report.PANEL
        label_band = near[top - 18: top - 1, :]
        assert int(label_band[:, left:right].sum()) > 20, index  # the label is drawn above its panel
        assert int(near[:, :left - 1].sum()) == 0, index  # nothing of that colour in the left margin
