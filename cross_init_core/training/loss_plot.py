"""A loss-curve picture (IMAGE) drawn with Pillow: loss, its moving average and the regularizer per step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 768, 432
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 70, 30, 50
LOSS_COLOR, AVERAGE_COLOR, REG_COLOR = (120, 160, 230), (20, 60, 170), (210, 90, 40)


FONT_SIZE = 13


def plot_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's scalable default font (words spaced as written); older Pillow (before 10.1) has only its bitmap font."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, OSError):
        return ImageFont.load_default()


def moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def scale_to_pixels(values: Sequence[float], low: float, high: float, top: int, bottom: int) -> list[float]:
    """Pixel rows of `values` on an axis from `low` (at `bottom`) to `high` (at `top`)."""
    span = (high - low) or 1.0
    return [bottom - (v - low) / span * (bottom - top) for v in values]


def render_loss_curve(losses: Sequence[float], regs: Sequence[float]) -> torch.Tensor:
    """IMAGE [1, H, W, 3]: loss (light), moving average (dark) on the left axis, reg term on the right axis."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.font = plot_font()
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), "Cross-Init training loss", fill="black")
    draw.text(((left + right) // 2 - 15, HEIGHT - 22), "step", fill="black")
    draw.text((4, top - 18), "loss", fill=AVERAGE_COLOR)
    draw.text((right + 4, top - 18), "reg", fill=REG_COLOR)
    n = len(losses)
    if n == 0:
        draw.text((left + 10, (top + bottom) // 2), "no steps", fill="black")
    else:
        xs = [left + (i / max(n - 1, 1)) * (right - left) for i in range(n)]
        lo, hi = min(losses), max(losses)
        for label_value, y in ((hi, top), (lo, bottom)):
            draw.text((4, y - 6), f"{label_value:.4g}", fill="black")
        draw.text((left - 4, bottom + 6), "1", fill="black")
        draw.text((right - 20, bottom + 6), str(n), fill="black")
        window = max(1, n // 10)
        for series, color, width in ((losses, LOSS_COLOR, 1), (moving_average(losses, window), AVERAGE_COLOR, 2)):
            ys = scale_to_pixels(series, lo, hi, top, bottom)
            if n == 1:
                draw.ellipse([xs[0] - 2, ys[0] - 2, xs[0] + 2, ys[0] + 2], fill=color)
            else:
                draw.line(list(zip(xs, ys, strict=True)), fill=color, width=width)
        if regs:
            rlo, rhi = min(regs), max(regs)
            draw.text((right + 4, top - 6), f"{rhi:.3g}", fill=REG_COLOR)
            draw.text((right + 4, bottom - 6), f"{rlo:.3g}", fill=REG_COLOR)
            ys = scale_to_pixels(regs, rlo, rhi, top, bottom)
            if n > 1:
                draw.line(list(zip(xs, ys, strict=True)), fill=REG_COLOR, width=1)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).unsqueeze(0)
