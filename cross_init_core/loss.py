"""The training objective: diffusion loss in the model's own parametrization plus the Cross-Init regularizer."""

from __future__ import annotations

import torch


def prediction_from_denoised(kind: str, x_noisy: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The raw UNet prediction recovered from the host's denoised output (k-diffusion convention).

    eps: denoised = x - sigma * eps.  v: denoised = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1).
    """
    s = sigma.view(-1, *([1] * (x_noisy.ndim - 1)))
    if kind == "eps":
        return (x_noisy - denoised) / s
    return (x_noisy / (s**2 + 1) - denoised) * torch.sqrt(s**2 + 1) / s


def target(kind: str, latent: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps: the noise. v: alpha * eps - s * x0 with alpha = 1/sqrt(sigma^2+1), s = sigma/sqrt(sigma^2+1)."""
    if kind == "eps":
        return noise
    s = sigma.view(-1, *([1] * (latent.ndim - 1)))
    scale = torch.rsqrt(s**2 + 1)
    return scale * noise - s * scale * latent


def diffusion_mse(prediction: torch.Tensor, goal: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error; with a per-pixel weight map [b, 1, h, w], a weighted mean."""
    err = (prediction.float() - goal.float()) ** 2
    if weight is None:
        return err.mean()
    w = weight.expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1e-8)


def regularizer(vectors: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> torch.Tensor:
    """mean_j ||v_j - v_init_j||_2 (un-squared, as the reference), summed over text encoders."""
    return sum((vectors[k] - init[k]).norm(dim=-1).mean() for k in vectors)  # type: ignore[return-value]
