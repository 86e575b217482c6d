"""Training speed and memory of the Cross-Init trainer on real-size SD 1.5 / SD 2.1-base / SDXL models.

The UNet, text encoders and VAE are ComfyUI's own classes at the real architecture sizes with random
weights (bench/real_models.py): the compute per step is the real one, no weights are needed. For each
model it runs the pack's trainer (`cross_init_core.training.trainer.train`, the function the node calls) and
reports the median seconds per step after warm-up, the setup time (pixel checks, VAE encoding of both
flips, caption layouts, loading), the Cross-Init initialization time, peak memory (CUDA max allocated,
or the process's peak RSS on the CPU), and the ratio of a trainer step to a bare UNet forward+backward
on the same batch with a fixed conditioning that requires grad (the cost of everything around the UNet).
A text-encoder forward+backward alone is timed too, to show what that overhead consists of.

    python bench/train_speed.py --quick          # CPU: SD 1.5 at 64 px, batch 1, 1 warm-up + 5 steps (<3 min)
    python bench/train_speed.py                  # CUDA: SD 1.5 and SD 2.1-base at 512 px, batch 8
    python bench/train_speed.py --models sd15 sd21 sdxl --resolution 512 --batch 8 --steps 10

Appends a markdown table (machine, torch, date, commit) to docs/benchmarks.md unless --no-append.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import logging
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

log = logging.getLogger("train_speed")
table = logging.getLogger("train_speed.table")


def _stdout_table() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    table.addHandler(handler)
    table.setLevel(logging.INFO)
    table.propagate = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
        return head + ("+local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def _faces(count: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx**2 / 0.4 + yy**2 / 0.6) < 1).float()
    base = torch.stack([0.8 * face + 0.1, 0.6 * face + 0.2, 0.5 * face + 0.25], dim=-1)
    return (base.expand(count, -1, -1, -1) + 0.05 * torch.rand(count, size, size, 3, generator=gen)).clamp(0, 1)


class Interleaved:
    """Times trainer steps and, right after each, a bare UNet fwd+bwd and a text-encoder fwd+bwd.

    Pairing each trainer step with bare steps run seconds later, in the same process and session, keeps
    the ratio meaningful on a shared, noisy machine (the load changes between minutes, not milliseconds).
    The trainer step is timed from `fault_hook` (start of the step, after the draw) to `on_step` (after the
    optimizer step and loss read-back).
    """

    def __init__(self, core, m, emb, images, settings) -> None:
        self.core, self.m, self.emb, self.images, self.settings = core, m, emb, images, settings
        with torch.inference_mode():
            self.run = core.training.run_setup.prepare_run(m.model, m.clip, m.vae, images, emb, settings)
        self.sampler = self.run.sampler()
        self.device = m.model.load_device
        self.trainer: list[float] = []
        self.unet: list[float] = []
        self.text: list[float] = []
        self.text_old: list[float] = []
        self.compare_clip_fix = False
        self.memory = None
        self.started = 0.0

    def fault_hook(self, _step: int) -> None:
        _sync(self.device)
        self.started = time.perf_counter()

    def on_step(self, _step: int, _total: int, _loss: float) -> None:
        _sync(self.device)
        self.trainer.append(time.perf_counter() - self.started)
        unet, text = self.bare_step()
        self.unet.append(unet)
        self.text.append(text)

    def bare_step(self) -> tuple[float, float]:
        """Runs inside the trainer's session (weights aliased, grad enabled), on a fresh draw of the same size."""
        core, run, device = self.core, self.run, self.device
        params = {k: torch.nn.Parameter(v.detach().float().clone().to(device)) for k, v in self.emb.vectors.items()}
        draw = self.sampler.draw(self.settings.batch_size)
        rows: dict[str, list] = {slot.token_key: [] for slot in run.slots}
        for template in draw.templates:
            filled = run.layouts[template].fill(params, run.slots)
            for slot in run.slots:
                rows[slot.token_key].append(filled[slot.token_key][0])
        _sync(device)
        t0 = time.perf_counter()
        cond, pooled = core.host.encode_batch_for_training(run.clip, run.slots, rows)
        cond.float().square().mean().backward()
        _sync(device)
        text = time.perf_counter() - t0
        if self.compare_clip_fix:
            self.text_old.append(self.old_clip_fix_seconds(rows))
        fixed = cond.detach().to(device).requires_grad_(True)
        size = self.settings.resolution
        sdxl = core.host.is_sdxl_model(run.model)
        extra = {"y": core.host.sdxl_adm(run.model, pooled.detach(), size, size)} if sdxl else {}
        x0 = run.latents.to(device)[draw.latent_index.to(device)]
        sigma = run.sigmas.to(device)[draw.timesteps.to(device)]
        x_noisy = x0 + sigma.view(-1, 1, 1, 1) * draw.noise.to(device)
        _sync(device)
        t0 = time.perf_counter()
        den = core.host.denoised(run.model, x_noisy, sigma, fixed, **extra)
        ((den - x0) ** 2).mean().backward()
        _sync(device)
        return time.perf_counter() - t0, text

    def old_clip_fix_seconds(self, rows: dict[str, list]) -> float:
        """Text-encoder fwd+bwd with the pack's previous fix: the host's in-place CLIP layers + clone every saved tensor."""
        layers = [mod for _k, enc in self.core.host.inner_encoders(self.run.clip) for mod in enc.transformer.modules()
                  if "forward" in mod.__dict__]
        saved = [mod.__dict__.pop("forward") for mod in layers]
        try:
            _sync(self.device)
            t0 = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                cond, _pooled = self.core.host.encode_batch_for_training(self.run.clip, self.run.slots, rows)
                cond.float().square().mean().backward()
            _sync(self.device)
            return time.perf_counter() - t0
        finally:
            for mod, fwd in zip(layers, saved, strict=True):
                mod.forward = fwd

    def train(self) -> tuple[float, float]:
        """One trainer run; returns (setup seconds, peak MiB: the trainer's own CUDA peak, else the process's RSS)."""
        with torch.inference_mode():
            result = self.core.training.trainer.train(self.m.model, self.m.clip, self.m.vae, self.images, self.emb, self.settings,
                                              on_step=self.on_step, fault_hook=self.fault_hook, memory=self.memory)
        self.plan = result.memory_plan
        peak = result.peak_vram_mib if result.peak_vram_mib is not None else _peak_rss_mib()
        return result.setup_seconds, peak


def bench_model(core, real_models, kind: str, args, rows: list[str], notes: list[str]) -> None:
    t0 = time.perf_counter()
    m = real_models.build(kind)
    build_s = time.perf_counter() - t0
    log.info("%s built in %.1f s (UNet %.0fM, text %.0fM, VAE %.0fM parameters)", kind, build_s, m.unet_params / 1e6,
             m.clip_params / 1e6, m.vae_params / 1e6)
    t0 = time.perf_counter()
    with torch.inference_mode():
        emb = core.method.initialization.cross_initialize(m.clip, 2, core.method.names.builtin_names())
    init_s = time.perf_counter() - t0
    images = _faces(args.images, args.resolution)
    total_steps = args.warmup + args.steps
    settings = core.common.settings.TrainingSettings(steps=total_steps, batch_size=args.batch, learning_rate=0.005, seed=0,
                                              resolution=args.resolution)
    trainer, unet, text, text_old, ratios, ratios_both = [], [], [], [], [], []
    setups, peaks = [], []
    for _round in range(args.rounds):
        timer = Interleaved(core, m, emb, images, settings)
        timer.compare_clip_fix = args.compare_clip_fix
        memory = core.training.memory.parse_memory(args.memory)
        timer.memory = core.training.memory.MemorySettings(memory.budget_gb, args.micro_batch, True if args.checkpointing else None)
        setup_s, peak = timer.train()
        trainer += timer.trainer[args.warmup:]
        unet += timer.unet[args.warmup:]
        text += timer.text[args.warmup:]
        text_old += timer.text_old[args.warmup:]
        ratios += [a / b for a, b in zip(timer.trainer[args.warmup:], timer.unet[args.warmup:], strict=True)]
        ratios_both += [a / (b + c) for a, b, c in zip(timer.trainer[args.warmup:], timer.unet[args.warmup:],
                                                       timer.text[args.warmup:], strict=True)]
        setups.append(setup_s)
        peaks.append(peak)
    med_trainer, med_unet, med_text = statistics.median(trainer), statistics.median(unet), statistics.median(text)
    ratio = statistics.median(ratios)  # median of paired (same-moment) ratios
    log.info("%s paired ratios %s", kind, [round(x, 3) for x in ratios])
    log.info("%s trainer s/step %s", kind, [round(x, 3) for x in trainer])
    log.info("%s bare UNet fwd+bwd s %s", kind, [round(x, 3) for x in unet])
    log.info("%s text encode fwd+bwd s %s", kind, [round(x, 3) for x in text])
    rest = med_trainer - med_unet - med_text
    vs_both = statistics.median(ratios_both)
    plan = timer.plan
    label = real_models.LABELS[kind] + ("" if plan.micro_batch == args.batch and not plan.checkpointing else
                                        f" (micro-batch {plan.micro_batch}{', checkpointing' if plan.checkpointing else ''})")
    rows.append(
        f"| {label} | {args.resolution} | {args.batch} | {args.warmup}+{len(trainer)} | {med_trainer:.3f} | "
        f"{med_unet:.3f} | {med_text:.3f} | {rest:+.3f} | **{ratio:.2f}** | {vs_both:.2f} | "
        f"{statistics.median(setups):.2f} | {init_s:.2f} | {max(peaks):.0f} |"
    )
    table.info("%s: trainer %.3f s/step, bare UNet %.3f s, text %.3f s", real_models.LABELS[kind], med_trainer, med_unet, med_text)
    table.info("overhead_ratio: %.2f", ratio)
    if text_old:
        log.info("%s text encode fwd+bwd, previous clone-all fix, s %s", kind, [round(x, 3) for x in text_old])
        notes.append(f"{real_models.LABELS[kind]}: text encoder fwd+bwd {med_text:.3f} s with the out-of-place CLIP layers vs "
                     f"{statistics.median(text_old):.3f} s with the previous clone-every-saved-tensor fix (medians, same steps).")
    del m, emb
    gc.collect()
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: SD 1.5, 64 px, batch 1, 1 warm-up + 5 steps")
    parser.add_argument("--models", nargs="+", choices=["sd15", "sd21", "sdxl"], default=None)
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 512 on CUDA, 64 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default 8 on CUDA, 1 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per round (default 10 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat trainer/bare measurements (medians over all)")
    parser.add_argument("--images", type=int, default=1, help="face images (encoded once, both flips)")
    parser.add_argument("--compare-clip-fix", action="store_true",
                        help="also time the text encoder with the previous CLIP fix (clone every saved tensor)")
    parser.add_argument("--memory", default="auto", help="the trainer's memory option: auto, none or a budget in GB")
    parser.add_argument("--micro-batch", type=int, default=None, help="force samples per forward/backward")
    parser.add_argument("--checkpointing", action="store_true", help="force UNet gradient checkpointing")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-append", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("root", "comfy", "host"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _stdout_table()

    import host
    import real_models

    started = time.perf_counter()
    pack = host.boot(Path(tempfile.mkdtemp(prefix="cross_init_bench_")), prefer_gpu=True)
    core = pack.cross_init_core
    import comfy.model_management as mm

    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    args.models = args.models or (["sd15"] if args.quick or not cuda else ["sd15", "sd21"])
    args.resolution = args.resolution or (512 if cuda and not args.quick else 64)
    args.batch = args.batch or (8 if cuda and not args.quick else 1)
    args.steps = args.steps or (10 if cuda and not args.quick else 5)

    rows: list[str] = []
    notes: list[str] = []
    for kind in args.models:
        bench_model(core, real_models, kind, args, rows, notes)
    import comfy.ldm.modules.attention as attention

    header = [
        "",
        f"### {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}",
        "",
        f"Machine: {_machine(device)}; torch {torch.__version__}; ComfyUI attention: {attention.optimized_attention.__name__}; "
        f"command: `python bench/train_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"wall time {time.perf_counter() - started:.0f} s.",
        "",
        "| model | px | batch | steps (warm-up+measured) | trainer s/step | bare UNet fwd+bwd s | text enc fwd+bwd s | rest s | "
        "overhead_ratio | vs UNet+text | setup s | Cross-Init s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if notes:
        rows += ["", *notes]
    if not cuda:
        rows.append("")
        rows.append("GPU: not measured — this run had no CUDA device. Peak MiB on the CPU is the process's peak RSS "
                    "(model building included).")
    text = "\n".join(header + rows) + "\n"
    for line in text.splitlines():
        table.info(line)
    if not args.no_append:
        with args.output.open("a", encoding="utf-8") as fh:
            fh.write(text)
        log.info("appended to %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
