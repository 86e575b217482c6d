"""Textual inversion of the Cross-Initialized tokens on the host's MODEL, CLIP and VAE: the training loop.

Only the new vectors are trained. `run_setup` prepares the run (latents, caption layouts, seeded draws);
`loss.StepLoss` evaluates the objective of one step on the host models; a `Trainer` runs the steps.

Memory: a step's batch may be split into micro-batches whose gradients are accumulated (each chunk's
loss weighted by its share of the batch, the regularizer added once), and the UNet blocks may be
gradient-checkpointed (`memory` plans both). The draws are made for the whole batch first, so neither
changes the result beyond float round-off. Host syncs: the loop reads the loss back only every
`SYNC_EVERY` steps (NaN check, loss history), or every step when an `on_step` callback wants the value.

Precision: the vectors, their gradients and the AdamW state are float32 whatever the host's UNet runs in;
a float16 UNet gets dynamic loss scaling (`loss_scaling.LossScaler`).

Checkpoints: with `save_every` N the vectors after every N steps are kept (and the end's), each with its step
count in the metadata; the draws do not depend on it, so the checkpoint at step k equals a k-step run. A loaded
file goes on where its run stopped (`continuation`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from .. import __version__, host
from ..common import families
from ..common.errors import InvalidInputError, TrainingDivergedError
from ..common.settings import LossSettings, TrainingSettings, checkpoint_steps
from ..embeddings import optimizer_state
from ..embeddings.embedding import CrossInitEmbedding
from ..method.loss import StepLoss
from .loss_scaling import LossScaler
from .memory import DevicePeak, MemoryPlan, MemorySettings, out_of_memory_error, plan_for_run
from .run_setup import PreparedRun, StepDraw, prepare_run

log = logging.getLogger(__name__)

SYNC_EVERY = 8

StepCallback = Callable[[int, int, float], None]
PreviewHook = Callable[[int, CrossInitEmbedding], Any]


@dataclass
class TrainingResult:
    embedding: CrossInitEmbedding
    losses: list[float]  # one per applied step (steps skipped for fp16 overflow leave no entry)
    regs: list[float]
    seconds: float
    setup_seconds: float
    memory_plan: MemoryPlan | None = None
    skipped_steps: list[int] | None = None  # 0-based steps skipped for fp16 gradient overflow
    loss_scale: float | None = None  # the fp16 loss scale at the end (None: no scaling)
    peak_vram_mib: float | None = None  # the run's peak CUDA memory (max allocated; None off CUDA)
    checkpoints: list[CrossInitEmbedding] | None = None  # every save_every steps and the end (the last is `embedding`)


@dataclass
class Callbacks:
    """Where a run reports to: the host progress bar, the console bar, and the caller's optional hooks."""

    reporter: Callable[[int, Any], None]
    console: tqdm
    on_step: StepCallback | None = None
    fault_hook: Callable[[int], None] | None = None
    preview: PreviewHook | None = None
    preview_every: int = 0


def preview_segments(steps: int, preview_every: int) -> list[tuple[int, int]]:
    """[start, end) step ranges; a preview is rendered after each one that ends on a multiple of preview_every."""
    if preview_every <= 0:
        return [(0, steps)]
    ends = [*range(preview_every, steps, preview_every), steps]
    return list(zip([0, *ends[:-1]], ends, strict=True))


@dataclass
class _Pending:
    """One step's results, on the device until read back."""

    loss: torch.Tensor
    reg: torch.Tensor
    finite: torch.Tensor
    before: dict[str, torch.Tensor]  # the vectors before the step
    skipped: bool = False


class Trainer:
    """One training run: the prepared run, its memory plan, the optimizer state (with the fp16 loss scaler)
    and the callbacks. `train()` runs every step, one host session per preview interval; the learned
    vectors, the loss history and the skipped steps stay on the object.

    The optimizer state is made in the first session (on the device the host loaded the models to) and
    outlives the sessions; an out-of-memory error drops it before the device cache is emptied.
    """

    def __init__(self, run: PreparedRun, memory: MemorySettings, calls: Callbacks, started: float, mode: str = "custom",
                 save_every: int = 0) -> None:
        self.run, self.embedding, self.memory, self.calls, self.started = run, run.embedding, memory, calls, started
        self.mode = mode  # the trainer node's mode, for the metadata
        self.previous_steps = run.previous_steps  # a continued run: the steps it was already trained for
        self.checkpoint_at = set(checkpoint_steps(run.settings.steps, save_every)[:-1])  # the end is the result itself
        settings = run.settings
        self.plan, needed = plan_for_run(run.model, run.clip, settings.batch_size, run.latent_hw, memory, None)
        # a budget: ask the host to keep the planned activations free (it unloads the VAE and other models as
        # needed). auto: ask for nothing more than the models; the plan then fits what is free after loading
        # (asking for more than the card has would make the host unload and reload the models being trained)
        self.request = needed if memory.budget_gb else 0
        self.sync_every = 1 if calls.on_step is not None else SYNC_EVERY
        self.sampler = run.sampler()
        for _ in range(self.previous_steps):  # a continued run's draws go on where its earlier run's would have
            self.sampler.draw(settings.batch_size)
        self.scaler = LossScaler.for_model(run.model)  # the UNet's compute dtype is fixed when the model is made
        self.params: dict[str, torch.nn.Parameter] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.pending: list[_Pending] = []
        self.losses: list[float] = []
        self.regs: list[float] = []
        self.loss_steps: list[int] = []  # the step (1-based, counting a continued file's) each loss belongs to
        self.skipped: list[int] = []
        self.checkpoints: list[CrossInitEmbedding] = []
        self.shared_metadata: dict[str, str] | None = None  # made at the first checkpoint, with the models set up
        self.setup_seconds = 0.0
        self.loop_seconds = 0.0

    def train(self) -> None:
        calls = self.calls
        for first_step, end_step in preview_segments(self.run.settings.steps, calls.preview_every if calls.preview is not None else 0):
            self._segment(first_step, end_step)
            if calls.preview is not None and calls.preview_every > 0 and end_step % calls.preview_every == 0:
                snapshot = self.embedding.with_vectors(self.vectors())
                calls.reporter(end_step, calls.preview(end_step, snapshot))
        self._check_some_step_applied()

    def vectors(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}

    def _start(self, device: torch.device) -> None:
        """The plan for the device (auto budget) and the optimizer state, in the first host session."""
        run, plan = self.run, self.plan
        if self.memory.budget_gb is None:
            plan, _ = plan_for_run(run.model, run.clip, run.settings.batch_size, run.latent_hw, self.memory, device)
            self.plan = plan
        log.info("Cross-Init memory: micro-batch %d of %d, UNet checkpointing %s (%s)",
                 plan.micro_batch, run.settings.batch_size, "on" if plan.checkpointing else "off", plan.reason)
        self.params = {k: torch.nn.Parameter(v.detach().float().clone().to(device)) for k, v in self.embedding.vectors.items()}
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=run.settings.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
        )
        if run.optimizer_state is not None:  # a continued file: its moments and step count, so N + M steps equal N + M
            optimizer_state.restore(run.optimizer_state, self.optimizer, self.params, self.scaler)
        self.setup_seconds = time.perf_counter() - self.started

    def _segment(self, first_step: int, end_step: int) -> None:
        """Steps [first_step, end_step) in one host session."""
        run, calls = self.run, self.calls
        out_of_memory_at: int | None = None
        with host.training_session(run.model, run.clip, memory_required=self.request) as device:
            if self.optimizer is None:
                self._start(device)
            step_loss = StepLoss(run, device)
            segment_started = time.perf_counter()
            step = first_step
            try:
                with host.unet_checkpointing(run.model, self.plan.checkpointing):
                    for step in range(first_step, end_step):
                        host.check_interrupted()
                        draw = self.sampler.draw(run.settings.batch_size)
                        if calls.fault_hook is not None:
                            calls.fault_hook(step)
                        self._step(step_loss, draw)
                        checkpoint = step + 1 in self.checkpoint_at
                        if checkpoint or len(self.pending) >= self.sync_every or step + 1 == end_step:
                            self._read_back(step)  # a checkpoint holds the loss history through its step
                        if checkpoint:
                            self.checkpoints.append(self._embedding_at(step + 1))
                        calls.reporter(step + 1, None)
                        calls.console.update(1)
            except host.out_of_memory_errors():
                out_of_memory_at = step + 1  # leaving the except frees the activations its frames hold
            self.loop_seconds += time.perf_counter() - segment_started
            del step_loss
            if out_of_memory_at is not None:  # drop device tensors before the cache is emptied
                self.params, self.optimizer, self.pending = {}, None, []
        if out_of_memory_at is not None:
            raise out_of_memory_error(out_of_memory_at, run.settings.steps, self.plan)

    def _step(self, step_loss: StepLoss, draw: StepDraw) -> None:
        """One optimizer step: the batch in micro-batch chunks (one chunk when it fits), gradients accumulated.

        Each chunk's backward takes its share of the batch's diffusion MSE. The regularizer counts once per
        step: in the one chunk's backward when the batch fits, else in a backward of its own after the
        chunks. (Moving it would regroup the gradient sums and change results in the last bits.)
        """
        assert self.optimizer is not None
        batch, micro = self.run.settings.batch_size, self.plan.micro_batch
        reg_weight = self.run.loss_settings.reg_weight
        params, scaler = self.params, self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        chunks = range(0, batch, micro)
        mse: torch.Tensor | None = None
        reg: torch.Tensor | None = None
        for first in chunks:
            objective = step_loss.diffusion(params, draw, slice(first, first + micro))
            mse = objective.detach() if mse is None else mse + objective.detach()
            if len(chunks) == 1:
                reg = step_loss.regularizer(params)
                objective = objective + reg_weight * reg
            scaler.scaled(objective).backward()
        if reg is None:
            reg = step_loss.regularizer(params)
            scaler.scaled(reg_weight * reg).backward()
        loss = mse + reg_weight * reg.detach()
        scaler.unscale_(params)
        finite = torch.stack([torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None]).all()
        pending = _Pending(loss, reg.detach(), finite, {k: p.detach().clone() for k, p in params.items()})
        self.pending.append(pending)
        if scaler.enabled:
            scale = scaler.scale
            pending.skipped = scaler.update(bool(finite))
            if pending.skipped:
                log.info("Cross-Init fp16: gradient overflow at loss scale %g; step skipped, scale now %g", scale, scaler.scale)
                return
        self.optimizer.step()

    def _read_back(self, last_step: int) -> None:
        """One host sync for the pending steps: NaN/inf check, loss history, callbacks."""
        if not self.pending:
            return
        first = last_step - len(self.pending) + 1
        values = torch.stack([torch.stack([p.loss, p.reg, p.finite.float()]) for p in self.pending]).tolist()
        total = self.run.settings.steps
        for offset, (loss_value, reg_value, ok) in enumerate(values):
            step = first + offset
            if self.pending[offset].skipped:
                self.skipped.append(step)  # fp16 overflow: the vectors did not move, the scale was lowered
                continue
            if not (ok and math.isfinite(loss_value)):
                last = self.embedding.with_vectors(self.pending[offset].before, stopped_at_step=str(step))
                raise TrainingDivergedError(
                    f"training stopped at step {step + 1}/{total}: the loss became {loss_value} (NaN/inf). "
                    "The last finite vectors were kept. Lower learning_rate, or if the model runs in fp16, "
                    "start ComfyUI with --force-fp32 or --fp32-unet.",
                    embedding=last,
                    step=step,
                )
            self.losses.append(loss_value)
            self.regs.append(reg_value)
            self.loss_steps.append(self.previous_steps + step + 1)
            self.calls.console.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            if self.calls.on_step is not None:
                self.calls.on_step(step + 1, total, loss_value)
        self.pending.clear()

    def _check_some_step_applied(self) -> None:
        """Raises when float16 overflow skipped every step (the vectors never moved)."""
        total = self.run.settings.steps
        if self.scaler.enabled and len(self.skipped) == total:
            raise TrainingDivergedError(
                f"training made no progress: all {total} steps overflowed in the float16 UNet (inf/NaN gradients "
                f"even at loss scale {self.scaler.scale:g}), so every step was skipped. Start ComfyUI with "
                "--bf16-unet (cards that support it) or --fp32-unet, or lower learning_rate.",
                embedding=self.embedding.with_vectors(self.vectors(), stopped_at_step="0"),
                step=0,
            )

    def _run_metadata(self) -> dict[str, str]:
        """The file metadata every checkpoint of this run shares (its `steps` are set per checkpoint)."""
        run = self.run
        return {
            "method": "cross_initialization",
            "mode": self.mode,
            **run.settings.as_metadata(),
            "reg_weight": str(run.loss_settings.reg_weight),
            "base_model": families.base_model((s.key for s in run.slots), run.prediction),
            "num_tokens": str(self.embedding.num_tokens),
            "unet_dtype": host.dtype_name(host.unet_compute_dtype(run.model)),
            "clip_layer": host.clip_layer(run.clip),
            "pack_version": __version__,
        }

    def _metadata(self, steps_done: int) -> dict[str, str]:
        """The file metadata of the vectors after `steps_done` of this run's steps (counting a continued file's)."""
        if self.shared_metadata is None:
            self.shared_metadata = self._run_metadata()
        metadata = {**self.shared_metadata, "steps": str(self.previous_steps + steps_done)}
        if self.previous_steps:
            metadata["continued_from_steps"] = str(self.previous_steps)
        if self.scaler.enabled:
            metadata["fp16_skipped_steps"] = str(sum(1 for s in self.skipped if s < steps_done))
        if self.optimizer is not None and (state := optimizer_state.pack(self.optimizer, self.params, self.scaler)):
            metadata[optimizer_state.METADATA_KEY] = state  # a run going on from this file continues exactly
        return metadata

    def _embedding_at(self, steps_done: int, **extra: str) -> CrossInitEmbedding:
        """The learned vectors now, as the embedding a run of `steps_done` steps gives (metadata, loss history)."""
        embedding = self.embedding.with_vectors(self.vectors(), **self._metadata(steps_done), **extra)
        embedding.loss_history = list(zip(self.losses, self.regs, strict=True))
        embedding.loss_steps = list(self.loss_steps)
        embedding.init_vectors = {k: v.clone() for k, v in self.run.init.items()}
        return embedding

    def result(self, peak_vram_mib: float | None = None) -> TrainingResult:
        """The trained embedding (settings and provenance in its metadata) and the run's statistics."""
        settings = self.run.settings
        if self.skipped:
            log.warning("Cross-Init fp16: %d of %d steps skipped for gradient overflow (loss scale now %g)",
                        len(self.skipped), settings.steps, self.scaler.scale)
        extra = {} if peak_vram_mib is None else {"peak_vram_mib": str(round(peak_vram_mib))}
        result = self._embedding_at(settings.steps, **extra)
        log.info(
            "Cross-Init training: %d steps in %.1f s (setup %.1f s), final loss %.4f, norms %s (init %s)%s",
            settings.steps, self.loop_seconds, self.setup_seconds, self.losses[-1] if self.losses else float("nan"),
            {k: [round(float(x), 2) for x in v.norm(dim=1)] for k, v in result.vectors.items()},
            {k: [round(float(x), 2) for x in v.norm(dim=1)] for k, v in result.init_vectors.items()},
            "" if peak_vram_mib is None else f", peak VRAM {peak_vram_mib:.0f} MiB",
        )
        return TrainingResult(embedding=result, losses=self.losses, regs=self.regs, seconds=self.loop_seconds,
                              setup_seconds=self.setup_seconds, memory_plan=self.plan, skipped_steps=list(self.skipped),
                              loss_scale=self.scaler.scale if self.scaler.enabled else None, peak_vram_mib=peak_vram_mib,
                              checkpoints=[*self.checkpoints, result])


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
    save_every: int = 0,
) -> TrainingResult:
    """Trains `embedding`'s vectors on the host models; host objects are left exactly as they were.

    `on_step(step, total, loss)` is called after every step; `fault_hook(step)` runs inside the step before
    the forward pass (tests use it to inject faults). `memory` picks micro-batches and gradient
    checkpointing (see `MemorySettings`); the result is the same to float round-off. Every `preview_every`
    steps, `preview(step, embedding_so_far)` runs with the host models restored (it may sample with them)
    and what it returns is shown in the progress bar. With `save_every` N, `result.checkpoints` holds the
    vectors after every N steps and at the end. An embedding loaded from a file that a Cross-Init run saved
    goes on from there (`continuation`).
    """
    started = time.perf_counter()
    memory = (memory or MemorySettings()).validated()
    peak = DevicePeak(host.compute_device(model)).start()  # the whole run: setup (VAE encoding) and every step
    if not isinstance(save_every, int) or save_every < 0:
        raise InvalidInputError(f"save_every: got {save_every!r}; use 0 (off) or a number of steps, e.g. 80.")
    run = prepare_run(model, clip, vae, images, embedding, settings, loss_settings, masks)
    steps = run.settings.steps
    console = tqdm(total=steps, desc="Cross-Init training", unit="step", dynamic_ncols=True,
                   disable=not host.console_progress_enabled())
    calls = Callbacks(host.progress_reporter(steps), console, on_step, fault_hook, preview, preview_every)
    trainer = Trainer(run, memory, calls, started, mode, save_every)
    try:
        trainer.train()
    finally:
        console.close()
    return trainer.result(peak.mib())
