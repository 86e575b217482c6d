"""The in-process GPU rows: half-precision training on real-size SD 1.5 / SD 2.1-base, ComfyUI booted in-process.

`measure` runs with one host's python and COMFYUI_PATH (ComfyUI booted in-process on the GPU when there is
one) and appends each JSON row to `--rows` the moment it is measured; bench/device/run_checks.py runs it
after the server rows (bench/server_path.py) and writes the report (bench/gpu_report.py). Per model (real
architecture, random weights: bench/real_models.py) and UNet dtype (float16, bfloat16), at 512 px, batch 8,
with the trainer's `memory` = 8:

- fast preset: a whole run (25 steps), measured: seconds, median s/step, skipped fp16 steps;
- full preset: a fixed number of its steps, measured s/step, and the run time PROJECTED to 320 steps
  (setup + 320 x s/step), labelled so;
- peak VRAM (CUDA max allocated, models unloaded before each run);
- gradient agreement: cosine of the token-vector gradient (one fixed draw, batch 8) to the fp32 UNet's,
  through the trainer's loss scaling for fp16, and for fp16 also without it;
- peer: the trainer with the fp32 UNet (memory none) against a diffusers `textual_inversion`-style step
  (fp32, the whole token-embedding table trainable, VAE encode every step as that script does), timed
  in the same run on the same device; ratio = ours / diffusers.

`--smoke` runs the same code on the CPU with tiny models (tests/tiny_models.py) and tiny diffusers models
in seconds; its rows are labelled as a CPU smoke run and are never GPU numbers.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

from rows import add_error, append_row, error_text  # noqa: E402

log = logging.getLogger("gpu_check")

FULL_STEPS = 320
DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True)
class Plan:
    """What one lane measures: sizes and step counts (GPU defaults, or the CPU smoke's tiny ones)."""

    smoke: bool
    models: tuple[str, ...]
    resolution: int
    batch: int
    images: int
    fast_steps: int  # the fast preset runs whole (25 on a GPU)
    full_steps: int  # full-preset steps timed for the projection
    peer_steps: int  # measured steps of the fp32 trainer and the diffusers step (after one warm-up)
    memory: str = "8"


def gpu_plan(models: tuple[str, ...]) -> Plan:
    return Plan(False, models, 512, 8, 4, 25, 8, 4)


def smoke_plan() -> Plan:
    return Plan(True, ("sd15",), 64, 2, 1, 1, 2, 1)


# ---------------------------------------------------------------------------------------------
# Measuring (inside a lane's venv)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_models() -> None:
    import comfy.model_management as mm

    gc.collect()
    mm.unload_all_models()
    mm.soft_empty_cache()


def _faces(count: int, size: int) -> Any:
    from train_speed import _faces as faces

    return faces(count, size)


@dataclass
class Models:
    """One model family: the fp32 MODEL and the same UNet weights in each half dtype, sharing CLIP and VAE."""

    label: str
    unets: dict[str, Any]  # dtype name -> MODEL
    clip: Any
    vae: Any


def build_models(kind: str, plan: Plan) -> Models:
    import torch

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if plan.smoke:
        import tiny_models

        family = {"sd15": "sd1", "sd21": "sd2"}[kind]
        with torch.inference_mode():
            # the same seed in every dtype: the same weights, rounded to it, computed in it (no manual cast)
            unets = {name: tiny_models.build_model(family, dtype=dtype) for name, dtype in dtypes.items()}
            return Models(f"tiny {family} (smoke)", unets, tiny_models.build_clip(family), tiny_models.build_vae())
    import real_models

    m = real_models.build(kind, unet_dtype=torch.float32)
    unets = {"float32": m.model}
    for name in DTYPES:
        unets[name] = real_models.with_unet_dtype(m, dtypes[name])
    return Models(real_models.LABELS[kind], unets, m.clip, m.vae)


class StepClock:
    """Wall time of each trainer step, from one `on_step` to the next (device synced)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.marks: list[float] = []

    def start(self, _step: int) -> None:
        if not self.marks:
            _sync(self.device)
            self.marks.append(time.perf_counter())

    def on_step(self, _step: int, _total: int, _loss: float) -> None:
        _sync(self.device)
        self.marks.append(time.perf_counter())

    def per_step(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def _median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def timed_train(core: Any, models: Models, dtype: str, emb: Any, images: Any, settings: Any, memory: str) -> dict[str, Any]:
    """One trainer run with the models unloaded first; wall seconds, per-step seconds, peak VRAM (the trainer's
    own, over the whole run), plan."""
    import torch

    model = models.unets[dtype]
    device = model.load_device
    _free_models()
    clock = StepClock(device)
    started = time.perf_counter()
    with torch.inference_mode():
        result = core.training.trainer.train(model, models.clip, models.vae, images, emb, settings, on_step=clock.on_step,
                                     fault_hook=clock.start, memory=core.training.memory.parse_memory(memory))
    _sync(device)
    seconds = time.perf_counter() - started
    plan = result.memory_plan
    return {
        "run_s": seconds, "setup_s": result.setup_seconds, "s_per_step": _median_after_warmup(clock.per_step()),
        "steps": settings.steps, "skipped": len(result.skipped_steps or []), "peak_mib": result.peak_vram_mib,
        "plan": f"micro-batch {plan.micro_batch}{', checkpointing' if plan.checkpointing else ''}" if plan else "",
        "unet_dtype": result.embedding.metadata.get("unet_dtype"), "loss_scale": result.loss_scale,
    }


def token_gradient(core: Any, models: Models, dtype: str, emb: Any, images: Any, settings: Any, scaled: bool) -> tuple[Any, float]:
    """The token vectors' gradient of one fixed draw's loss, through the trainer's code; (gradient, loss scale).

    With `scaled` and an fp16 UNet, the trainer's loss scaler; an overflow halves the scale and retries,
    as a skipped training step would.
    """
    import torch

    model = models.unets[dtype]
    _free_models()
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(model, models.clip, models.vae, images, emb, settings)
    draw = run.sampler().draw(settings.batch_size)
    scaler = core.training.loss_scaling.LossScaler.for_model(model) if scaled else core.training.loss_scaling.LossScaler(False)
    micro = 2  # chunks of the batch, gradients summed: the trainer's micro-batching
    while True:
        with torch.inference_mode(), core.host.training_session(model, models.clip) as device:
            step_loss = core.method.loss.StepLoss(run, device)
            params = {k: torch.nn.Parameter(v.detach().float().clone().to(device)) for k, v in emb.vectors.items()}
            for first in range(0, settings.batch_size, micro):
                scaler.scaled(step_loss.diffusion(params, draw, slice(first, first + micro))).backward()
            scaler.unscale_(params)
            grad = torch.cat([p.grad.flatten() for p in params.values()]).double().cpu()
        finite = bool(torch.isfinite(grad).all())
        if finite or not scaler.enabled or scaler.scale < 1.0:
            return grad, scaler.scale
        scaler.update(False)


def _cosine(a: Any, b: Any) -> float:
    import torch

    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def diffusers_reference_seconds(kind: str, plan: Plan, device: Any) -> float:
    """Median s/step of a diffusers `examples/textual_inversion`-style step, fp32, random weights.

    As that script: the VAE encodes the batch every step (latent sample x 0.18215), DDPM noise at a random
    timestep, the CLIP text model with its whole token-embedding table trainable (AdamW over it), UNet
    frozen, MSE to the noise, backward, AdamW step, then every row but the new token's is put back.
    """
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if plan.smoke:
        width, heads, layers, act = 64, 2, 3, "quick_gelu"
        unet_cfg = {"block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "layers_per_block": 1,
                    "cross_attention_dim": width, "attention_head_dim": 2, "sample_size": plan.resolution // 8}
        vae_cfg = {"block_out_channels": (32, 32, 32, 32), "layers_per_block": 1}
        intermediate = 128
    else:
        sd2 = kind == "sd21"
        width, heads, layers, act = (1024, 16, 23, "gelu") if sd2 else (768, 12, 12, "quick_gelu")
        intermediate = 4 * width
        unet_cfg = {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": width,
                    "attention_head_dim": (5, 10, 20, 20) if sd2 else 8, "use_linear_projection": sd2,
                    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "sample_size": plan.resolution // 8}
        vae_cfg = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2}
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * len(vae_cfg["block_out_channels"]),
                            up_block_types=("UpDecoderBlock2D",) * len(vae_cfg["block_out_channels"]),
                            latent_channels=4, norm_num_groups=32, sample_size=plan.resolution, **vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=intermediate,
                                            num_attention_heads=heads, num_hidden_layers=layers, hidden_act=act,
                                            max_position_embeddings=77))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    # the script freezes the encoder, final norm and position embeddings: everything but the token table
    # (set this way because transformers 5 moved the submodules)
    text.requires_grad_(False)
    table = text.get_input_embeddings()
    table.weight.requires_grad_(True)
    optimizer = torch.optim.AdamW(table.parameters(), lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    original = table.weight.detach().clone()
    new_token = 49407
    keep = torch.ones(table.weight.shape[0], dtype=torch.bool, device=device)
    keep[new_token] = False
    pixels = torch.rand(plan.batch, 3, plan.resolution, plan.resolution, device=device) * 2 - 1
    ids = torch.randint(0, 49406, (plan.batch, 77), device=device)
    ids[:, 5] = new_token
    text.train()
    times = []
    for _ in range(plan.peer_steps + 1):
        _sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * 0.18215
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (plan.batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = text(ids)[0]
        prediction = unet(noisy, timesteps, hidden).sample
        F.mse_loss(prediction.float(), noise.float(), reduction="mean").backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            table.weight[keep] = original[keep]
        _sync(device)
        times.append(time.perf_counter() - started)
    del unet, vae, text, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _median_after_warmup(times)


def _host_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except ImportError:
        return "unknown"


def _guarded(row: dict[str, Any], what: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Runs one measurement; an error is recorded in the row's `error` (the check goes on with the next one)."""
    try:
        row.update(fn())
    except Exception as exc:  # a failed configuration is a result to report, not a crash
        log.exception("%s failed", what)
        add_error(row, f"{what}: {error_text(exc)}")


def measure_model(core: Any, kind: str, plan: Plan, base: dict[str, Any], device: Any) -> Iterator[dict[str, Any]]:
    """The training rows (one per half dtype) and the peer row of one model family, each as soon as it is measured."""
    import torch

    started = time.perf_counter()
    models = build_models(kind, plan)
    log.info("%s: %s built in %.1f s", base["host"], models.label, time.perf_counter() - started)
    images = _faces(plan.images, plan.resolution)
    with torch.inference_mode():
        emb = core.method.initialization.cross_initialize(models.clip, 2, core.method.names.builtin_names())
    presets = core.common.settings.PRESETS  # the presets' learning rates; steps and batch as planned
    fast = core.common.settings.TrainingSettings(plan.fast_steps, plan.batch, presets["fast"].learning_rate, 0, plan.resolution)
    full = core.common.settings.TrainingSettings(plan.full_steps, plan.batch, presets["full"].learning_rate, 0, plan.resolution)
    peer_settings = core.common.settings.TrainingSettings(plan.peer_steps + 1, plan.batch, full.learning_rate, 0, plan.resolution)
    reference: Any = None
    try:
        reference, _ = token_gradient(core, models, "float32", emb, images, full, scaled=False)
    except Exception:
        log.exception("the fp32 reference gradient failed")

    def agreement(dtype: str) -> dict[str, Any]:
        if reference is None:
            raise RuntimeError("the fp32 reference gradient failed")
        grad, scale = token_gradient(core, models, dtype, emb, images, full, scaled=True)
        out = {"grad_cosine": _cosine(grad, reference), "grad_scale": scale, "grad_mean_abs_fp32": float(reference.abs().mean())}
        if dtype == "float16":
            unscaled, _ = token_gradient(core, models, dtype, emb, images, full, scaled=False)
            out["grad_cosine_unscaled"] = _cosine(unscaled, reference)
        return out

    def timed(prefix: str, dtype: str, settings: Any) -> dict[str, Any]:
        return {f"{prefix}_{k}": v for k, v in timed_train(core, models, dtype, emb, images, settings, plan.memory).items()}

    for dtype in DTYPES:
        row: dict[str, Any] = {**base, "kind": "train", "model": models.label, "dtype": dtype}
        _guarded(row, "fast", lambda d=dtype: timed("fast", d, fast))
        _guarded(row, "full", lambda d=dtype: timed("full", d, full))
        if "full_s_per_step" in row:
            row["full_projected_s"] = row["full_setup_s"] + FULL_STEPS * row["full_s_per_step"]
        _guarded(row, "gradient agreement", lambda d=dtype: agreement(d))
        log.info("%s", row)
        yield row
    peer: dict[str, Any] = {**base, "kind": "peer", "model": models.label}
    _guarded(peer, "fp32 trainer", lambda: {"ours_s_per_step": timed_train(core, models, "float32", emb, images,
                                                                             peer_settings, "none")["s_per_step"]})
    models = emb = None  # drop the UNets (the closures above hold them) before diffusers builds its own
    _free_models()
    _guarded(peer, "diffusers reference", lambda: {"diffusers_s_per_step": diffusers_reference_seconds(kind, plan, device)})
    log.info("%s", peer)
    yield peer


def device_name(device: Any) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def measure(plan: Plan, rows_path: Path) -> int:
    import host
    import torch

    boot_dir = tempfile.TemporaryDirectory(prefix="cross_init_gpu_check_")  # held until measure() returns
    pack = host.boot(Path(boot_dir.name), prefer_gpu=True)
    core = pack.cross_init_core
    import comfy.model_management as mm

    device = mm.get_torch_device()
    base = {"host": _host_version(), "path": "in_process", "torch": torch.__version__, "smoke": plan.smoke,
            "device": device_name(device)}
    if device.type != "cuda" and not plan.smoke:
        log.error("no CUDA device for ComfyUI %s (it picked %s): run on a GPU machine, or use --smoke", base["host"], device)
        append_row(rows_path, {**base, "kind": "train", "model": ", ".join(plan.models),
                               "error": f"no CUDA device (ComfyUI picked {device})"})
        return 2
    for kind in plan.models:
        for row in measure_model(core, kind, plan, base, device):
            append_row(rows_path, row)
        _free_models()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure one host (run with that host's python and COMFYUI_PATH)")
    m.add_argument("--rows", type=Path, required=True, help="JSON-lines file the rows are appended to")
    m.add_argument("--smoke", action="store_true")
    m.add_argument("--models", nargs="+", choices=["sd15", "sd21"], default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("root", "comfy", "host"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = smoke_plan() if args.smoke else gpu_plan(tuple(args.models or ("sd15", "sd21")))
    if args.models and args.smoke:
        plan = Plan(**{**plan.__dict__, "models": tuple(args.models)})
    return measure(plan, args.rows)


if __name__ == "__main__":
    raise SystemExit(main())
