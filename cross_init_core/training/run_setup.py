"""Everything a training run computes once before its loop, and the seeded draws of each step.

Latents of every face (and its mirror image) are encoded once; each step draws faces, flips, timesteps,
noise and caption templates from a seeded CPU generator, so a run is reproducible on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import host
from ..common.errors import InvalidInputError
from ..common.families import EncoderSlot
from ..common.settings import LossSettings, TrainingSettings
from ..embeddings.continuation import continue_from
from ..embeddings.embedding import CrossInitEmbedding, check_matches_slots
from ..embeddings.optimizer_state import SavedOptimizerState
from ..method.prompt_tokens import PromptLayout, layout_prompt
from ..method.templates import CAPTION_TEMPLATES

PLACEHOLDER = "{}"


# ---------------------------------------------------------------------------------------------
# Inputs


def prepare_pixels(images: Any, resolution: int, what: str = "images") -> torch.Tensor:
    """IMAGE batch [B, H, W, C] in [0, 1] -> [B, res, res, 3] (centre square crop, bicubic resize)."""
    if not torch.is_tensor(images) or images.ndim != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise InvalidInputError(f"{what}: expected an IMAGE batch [B, H, W, C]; got {shape}. Connect a LoadImage or face-prep output.")
    b, h, w, c = images.shape
    if b == 0:
        raise InvalidInputError(f"{what}: the batch is empty. Give at least one face photo.")
    if c not in (1, 3, 4):
        raise InvalidInputError(f"{what}: images have {c} channels; use RGB (3), RGBA (4) or grayscale (1).")
    if min(h, w) < 8:
        raise InvalidInputError(f"{what}: images are {w}x{h} pixels, too small to train on; use face photos of at least 256 px.")
    pixels = images.detach().float().cpu()
    if not torch.isfinite(pixels).all():
        bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(pixels))[:, 0]})
        raise InvalidInputError(f"{what}: image(s) {bad} contain NaN or infinite pixels; reload or re-export them.")
    low, high = float(pixels.min()), float(pixels.max())
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise InvalidInputError(
            f"{what}: pixel values span [{low:.3g}, {high:.3g}] but ComfyUI images are in [0, 1]; scale them (e.g. /255 or /65535)."
        )
    pixels = pixels.clamp(0, 1)
    if c == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    pixels = pixels[..., :3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[:, top : top + side, left : left + side].movedim(-1, 1)
    if side != resolution:
        square = F.interpolate(square, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
    return square.clamp(0, 1).movedim(1, -1).contiguous()


def prepare_masks(masks: Any, count: int, resolution: int, latent_hw: tuple[int, int], background_weight: float) -> torch.Tensor | None:
    """MASK [B, H, W] -> loss weights [2B, 1, h, w] for (faces, mirrored faces); None when unused."""
    if masks is None or background_weight >= 1.0:
        return None
    if not torch.is_tensor(masks) or masks.ndim not in (2, 3):
        raise InvalidInputError("masks: expected a MASK [B, H, W]; connect the face-prep node's masks output.")
    m = masks.detach().float().cpu()
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.shape[0] == 1 and count > 1:
        m = m.expand(count, -1, -1)
    if m.shape[0] != count:
        raise InvalidInputError(f"masks: {m.shape[0]} masks for {count} images; give one mask per image.")
    square = prepare_pixels(m.unsqueeze(-1), resolution, what="masks")[..., :1].movedim(-1, 1)
    small = F.interpolate(square, size=latent_hw, mode="area")
    both = torch.cat([small, small.flip(-1)])
    return background_weight + (1.0 - background_weight) * both


def encode_latents(vae: Any, model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of every face and its mirror image [2B, C, h, w], scaled for the model, encoded once."""
    both = torch.cat([pixels, pixels.flip(2)])
    with torch.inference_mode(False), torch.no_grad():
        latent = host.vae_encode(vae, both)
        return host.process_latent_in(model, latent.float()).detach().clone()



# ---------------------------------------------------------------------------------------------
# The prepared run and its draws


@dataclass
class StepDraw:
    latent_index: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    templates: list[int]


class StepSampler:
    """Seeded draws on the CPU (identical across devices): faces, flips, timesteps, noise, templates."""

    def __init__(self, seed: int, num_images: int, num_timesteps: int, num_templates: int, latent_shape: tuple[int, ...]) -> None:
        self.gen = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
        self.num_images, self.num_timesteps, self.num_templates = num_images, num_timesteps, num_templates
        self.latent_shape = latent_shape

    def draw(self, batch: int) -> StepDraw:
        faces = torch.randint(0, self.num_images, (batch,), generator=self.gen)
        flips = torch.randint(0, 2, (batch,), generator=self.gen)
        timesteps = torch.randint(0, self.num_timesteps, (batch,), generator=self.gen)
        noise = torch.randn((batch, *self.latent_shape), generator=self.gen)
        templates = torch.randint(0, self.num_templates, (batch,), generator=self.gen).tolist()
        return StepDraw(faces + flips * self.num_images, timesteps, noise, templates)


def _caption_layouts(clip: Any, slots: list[EncoderSlot], num_tokens: int) -> list[PromptLayout]:
    """One layout per caption template, repeats included (the draw is uniform over all of them)."""
    distinct = {text: layout_prompt(clip, slots, text, PLACEHOLDER, num_tokens) for text in dict.fromkeys(CAPTION_TEMPLATES)}
    return [distinct[text] for text in CAPTION_TEMPLATES]


@dataclass
class PreparedRun:
    """Everything computed once before the loop: checked inputs, latents, caption layouts, sigmas."""

    model: Any
    clip: Any
    slots: list[EncoderSlot]
    prediction: str  # what the UNet predicts: "eps" or "v"
    settings: TrainingSettings
    loss_settings: LossSettings
    layouts: list[PromptLayout]
    latents: torch.Tensor
    weights: torch.Tensor | None
    sigmas: torch.Tensor
    init: dict[str, torch.Tensor]
    num_images: int
    embedding: CrossInitEmbedding  # what is trained: the vectors it starts from (see `continuation`)
    previous_steps: int = 0  # a trained embedding going on: the steps it was already trained for
    optimizer_state: SavedOptimizerState | None = None  # where its optimizer goes on from (None: fresh)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return int(self.latents.shape[-2]), int(self.latents.shape[-1])

    def sampler(self) -> StepSampler:
        return StepSampler(self.settings.seed, self.num_images, self.sigmas.shape[0], len(self.layouts), tuple(self.latents.shape[1:]))


def prepare_run(
    model: Any,
    clip: Any,
    vae: Any,
    images: torch.Tensor,
    embedding: CrossInitEmbedding,
    settings: TrainingSettings,
    loss_settings: LossSettings | None = None,
    masks: torch.Tensor | None = None,
) -> PreparedRun:
    settings = settings.validated()
    loss_settings = (loss_settings or LossSettings()).validated()
    model, clip = host.static_models(model, clip)
    slots = host.check_model_matches_clip(model, clip)
    check_matches_slots(embedding, slots)
    prediction = host.prediction_type(model)
    pixels = prepare_pixels(images, settings.resolution)
    continued = continue_from(clip, embedding)  # after every check: it may run the CLIP once
    embedding = continued.embedding
    latents = encode_latents(vae, model, pixels)
    weights = prepare_masks(masks, pixels.shape[0], settings.resolution, tuple(latents.shape[-2:]), loss_settings.background_weight)
    timesteps = torch.arange(host.num_train_timesteps(model))
    init = embedding.init_vectors or embedding.vectors
    return PreparedRun(
        model=model, clip=clip, slots=slots, prediction=prediction, settings=settings, loss_settings=loss_settings,
        layouts=_caption_layouts(clip, slots, embedding.num_tokens), latents=latents, weights=weights,
        sigmas=host.sigmas_for_timesteps(model, timesteps),
        init={k: v.detach().float().cpu().clone() for k, v in init.items()}, num_images=pixels.shape[0],
        embedding=embedding, previous_steps=continued.previous_steps, optimizer_state=continued.optimizer,
    )
