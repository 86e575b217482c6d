"""Sampling and the VAE through the host's own code paths (previews, face latents)."""

from __future__ import annotations

from typing import Any

import torch


def sample(model: Any, latent: torch.Tensor, positive: list, negative: list, steps: int, cfg: float, seed: int) -> torch.Tensor:
    """The host's own KSampler path (euler, normal schedule), as a preview render uses it."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               denoise=1.0, disable_pbar=True, seed=seed)


def vae_decode(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    """Host VAE decode to an IMAGE [B, H, W, 3] in [0, 1]."""
    return vae.decode(latent)


def vae_encode(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Host VAE encode of [B, H, W, 3] pixels in [0, 1]; returns latents on the intermediate device."""
    return vae.encode(pixels[..., :3])
