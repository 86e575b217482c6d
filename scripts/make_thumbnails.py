"""Template-browser thumbnails: workflows/<name>.jpg from the real-browser test's screenshots.

ComfyUI's template browser shows `<name>.jpg` beside `<name>.json`. Run the browser test first on the
oldest host lane (`bash scripts/test.sh --lane oldest tests/test_browser.py`; each lane overwrites the
screenshots with its own frontend's), which leaves test-output/browser/<name>.png, then
`$VENV/bin/python scripts/make_thumbnails.py`. The graph is cropped out of the editor chrome.
For some workflows only (a browser run with `-k NAME` leaves only their screenshots):
`$VENV/bin/python scripts/make_thumbnails.py cross_init_pivotal`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-output" / "browser"
WIDTH = 512
CANVAS_FRACTION = (0.07, 0.14)  # left sidebar and top bar of the editor, as fractions of the screenshot
PAD = 24

log = logging.getLogger("make_thumbnails")


def graph_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of everything on the canvas that differs from its background colour."""
    pixels = np.asarray(image.convert("RGB")).astype(np.int16)
    height, width = pixels.shape[:2]
    left, top = int(width * CANVAS_FRACTION[0]), int(height * CANVAS_FRACTION[1])
    canvas = pixels[top : int(height * 0.92), left : int(width * 0.97)]
    background = np.median(canvas.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(np.abs(canvas - background).sum(axis=-1) > 30)
    x0, y0 = max(0, left + xs.min() - PAD), max(0, top + ys.min() - PAD)
    return (x0, y0, min(width, left + xs.max() + PAD), min(height, top + ys.max() + PAD))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="workflow file stems (default: every workflows/*.json)")
    args = parser.parse_args(argv)
    workflows = sorted((REPO / "workflows").glob("*.json"))
    unknown = sorted(set(args.names) - {w.stem for w in workflows})
    if unknown:
        log.error("no workflows/<name>.json for %s", ", ".join(unknown))
        return 1
    made = 0
    for workflow in (w for w in workflows if not args.names or w.stem in args.names):
        shot = SHOTS / f"{workflow.stem}.png"
        if not shot.exists():
            log.error("%s: no screenshot at %s; run the browser test first", workflow.name, shot)
            return 1
        image = Image.open(shot)
        crop = image.crop(graph_box(image)).convert("RGB")
        crop = crop.resize((WIDTH, round(crop.height * WIDTH / crop.width)), Image.Resampling.LANCZOS)
        target = workflow.with_suffix(".jpg")
        crop.save(target, quality=85, optimize=True)
        log.info("wrote %s (%dx%d)", target.relative_to(REPO), *crop.size)
        made += 1
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
