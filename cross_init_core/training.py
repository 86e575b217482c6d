"""Textual inversion of the Cross-Initialized tokens on the host's MODEL, CLIP and VAE.

Only the new vectors are trained. Latents of every face (and its mirror image) are encoded once before
the loop; each step draws faces, flips, timesteps, noise and caption templates from a seeded CPU
generator, so a run is reproducible.

Memory: a step's batch may be split into micro-batches whose gradients are accumulated (each chunk's
loss weighted by its share of the batch, the regularizer added once), and the UNet blocks may be
gradient-checkpointed. The draws are made for the whole batch first, so neither changes the result
beyond float round-off. Host syncs: the loop reads the loss back only every `SYNC_EVERY` steps (NaN
check, loss history), or every step when an `on_step` callback wants the value.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, host_adapter
from .embedding import CrossInitEmbedding, check_matches_slots
from .errors import CrossInitError, InvalidInputError, TrainingDivergedError
from .loss import diffusion_mse, prediction_from_denoised, regularizer, target
from .prompt_tokens import PromptLayout, layout_prompt
from .settings import LossSettings, MemoryPlan, MemorySettings, TrainingSettings, plan_memory
from .templates import CAPTION_TEMPLATES

log = logging.getLogger(__name__)

PLACEHOLDER = "{}"
SYNC_EVERY = 8

StepCallback = Callable[[int, int, float], None]


@dataclass
class TrainingResult:
    embedding: CrossInitEmbedding
    losses: list[float]
    regs: list[float]
    seconds: float
    setup_seconds: float
    memory_plan: MemoryPlan | None = None


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
        latent = host_adapter.vae_encode(vae, both)
        return host_adapter.process_latent_in(model, latent.float()).detach().clone()


# ---------------------------------------------------------------------------------------------
# The loop


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


def base_model_kind(slots: list[host_adapter.EncoderSlot], prediction: str) -> str:
    family = {("clip_l",): "sd1", ("clip_h",): "sd2", ("clip_l", "clip_g"): "sdxl"}.get(tuple(s.key for s in slots), "unknown")
    return f"{family}-{prediction}"


def _caption_layouts(clip: Any, slots: list[host_adapter.EncoderSlot], num_tokens: int) -> list[PromptLayout]:
    """One layout per caption template, repeats included (the draw is uniform over all of them)."""
    distinct = {text: layout_prompt(clip, slots, text, PLACEHOLDER, num_tokens) for text in dict.fromkeys(CAPTION_TEMPLATES)}
    return [distinct[text] for text in CAPTION_TEMPLATES]


@dataclass
class PreparedRun:
    """Everything computed once before the loop: checked inputs, latents, caption layouts, sigmas."""

    model: Any
    clip: Any
    slots: list[host_adapter.EncoderSlot]
    kind: str
    settings: TrainingSettings
    loss_settings: LossSettings
    layouts: list[PromptLayout]
    latents: torch.Tensor
    weights: torch.Tensor | None
    sigmas: torch.Tensor
    init: dict[str, torch.Tensor]
    num_images: int

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
    model, clip = host_adapter.static_models(model, clip)
    slots = host_adapter.check_model_matches_clip(model, clip)
    check_matches_slots(embedding, slots)
    kind = host_adapter.prediction_type(model)
    pixels = prepare_pixels(images, settings.resolution)
    latents = encode_latents(vae, model, pixels)
    weights = prepare_masks(masks, pixels.shape[0], settings.resolution, tuple(latents.shape[-2:]), loss_settings.background_weight)
    timesteps = torch.arange(host_adapter.num_train_timesteps(model))
    init = embedding.init_vectors or embedding.vectors
    return PreparedRun(
        model=model, clip=clip, slots=slots, kind=kind, settings=settings, loss_settings=loss_settings,
        layouts=_caption_layouts(clip, slots, embedding.num_tokens), latents=latents, weights=weights,
        sigmas=host_adapter.sigmas_for_timesteps(model, timesteps),
        init={k: v.detach().float().cpu().clone() for k, v in init.items()}, num_images=pixels.shape[0],
    )


class StepLoss:
    """loss(params, draw) -> (total, diffusion mse, regularizer) for one step; inside a training_session."""

    def __init__(self, run: PreparedRun, device: torch.device) -> None:
        self.run, self.device = run, device
        self.latents = run.latents.to(device)
        self.sigmas = run.sigmas.to(device)
        self.weights = run.weights.to(device) if run.weights is not None else None
        self.init = {k: v.to(device) for k, v in run.init.items()}
        self.sdxl = host_adapter.is_sdxl_model(run.model)

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
        cond, pooled = host_adapter.encode_batch_for_training(run.clip, run.slots, token_rows)
        extra = {}
        if self.sdxl:
            size = run.settings.resolution
            extra["y"] = host_adapter.sdxl_adm(run.model, pooled, size, size)
        den = host_adapter.denoised(run.model, x_noisy, sigma, cond.to(self.device), **extra)
        prediction = prediction_from_denoised(run.kind, x_noisy, den, sigma)
        pixel_weight = None if self.weights is None else self.weights[index]
        mse = diffusion_mse(prediction, target(run.kind, x0, noise, sigma), pixel_weight)
        if rows is None or index.shape[0] == batch:
            return mse
        if pixel_weight is None:
            return mse * (index.shape[0] / batch)
        return mse * (pixel_weight.sum() / self.weights[index_all].sum().clamp_min(1e-8))


def _memory_plan(run: PreparedRun, memory: MemorySettings, device: torch.device | None) -> tuple[MemoryPlan, int]:
    """The micro-batch/checkpointing plan and the activation bytes to ask the host to keep free.

    available for activations = budget - UNet and text-encoder weights - a fixed workspace (budget given), or
    free device memory after loading - workspace (auto on CUDA); no limit on the CPU in auto or with budget 0.
    """
    batch = run.settings.batch_size
    latent_hw = (int(run.latents.shape[-2]), int(run.latents.shape[-1]))
    plain = host_adapter.activation_bytes_per_sample(run.model, latent_hw, checkpointed=False)
    ckpt = host_adapter.activation_bytes_per_sample(run.model, latent_hw, checkpointed=True)
    available: int | None = None
    if memory.budget_gb:
        budget = int(memory.budget_gb * 2**30)
        available = max(0, budget - host_adapter.weights_bytes(run.model, run.clip) - host_adapter.WORKSPACE_BYTES)
    elif memory.budget_gb is None and device is not None:
        free = host_adapter.free_device_bytes(device)
        available = None if free is None else max(0, free - host_adapter.WORKSPACE_BYTES)
    plan = plan_memory(batch, available, plain, ckpt, memory)
    return plan, plan.micro_batch * (ckpt if plan.checkpointing else plain)


def _out_of_memory(step: int, total: int, plan: MemoryPlan) -> CrossInitError:
    """The message for an out-of-memory error at `step` (1-based), raised after the host is restored."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return CrossInitError(
        f"out of GPU memory at step {step}/{total} (micro-batch {plan.micro_batch}, UNet checkpointing "
        f"{'on' if plan.checkpointing else 'off'}). Set the trainer's memory input to your card's VRAM in GB "
        "(e.g. 8) so training uses micro-batches and checkpointing, or lower batch_size or resolution, "
        "and close other programs that use the GPU."
    )


def _segments(steps: int, preview_every: int) -> list[tuple[int, int]]:
    """[start, end) step ranges; a preview is rendered after each one that ends on a multiple of preview_every."""
    if preview_every <= 0:
        return [(0, steps)]
    ends = [*range(preview_every, steps, preview_every), steps]
    return list(zip([0, *ends[:-1]], ends, strict=True))


class _Optimization:
    """The learned vectors, their optimizer and the not-yet-read losses: state that outlives a session."""

    def __init__(self, embedding: CrossInitEmbedding, settings: TrainingSettings, device: torch.device) -> None:
        self.embedding, self.settings = embedding, settings
        self.params = {k: torch.nn.Parameter(v.detach().float().clone().to(device)) for k, v in embedding.vectors.items()}
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
        )
        # per step, until read back: (loss, reg, finite flag, vectors before the step) as device tensors
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]] = []
        self.losses: list[float] = []
        self.regs: list[float] = []

    def step(self, step_loss: StepLoss, draw: StepDraw, plan: MemoryPlan, reg_weight: float) -> None:
        batch = self.settings.batch_size
        params = self.params
        self.optimizer.zero_grad(set_to_none=True)
        if plan.micro_batch >= batch:
            loss, _mse, reg = step_loss(params, draw)
            loss.backward()
            loss = loss.detach()
        else:
            mse = torch.zeros((), device=step_loss.device)
            for first in range(0, batch, plan.micro_batch):
                part = step_loss.diffusion(params, draw, slice(first, first + plan.micro_batch))
                part.backward()
                mse = mse + part.detach()
            reg = step_loss.regularizer(params)
            (reg_weight * reg).backward()
            loss = mse + reg_weight * reg.detach()
        finite = torch.stack([torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None]).all()
        self.pending.append((loss, reg.detach(), finite, {k: p.detach().clone() for k, p in params.items()}))
        self.optimizer.step()

    def read_back(self, last_step: int, on_step: StepCallback | None) -> None:
        """One host sync for the pending steps: NaN/inf check, loss history, callbacks."""
        if not self.pending:
            return
        first = last_step - len(self.pending) + 1
        values = torch.stack([torch.stack([loss, reg, ok.float()]) for loss, reg, ok, _ in self.pending]).tolist()
        total = self.settings.steps
        for offset, (loss_value, reg_value, ok) in enumerate(values):
            step = first + offset
            if not (ok and math.isfinite(loss_value)):
                last = self.embedding.with_vectors(self.pending[offset][3], stopped_at_step=str(step))
                raise TrainingDivergedError(
                    f"training stopped at step {step + 1}/{total}: the loss became {loss_value} (NaN/inf). "
                    "The last finite vectors were kept. Lower learning_rate, or if the model runs in fp16, "
                    "start ComfyUI with --force-fp32 or --fp32-unet.",
                    embedding=last,
                    step=step,
                )
            self.losses.append(loss_value)
            self.regs.append(reg_value)
            if on_step is not None:
                on_step(step + 1, total, loss_value)
        self.pending.clear()

    def vectors(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}


PreviewHook = Callable[[int, CrossInitEmbedding], Any]


@dataclass
class _Callbacks:
    """Where a run reports to: the host progress bar, the console bar, and the caller's optional hooks."""

    reporter: Callable[[int, Any], None]
    console: tqdm
    on_step: StepCallback | None = None
    fault_hook: Callable[[int], None] | None = None
    preview: PreviewHook | None = None
    preview_every: int = 0


def _run_segments(
    run: PreparedRun, embedding: CrossInitEmbedding, memory: MemorySettings, plan: MemoryPlan, request: int,
    sync_every: int, calls: _Callbacks, started: float,
) -> tuple[_Optimization, MemoryPlan, float, float]:
    """The training loop, one host session per preview interval; returns (state, plan, setup s, loop s)."""
    reporter, console, on_step, fault_hook = calls.reporter, calls.console, calls.on_step, calls.fault_hook
    preview, preview_every = calls.preview, calls.preview_every
    model, clip, settings = run.model, run.clip, run.settings
    batch, reg_weight = settings.batch_size, run.loss_settings.reg_weight
    sampler = run.sampler()
    state: _Optimization | None = None
    setup_seconds = 0.0
    loop_seconds = 0.0
    out_of_memory_at: int | None = None

    def report_losses(step: int, total: int, loss: float) -> None:
        console.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if on_step is not None:
            on_step(step, total, loss)

    for first_step, end_step in _segments(settings.steps, preview_every if preview is not None else 0):
        with host_adapter.training_session(model, clip, memory_required=request) as device:
            if state is None:
                if memory.budget_gb is None:
                    plan, _ = _memory_plan(run, memory, device)
                log.info("Cross-Init memory: micro-batch %d of %d, UNet checkpointing %s (%s)",
                         plan.micro_batch, batch, "on" if plan.checkpointing else "off", plan.reason)
                state = _Optimization(embedding, settings, device)
                setup_seconds = time.perf_counter() - started
            step_loss = StepLoss(run, device)
            segment_started = time.perf_counter()
            step = first_step
            try:
                with host_adapter.unet_checkpointing(model, plan.checkpointing):
                    for step in range(first_step, end_step):
                        host_adapter.check_interrupted()
                        draw = sampler.draw(batch)
                        if fault_hook is not None:
                            fault_hook(step)
                        state.step(step_loss, draw, plan, reg_weight)
                        if len(state.pending) >= sync_every or step + 1 == end_step:
                            state.read_back(step, report_losses)
                        reporter(step + 1, None)
                        console.update(1)
            except host_adapter.out_of_memory_errors():
                out_of_memory_at = step + 1  # leaving the except frees the activations its frames hold
            loop_seconds += time.perf_counter() - segment_started
            del step_loss
            if out_of_memory_at is not None:
                state = None  # drop device tensors before the cache is emptied
        if out_of_memory_at is not None:
            raise _out_of_memory(out_of_memory_at, settings.steps, plan)
        if preview is not None and preview_every > 0 and end_step % preview_every == 0:
            snapshot = embedding.with_vectors(state.vectors())
            reporter(end_step, preview(end_step, snapshot))
    assert state is not None
    return state, plan, setup_seconds, loop_seconds


def train(
    model: Any,
    clip: Any,
    vae: Any,
    images: torch.Tensor,
    embedding: CrossInitEmbedding,
    settings: TrainingSettings,
    loss_settings: LossSettings | None = None,
    masks: torch.Tensor | None = None,
    mode: str = "custom",
    on_step: StepCallback | None = None,
    fault_hook: Callable[[int], None] | None = None,
    memory: MemorySettings | None = None,
    preview: PreviewHook | None = None,
    preview_every: int = 0,
) -> TrainingResult:
    """Trains `embedding`'s vectors on the host models; host objects are left exactly as they were.

    `on_step(step, total, loss)` is called after every step; `fault_hook(step)` runs inside the step before
    the forward pass (tests use it to inject faults). `memory` picks micro-batches and gradient
    checkpointing (see `MemorySettings`); the result is the same to float round-off. Every `preview_every`
    steps, `preview(step, embedding_so_far)` runs with the host models restored (it may sample with them)
    and what it returns is shown in the progress bar.
    """
    started = time.perf_counter()
    memory = (memory or MemorySettings()).validated()
    run = prepare_run(model, clip, vae, images, embedding, settings, loss_settings, masks)
    settings = run.settings
    plan, needed = _memory_plan(run, memory, None)
    # a budget: ask the host to keep the planned activations free (it unloads the VAE and other models as
    # needed). auto: ask for nothing more than the models; the plan then fits what is free after loading
    # (asking for more than the card has would make the host unload and reload the models being trained)
    request = needed if memory.budget_gb else 0
    sync_every = 1 if on_step is not None else SYNC_EVERY
    console = tqdm(total=settings.steps, desc="Cross-Init training", unit="step", dynamic_ncols=True)
    calls = _Callbacks(host_adapter.progress_reporter(settings.steps), console, on_step, fault_hook, preview, preview_every)
    try:
        state, plan, setup_seconds, loop_seconds = _run_segments(run, embedding, memory, plan, request, sync_every, calls, started)
    finally:
        console.close()
    learned = state.vectors()

    metadata = {
        "method": "cross_initialization",
        "mode": mode,
        **settings.as_metadata(),
        "reg_weight": str(run.loss_settings.reg_weight),
        "base_model": base_model_kind(run.slots, run.kind),
        "num_tokens": str(embedding.num_tokens),
        "pack_version": __version__,
    }
    result = embedding.with_vectors(learned, **metadata)
    result.loss_history = list(zip(state.losses, state.regs, strict=True))
    result.init_vectors = {k: v.clone() for k, v in run.init.items()}
    log.info(
        "Cross-Init training: %d steps in %.1f s (setup %.1f s), final loss %.4f, norms %s (init %s)",
        settings.steps, loop_seconds, setup_seconds, state.losses[-1] if state.losses else float("nan"),
        {k: [round(float(x), 2) for x in v.norm(dim=1)] for k, v in result.vectors.items()},
        {k: [round(float(x), 2) for x in v.norm(dim=1)] for k, v in result.init_vectors.items()},
    )
    return TrainingResult(embedding=result, losses=state.losses, regs=state.regs, seconds=loop_seconds,
                          setup_seconds=setup_seconds, memory_plan=plan)
