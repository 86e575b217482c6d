"""The training objective: diffusion loss in the model's own parametrization plus the Cross-Init regularizer.

`StepLoss` evaluates it for one step's draw on the host models (inside a `training_session`).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import host
from ..training.run_setup import PreparedRun, StepDraw


def prediction_from_denoised(prediction: str, x_noisy: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The raw UNet prediction recovered from the host's denoised output (k-diffusion convention).

    eps: denoised = x - sigma * eps.  v: denoised = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1).
    """
    s = sigma.view(-1, *([1] * (x_noisy.ndim - 1)))
    if prediction == "eps":
        return (x_noisy - denoised) / s
    return (x_noisy / (s**2 + 1) - denoised) * torch.sqrt(s**2 + 1) / s


def target(prediction: str, latent: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps: the noise. v: alpha * eps - s * x0 with alpha = 1/sqrt(sigma^2+1), s = sigma/sqrt(sigma^2+1)."""
    if prediction == "eps":
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


class StepLoss:
    """loss(params, draw) -> (total, diffusion mse, regularizer) for one step; inside a training_session."""

    def __init__(self, run: PreparedRun, device: torch.device) -> None:
        self.run, self.device = run, device
        self.latents = run.latents.to(device)
        self.sigmas = run.sigmas.to(device)
        self.weights = run.weights.to(device) if run.weights is not None else None
        self.init = {k: v.to(device) for k, v in run.init.items()}
        self.sdxl = host.is_sdxl_model(run.model)

    def __call__(self, params: dict[str, torch.Tensor], draw: StepDraw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mse = self.diffusion(params, draw)
        reg = regularizer(params, self.init)
        return mse + self.run.loss_settings.reg_weight * reg, mse, reg

    def regularizer(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return regularizer(params, self.init)

    def diffusion(self, params: dict[str, torch.Tensor], draw: StepDraw, rows: slice | None = None) -> torch.Tensor:
        """The diffusion MSE of the draw; with `rows`, that chunk's share of the whole batch's MSE.

        Shares of disjoint chunks covering the batch sum to the batch MSE (masked: each chunk's weighted
        error sum over the batch's total weight), so their gradients sum to the full-batch gradient.
        """
        run = self.run
        batch = draw.latent_index.shape[0]
        index_all = draw.latent_index.to(self.device)
        index = index_all if rows is None else index_all[rows]
        timesteps = draw.timesteps if rows is None else draw.timesteps[rows]
        noise = (draw.noise if rows is None else draw.noise[rows]).to(self.device)
        templates = draw.templates if rows is None else draw.templates[rows]
        x0 = self.latents[index]
        sigma = self.sigmas[timesteps.to(self.device)]
        x_noisy = x0 + sigma.view(-1, 1, 1, 1) * noise
        token_rows: dict[str, list[Any]] = {slot.token_key: [] for slot in run.slots}
        for template in templates:
            filled = run.layouts[template].fill(params, run.slots)
            for slot in run.slots:
                token_rows[slot.token_key].append(filled[slot.token_key][0])
        cond, pooled = host.encode_batch_for_training(run.clip, run.slots, token_rows)
        extra = {}
        if self.sdxl:
            size = run.settings.resolution
            extra["y"] = host.sdxl_adm(run.model, pooled, size, size)
        den = host.denoised(run.model, x_noisy, sigma, cond.to(self.device), **extra)
        predicted = prediction_from_denoised(run.prediction, x_noisy, den, sigma)
        pixel_weight = None if self.weights is None else self.weights[index]
        mse = diffusion_mse(predicted, target(run.prediction, x0, noise, sigma), pixel_weight)
        if rows is None or index.shape[0] == batch:
            return mse
        if pixel_weight is None:
            return mse * (index.shape[0] / batch)
        return mse * (pixel_weight.sum() / self.weights[index_all].sum().clamp_min(1e-8))
