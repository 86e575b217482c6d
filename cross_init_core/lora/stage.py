"""The LoRA stage of pivotal tuning: a UNet LoRA trained around a Cross-Init token, on the host's models.

The token (the pivot) is spliced into the trainer's captions as in Cross-Init training and stays where it is
unless `token_learning_rate` > 0, when it trains on with the Cross-Init regularizer toward its start. The run
reuses the trainer's pieces: `run_setup` (latents, caption layouts, seeded draws), `loss.StepLoss` (the diffusion
MSE in the model's own parametrization, face masks), the memory plan (micro-batches, UNet checkpointing),
`loss_scaling.LossScaler` for float16 UNets, the host's training session, progress and Cancel. The LoRA joins the
forward through `host.lora_layers` (hooks on a session's modules, removed on exit): no host weight is copied or
changed, before, during or after the run, errors and Cancel included.
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
from ..common.settings import LossSettings, checkpoint_steps
from ..embeddings.embedding import CrossInitEmbedding
from ..embeddings.optimizer_state import METADATA_KEY as OPTIMIZER_STATE_KEY
from ..method.loss import StepLoss
from ..training.loss_scaling import LossScaler
from ..training.memory import DevicePeak, MemoryPlan, MemorySettings, out_of_memory_error, plan_for_run
from ..training.preview import PREVIEW_PROMPT, PREVIEW_STEPS
from ..training.preview import progress_preview as token_preview
from ..training.run_setup import PreparedRun, StepDraw, prepare_run
from ..training.trainer import preview_segments
from .settings import LoraSettings
from .weights import LoraModel, initial_weights, to_state_dict

log = logging.getLogger(__name__)

METHOD = "cross_init_pivotal"  # the `method` metadata of a LoRA (and of a token trained on) from this stage
LORA_WEIGHT_DECAY = 1e-4  # diffusers' LoRA scripts' AdamW default (--adam_weight_decay)
TOKEN_WEIGHT_DECAY = 1e-2  # the Cross-Init trainer's

# (step, token, targets, down, up, scale) -> what the progress bar shows
LoraPreviewHook = Callable[[int, CrossInitEmbedding, list[Any], dict[str, torch.Tensor], dict[str, torch.Tensor], float], Any]


def progress_preview(model: Any, clip: Any, vae: Any, images: torch.Tensor, resolution: int, seed: int,
                     prompt: str = PREVIEW_PROMPT, steps: int = PREVIEW_STEPS) -> LoraPreviewHook:
    """The trainer's progress preview (a sample of `prompt` beside the first face), sampled with the LoRA so far: its
    layers join the host model's forward for the sample only (hooks, removed after; no weight patched)."""
    render_token = token_preview(model, clip, vae, images, resolution, seed, prompt, steps)
    targets = host.lora_targets(model)

    def render(step: int, token: CrossInitEmbedding, _targets: list[Any], down: dict[str, torch.Tensor],
               up: dict[str, torch.Tensor], scale: float) -> Any:
        with host.lora_layers(model, targets, down, up, scale):
            return render_token(step, token)

    return render


@dataclass
class LoraResult:
    lora: LoraModel  # the final LoRA (its `embedding` is the token at the end)
    embedding: CrossInitEmbedding  # the token: the input itself when it stayed at its pivot
    model: Any  # the host MODEL patched with the LoRA (a clone, by the host's own LoRA loader)
    losses: list[float]
    regs: list[float]
    checkpoints: list[LoraModel]  # every save_every steps and the end (the last is `lora`)
    seconds: float
    memory_plan: MemoryPlan
    skipped_steps: list[int]
    peak_vram_mib: float | None = None


class LoraStage:
    """One LoRA run on a prepared run: the parameters, the optimizer, the loss history and checkpoints."""

    def __init__(self, run: PreparedRun, source: CrossInitEmbedding, settings: LoraSettings, memory: MemorySettings,
                 save_every: int, on_step: Callable[[int, int, float], None] | None,
                 fault_hook: Callable[[int], None] | None) -> None:
        self.run, self.source, self.settings, self.memory = run, source, settings, memory
        self.targets = host.lora_targets(run.model)
        self.down, self.up = initial_weights(self.targets, settings.rank, settings.seed)
        self.vectors = {k: v.detach().float().cpu().clone() for k, v in run.embedding.vectors.items()}
        self.plan, needed = plan_for_run(run.model, run.clip, settings.batch_size, run.latent_hw, memory, None)
        self.request = needed if memory.budget_gb else 0  # as the trainer: auto asks for nothing beyond the models
        self.sampler = run.sampler()
        self.scaler = LossScaler.for_model(run.model)
        self.checkpoint_at = set(checkpoint_steps(settings.steps, save_every)[:-1])
        self.on_step, self.fault_hook = on_step, fault_hook
        self.losses: list[float] = []
        self.regs: list[float] = []
        self.skipped: list[int] = []
        self.loss_steps: list[int] = []  # the step (1-based) of each loss (fp16 skipped steps leave gaps)
        self.checkpoints: list[LoraModel] = []
        self.seconds = 0.0
        self.shared_metadata: dict[str, str] = {}
        self.params: dict[str, dict[str, torch.Tensor]] = {}  # down, up, token: made in the first session
        self.optimizer: torch.optim.Optimizer | None = None

    # -----------------------------------------------------------------------------------------
    def train(self, reporter: Callable[[int, Any], None], console: tqdm, preview: LoraPreviewHook | None = None,
              preview_every: int = 0) -> None:
        """Every step, one host session per preview interval (previews sample with the host models restored)."""
        settings = self.settings
        for first_step, end_step in preview_segments(settings.steps, preview_every if preview is not None else 0):
            self._segment(first_step, end_step, reporter, console)
            if preview is not None and preview_every > 0 and end_step % preview_every == 0:
                down = {k: p.detach() for k, p in self.params["down"].items()}
                up = {k: p.detach() for k, p in self.params["up"].items()}
                token = self.token_at({k: p.detach() for k, p in self.params["token"].items()}, end_step)
                reporter(end_step, preview(end_step, token, self.targets, down, up, settings.scale))
        if self.scaler.enabled and len(self.skipped) == settings.steps:
            raise TrainingDivergedError(
                f"the LoRA made no progress: all {settings.steps} steps overflowed in the float16 UNet, so every step was "
                "skipped. Start ComfyUI with --bf16-unet or --fp32-unet, or lower learning_rate.",
                embedding=self.run.embedding, step=0)

    def _start(self, device: torch.device) -> None:
        """The plan for the device (auto budget), the parameters and the optimizer, in the first host session."""
        run, settings = self.run, self.settings
        if self.memory.budget_gb is None:
            self.plan, _ = plan_for_run(run.model, run.clip, settings.batch_size, run.latent_hw, self.memory, device)
        log.info("Cross-Init LoRA memory: micro-batch %d of %d, UNet checkpointing %s (%s)", self.plan.micro_batch,
                 settings.batch_size, "on" if self.plan.checkpointing else "off", self.plan.reason)
        self.shared_metadata = self._run_metadata()
        # clones made here, outside inference mode: the node runs under it, and autograd needs normal tensors
        down = {k: torch.nn.Parameter(v.clone().to(device)) for k, v in self.down.items()}
        up = {k: torch.nn.Parameter(v.clone().to(device)) for k, v in self.up.items()}
        groups: list[dict[str, Any]] = [{"params": [*down.values(), *up.values()], "lr": settings.learning_rate,
                                         "weight_decay": LORA_WEIGHT_DECAY}]
        if settings.trains_token:
            token: dict[str, torch.Tensor] = {k: torch.nn.Parameter(v.clone().to(device)) for k, v in self.vectors.items()}
            groups.append({"params": list(token.values()), "lr": settings.token_learning_rate,
                           "weight_decay": TOKEN_WEIGHT_DECAY})
        else:
            token = {k: v.clone().to(device) for k, v in self.vectors.items()}  # the pivot, fixed
        self.params = {"down": down, "up": up, "token": token}
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

    def _segment(self, first_step: int, end_step: int, reporter: Callable[[int, Any], None], console: tqdm) -> None:
        """Steps [first_step, end_step) in one host session; the parameters and optimizer outlive it."""
        run, settings = self.run, self.settings
        out_of_memory_at: int | None = None
        with host.training_session(run.model, run.clip, memory_required=self.request) as device:
            if self.optimizer is None:
                self._start(device)
            assert self.optimizer is not None
            down, up, token = self.params["down"], self.params["up"], self.params["token"]
            params = {**{f"down.{k}": p for k, p in down.items()}, **{f"up.{k}": p for k, p in up.items()},
                      **({f"token.{k}": p for k, p in token.items()} if settings.trains_token else {})}
            step_loss = StepLoss(run, device)
            started = time.perf_counter()
            step = first_step
            try:
                with host.lora_layers(run.model, self.targets, down, up, settings.scale), \
                        host.unet_checkpointing(run.model, self.plan.checkpointing):
                    for step in range(first_step, end_step):
                        host.check_interrupted()
                        draw = self.sampler.draw(settings.batch_size)
                        if self.fault_hook is not None:
                            self.fault_hook(step)
                        before = {k: p.detach().clone() for k, p in params.items()}
                        loss, reg, skipped = self._step(step_loss, draw, token, params, self.optimizer)
                        self._record(step, loss, reg, skipped, before)
                        if step + 1 in self.checkpoint_at:
                            self.checkpoints.append(self._lora_at(step + 1, down, up, token))
                        reporter(step + 1, None)
                        console.update(1)
            except host.out_of_memory_errors():
                out_of_memory_at = step + 1
            self.seconds += time.perf_counter() - started
            del step_loss, params
            if out_of_memory_at is None and end_step == settings.steps:
                self.down = {k: p.detach().float().cpu() for k, p in down.items()}
                self.up = {k: p.detach().float().cpu() for k, p in up.items()}
                self.vectors = {k: p.detach().float().cpu() for k, p in token.items()}
            if out_of_memory_at is not None:  # drop device tensors before the cache is emptied
                self.params, self.optimizer = {}, None
            del down, up, token
        if out_of_memory_at is not None:
            raise out_of_memory_error(out_of_memory_at, settings.steps, self.plan)

    def _step(self, step_loss: StepLoss, draw: StepDraw, token: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
              optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One optimizer step over the batch in micro-batch chunks (their shares of the batch MSE summed), the
        token's regularizer once when the token trains; fp16 loss scaling as the trainer's."""
        batch, micro = self.settings.batch_size, self.plan.micro_batch
        reg_weight = self.run.loss_settings.reg_weight
        optimizer.zero_grad(set_to_none=True)
        mse = torch.zeros((), device=next(iter(params.values())).device)
        for first in range(0, batch, micro):
            objective = step_loss.diffusion(token, draw, slice(first, first + micro))
            mse = mse + objective.detach()
            self.scaler.scaled(objective).backward()
        reg = torch.zeros_like(mse)
        if self.settings.trains_token:
            reg = step_loss.regularizer(token)
            self.scaler.scaled(reg_weight * reg).backward()
        self.scaler.unscale_(params)
        grads = [p.grad for p in params.values() if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        skipped = self.scaler.update(finite) if self.scaler.enabled else False
        if not skipped:
            optimizer.step()
        return mse + reg_weight * reg.detach(), reg.detach(), skipped

    def _record(self, step: int, loss: torch.Tensor, reg: torch.Tensor, skipped: bool,
                before: dict[str, torch.Tensor]) -> None:
        if skipped:
            self.skipped.append(step)
            log.info("Cross-Init LoRA fp16: gradient overflow at step %d; step skipped, loss scale now %g", step + 1,
                     self.scaler.scale)
            return
        value = float(loss)
        if not math.isfinite(value):
            self.down = {k[5:]: v.cpu() for k, v in before.items() if k.startswith("down.")}
            self.up = {k[3:]: v.cpu() for k, v in before.items() if k.startswith("up.")}
            raise TrainingDivergedError(
                f"the LoRA stopped at step {step + 1}/{self.settings.steps}: the loss became {value} (NaN/inf). Lower "
                "learning_rate (and token_learning_rate), or if the model runs in fp16, start ComfyUI with --fp32-unet.",
                embedding=self.run.embedding, step=step)
        self.losses.append(value)
        self.regs.append(float(reg))
        self.loss_steps.append(step + 1)
        if self.on_step is not None:
            self.on_step(step + 1, self.settings.steps, value)

    # -----------------------------------------------------------------------------------------
    def _run_metadata(self) -> dict[str, str]:
        run, settings = self.run, self.settings
        embedding = run.embedding
        kept = {k: v for k, v in embedding.metadata.items() if k.startswith("init_")}
        return {
            **kept,
            "method": METHOD,
            **settings.as_metadata(),
            "reg_weight": str(run.loss_settings.reg_weight),
            "base_model": families.base_model((s.key for s in run.slots), run.prediction),
            "num_tokens": str(embedding.num_tokens),
            "token_trained": "true" if settings.trains_token else "false",
            "token_steps": embedding.metadata.get("steps", "0"),
            "lora_modules": str(len(self.targets)),
            "lora_targets": "attention (to_q, to_k, to_v, to_out.0 of attn1 and attn2)",
            "num_images": str(run.num_images),
            "unet_dtype": host.dtype_name(host.unet_compute_dtype(run.model)),
            "clip_layer": host.clip_layer(run.clip),
            "pack_version": __version__,
        }

    def token_at(self, vectors: dict[str, torch.Tensor], steps_done: int) -> CrossInitEmbedding:
        """The token after `steps_done` steps: the input embedding itself when it stays at its pivot."""
        embedding = self.run.embedding
        if not self.settings.trains_token:
            return self.source
        # the trainer's continuation must not take this for its own state (other draws, no trainer optimizer)
        metadata = {k: v for k, v in embedding.metadata.items() if k != OPTIMIZER_STATE_KEY}
        trained = CrossInitEmbedding(vectors={k: v.detach().float().cpu().clone() for k, v in vectors.items()},
                                     init_vectors={k: v.clone() for k, v in self.run.init.items()},
                                     metadata={**metadata, "method": METHOD, "pivotal_token_steps": str(steps_done),
                                               "token_learning_rate": f"{self.settings.token_learning_rate:g}"})
        return trained

    def _lora_at(self, steps_done: int, down: dict[str, torch.Tensor], up: dict[str, torch.Tensor],
                 token: dict[str, torch.Tensor]) -> LoraModel:
        tensors = to_state_dict(down, up, self.settings.alpha)
        metadata = {**self.shared_metadata, "steps": str(steps_done)}
        if self.scaler.enabled:
            metadata["fp16_skipped_steps"] = str(sum(1 for s in self.skipped if s < steps_done))
        lora = LoraModel(tensors, metadata, self.token_at(token, steps_done))
        kept = sum(1 for s in self.loss_steps if s <= steps_done)  # the history up to this step, for the checkpoint report
        lora.loss_history = list(zip(self.losses[:kept], self.regs[:kept], strict=True))
        lora.loss_steps = self.loss_steps[:kept]
        return lora

    def result(self, model: Any, peak_vram_mib: float | None) -> LoraResult:
        """The run's LoRA, token and history; `model` (the caller's MODEL, which may stream its weights where the run
        trained on the host's static copy) patched with the LoRA by the host's own loader."""
        final = self._lora_at(self.settings.steps, self.down, self.up, self.vectors)
        if peak_vram_mib is not None:
            final.metadata["peak_vram_mib"] = str(round(peak_vram_mib))
        applied = host.apply_lora(model, None, final, 1.0, 0.0)
        log.info("Cross-Init LoRA: %d modules, rank %d, %d steps in %.1f s, final loss %.4f%s", len(self.targets),
                 self.settings.rank, self.settings.steps, self.seconds, self.losses[-1] if self.losses else float("nan"),
                 "" if peak_vram_mib is None else f", peak VRAM {peak_vram_mib:.0f} MiB")
        return LoraResult(lora=final, embedding=final.embedding or self.run.embedding, model=applied.model,
                          losses=self.losses, regs=self.regs, checkpoints=[*self.checkpoints, final], seconds=self.seconds,
                          memory_plan=self.plan, skipped_steps=list(self.skipped), peak_vram_mib=peak_vram_mib)


def train_lora(
    model: Any,
    clip: Any,
    vae: Any,
    images: torch.Tensor,
    embedding: CrossInitEmbedding,
    settings: LoraSettings,
    loss_settings: LossSettings | None = None,
    masks: torch.Tensor | None = None,
    memory: MemorySettings | None = None,
    save_every: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
    fault_hook: Callable[[int], None] | None = None,
    preview: LoraPreviewHook | None = None,
    preview_every: int = 0,
) -> LoraResult:
    """Trains a UNet LoRA around `embedding` (frozen unless settings.token_learning_rate > 0) on the host models,
    which are left exactly as they were. Every input is checked before any step runs. Every `preview_every` steps,
    `preview(...)` (see `progress_preview`) runs with the host models restored and its result goes to the progress bar."""
    settings = settings.validated()
    memory = (memory or MemorySettings()).validated()
    if not isinstance(save_every, int) or isinstance(save_every, bool) or save_every < 0:
        raise InvalidInputError(f"save_every: got {save_every!r}; use 0 (off) or a number of steps, e.g. 100.")
    if not isinstance(embedding, CrossInitEmbedding):
        raise InvalidInputError("embedding: connect a Cross-Init embedding (the trainer's output, Cross-Init Load "
                                "Embedding, or the checkpoint report's best).")
    peak = DevicePeak(host.compute_device(model)).start()
    run = prepare_run(model, clip, vae, images, embedding, settings.training(), loss_settings, masks)
    stage = LoraStage(run, embedding, settings, memory, save_every, on_step, fault_hook)
    console = tqdm(total=settings.steps, desc="Cross-Init LoRA", unit="step", dynamic_ncols=True,
                   disable=not host.console_progress_enabled())
    try:
        stage.train(host.progress_reporter(settings.steps), console, preview, preview_every)
    finally:
        console.close()
    return stage.result(model, peak.mib())
