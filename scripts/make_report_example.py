"""Renders docs/checkpoint_report_example.png: the checkpoint report's plot from the shipped cross_init_checkpoints
workflow, run on the test suite's tiny random models on the CPU (8 steps, a checkpoint every 2).

The models are random, so the scores mean nothing (the samples show no face, the identity panel stays empty): the
picture shows what the report draws, not how a real run behaves; docs/evaluation.md says so under it.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "checkpoint_report_example.png")
    args = parser.parse_args(argv)
    import host

    with tempfile.TemporaryDirectory(prefix="cross_init_report_example_") as base:
        host.boot(Path(base))
        import folder_paths
        import tiny_models
        import workflow_runner as wr
        from helpers import save_tiny_clip

        save_tiny_clip(Path(folder_paths.get_folder_paths("clip_scoring")[-1]) / "clip-vit-base-patch32", seed=11)
        wr.install_face_image("face.png", 256)
        prompt = json.loads((REPO / "workflows" / "api" / "cross_init_checkpoints.json").read_text(encoding="utf-8"))
        wr.override(prompt, "CrossInitTrainer", mode="custom", steps=8, batch_size=1, resolution=64, save_every=2, preview_every=0)
        wr.override(prompt, "CrossInitFacePrep", crop_size=160)
        wr.override(prompt, "KSampler", steps=2)
        wr.override(prompt, "EmptyLatentImage", width=64, height=64)
        wr.override(prompt, "CrossInitIdentityScore", backend="dlib")
        loaders = [prompt[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(prompt, "CheckpointLoaderSimple")]
        with wr.tiny_checkpoint_loader(tiny_models.build("sd1"), loaders):
            executor = wr.execute(prompt)
        if not executor.success:
            log.error("the workflow failed: %s", wr.failure(executor))
            return 1
        (report,) = wr.nodes_of(prompt, "CrossInitCheckpointReport")
        plot = wr.node_output(executor, report, 2)
    image = Image.fromarray((plot[0].numpy() * 255).round().astype(np.uint8))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, optimize=True)
    log.info("wrote %s (%dx%d)", args.output, image.width, image.height)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
