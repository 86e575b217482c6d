"""Renders docs/checkpoint_report_example.png: the picture Cross-Init Checkpoint Report draws, from the report node
itself, fed with the illustrative series below (not a measurement: no score in this project was measured with real
SD weights; docs/evaluation.md says so under the picture).

The series is what a full run with checkpoints every 80 steps is expected to look like, in the units the score nodes
report: ArcFace cosine rising as the token learns the face (the paper reports 0.2517 for Cross Initialization after
320 steps; 0.28 is insightface's same-person threshold), the CLIP prompt score falling a little as the face takes
over (the paper: 0.2859), 3 of 3 samples with a face at each checkpoint, and a diffusion loss that is noisy around
0.13 and drifts down slowly, as epsilon-MSE training losses do.

Usage (venv and COMFYUI_PATH from `source scripts/test_env.sh && ensure_lane oldest`):
  $VENV/bin/python scripts/make_report_example.py [--output docs/checkpoint_report_example.png]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

log = logging.getLogger("make_report_example")

# the illustration: step -> (ArcFace cosine of each of the 3 samples, CLIP prompt score of each)
STEPS = (80, 160, 240, 320)
IDENTITY = {80: (0.19, 0.22, 0.21), 160: (0.25, 0.27, 0.26), 240: (0.28, 0.30, 0.29), 320: (0.29, 0.31, 0.30)}
PROMPT = {80: (0.305, 0.298, 0.297), 160: (0.296, 0.292, 0.291), 240: (0.287, 0.285, 0.283), 320: (0.281, 0.279, 0.277)}
LOSS_START, LOSS_END, LOSS_NOISE, SEED = 0.140, 0.125, 0.03, 0


def identity_report(scores: tuple[float, ...]) -> str:
    """What Cross-Init Identity Score reports for insightface (see cross_init_core/scoring/identity.py)."""
    images = [{"index": i, "face": True, "score": s, "match": s >= 0.28} for i, s in enumerate(scores)]
    return json.dumps({"backend": "insightface", "metric": "cosine", "higher_is_better": True, "threshold": 0.28,
                       "mean": float(np.mean(scores)), "faces_found": len(scores), "images": images})


def prompt_report(scores: tuple[float, ...]) -> str:
    images = [{"index": i, "score": s} for i, s in enumerate(scores)]
    return json.dumps({"model": "clip-vit-base-patch32", "metric": "cosine", "mean": float(np.mean(scores)), "images": images})


def loss_history() -> list[tuple[float, float]]:
    rng = np.random.default_rng(SEED)
    trend = np.linspace(LOSS_START, LOSS_END, STEPS[-1])
    losses = np.clip(trend + rng.normal(0, LOSS_NOISE, STEPS[-1]), 0.02, None)
    return [(float(loss), 0.0) for loss in losses]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "checkpoint_report_example.png")
    args = parser.parse_args(argv)
    import host

    with tempfile.TemporaryDirectory(prefix="cross_init_report_example_") as base:
        pack = host.boot(Path(base))
        import torch
        import workflow_runner as wr

        history = loss_history()
        checkpoints = [pack.cross_init_core.embeddings.embedding.CrossInitEmbedding(
            vectors={"clip_l": torch.zeros(2, 768)}, metadata={"steps": str(step)}, loss_history=history[:step])
            for step in STEPS]
        report = wr.node_class("CrossInitCheckpointReport").execute(
            checkpoints, [identity_report(IDENTITY[s]) for s in STEPS], [prompt_report(PROMPT[s]) for s in STEPS], [0.01])
        log.info("%s", report.result[0])
        plot = report.result[2]
    image = Image.fromarray((plot[0].numpy() * 255).round().astype(np.uint8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, optimize=True)
    log.info("wrote %s (%dx%d)", args.output, image.width, image.height)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
