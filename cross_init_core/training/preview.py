"""Progress previews: a quick sample of a prompt (by default 'a photo of <face> person') with the current vectors,
beside the input face: the validation image of each preview interval."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import host
from ..common.errors import InvalidInputError
from ..common.prompt_text import PLACEHOLDER
from ..embeddings.embedding import CrossInitEmbedding
from ..method.personalized_encode import encode_prompt

log = logging.getLogger(__name__)

PREVIEW_PROMPT = f"a photo of {PLACEHOLDER} person"
PREVIEW_STEPS = 6
MAX_PREVIEW_STEPS = 100
PREVIEW_MAX_SIZE = 512
PREVIEW_CFG = 5.0


def default_interval(steps: int) -> int:
    """About five previews per run."""
    return max(1, steps // 5)


def check_preview_prompt(prompt: str, steps: int) -> None:
    """The preview's prompt must place the learned tokens, and its sampler steps must be sane."""
    if not isinstance(prompt, str) or PLACEHOLDER not in prompt:
        raise InvalidInputError(f"preview_prompt: write {PLACEHOLDER} where the person goes, e.g. '{PREVIEW_PROMPT}'.")
    if not isinstance(steps, int) or not 1 <= steps <= MAX_PREVIEW_STEPS:
        raise InvalidInputError(f"preview_steps: got {steps!r}; use 1 to {MAX_PREVIEW_STEPS} sampler steps (default {PREVIEW_STEPS}).")


def sample_portrait(model: Any, clip: Any, vae: Any, embedding: CrossInitEmbedding, resolution: int, seed: int = 0,
                    steps: int = PREVIEW_STEPS, prompt: str = PREVIEW_PROMPT) -> torch.Tensor:
    """IMAGE [1, res, res, 3] of `prompt`, sampled by the host's own sampler and VAE with the embedding's vectors."""
    with torch.inference_mode():
        positive = encode_prompt(clip, embedding, prompt)
        negative_cond, negative_pooled = host.encode_conditioning(clip, host.tokenize(clip, ""))
        negative = [[negative_cond, {"pooled_output": negative_pooled}]]
        latent = torch.zeros(1, 4, resolution // 8, resolution // 8)
        samples = host.sample(model, latent, positive, negative, steps=steps, cfg=PREVIEW_CFG, seed=seed)
        return host.vae_decode(vae, samples)[:1].float().clamp(0, 1)


def side_by_side(face: torch.Tensor, sample: torch.Tensor, height: int = 256) -> Image.Image:
    """The input face (left) and the current sample (right), each `height` px tall."""
    panels = []
    for image in (face, sample):
        array = image.detach().float().cpu().clamp(0, 1).numpy()
        if array.shape[-1] == 1:  # grayscale photos are accepted for training
            array = array.repeat(3, axis=-1)
        panel = Image.fromarray((array[..., :3] * 255).astype(np.uint8))
        width = max(1, round(panel.width * height / panel.height))
        panels.append(panel.resize((width, height), Image.Resampling.BICUBIC))
    out = Image.new("RGB", (sum(p.width for p in panels), height), "white")
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width
    return out


def progress_preview(model: Any, clip: Any, vae: Any, images: torch.Tensor, resolution: int, seed: int,
                     prompt: str = PREVIEW_PROMPT, steps: int = PREVIEW_STEPS
                     ) -> Callable[[int, CrossInitEmbedding], tuple[str, Image.Image, int]]:
    """A training preview hook: (step, embedding) -> ComfyUI progress-preview tuple ("JPEG", image, max size)."""
    check_preview_prompt(prompt, steps)

    def render(step: int, embedding: CrossInitEmbedding) -> tuple[str, Image.Image, int]:
        sample = sample_portrait(model, clip, vae, embedding, resolution, seed=seed, steps=steps, prompt=prompt)
        log.debug("Cross-Init preview at step %d", step)
        # the face is read here, not when the hook is made: the trainer checks `images` first (an empty batch or a
        # wrong input gets its message, not an IndexError from here)
        return ("JPEG", side_by_side(images[0], sample[0]), PREVIEW_MAX_SIZE)

    return render
