"""The pivotal LoRA stage's step against the token trainer's step on the same real-size SD 1.5 UNet, and their memory.

The models are ComfyUI's own classes at the real SD 1.5 architecture with random weights (bench/real_models.py).
Both stages run as the nodes call them: `cross_init_core.training.trainer.train` (the token trainer) and
`cross_init_core.lora.stage.train_lora` (the Pivotal LoRA node; rank and alpha of its `fast` preset, the token
frozen at its pivot), at the same resolution and batch, on the same MODEL/CLIP/VAE.

Pairing: each round runs a short trainer run and a short LoRA run back to back (the order alternates between
rounds: trainer-LoRA, LoRA-trainer, ...), and measured step i of one is paired with measured step i of the other;
with the default 1 warm-up + 1 measured step per run the two paired steps are one step apart. **ratio** is the
median of those paired ratios LoRA step / trainer step (the machine is shared: its load changes from second to
second when other jobs run, so the pairs are kept as close as the two calls allow).
A step is timed from `fault_hook` (after the draw) to `on_step` (after the optimizer step and the loss read-back,
which both stages then do every step).

Memory: on CUDA each run's own peak (`torch.cuda.max_memory_allocated` from its start, weights included, as the
stages record it). On the CPU the kernel's peak resident set size of the process during the run alone, less the
resident set at its start: the high-water mark (VmHWM) is reset through /proc/self/clear_refs right before each run
and glibc's free memory is handed back first (malloc_trim), so model building and earlier runs are not counted.

    python bench/pivotal_speed.py --quick     # CPU: SD 1.5 at 64 px, batch 1, 8 rounds of 1 warm-up + 1 step each
    python bench/pivotal_speed.py             # CUDA: SD 1.5 at 512 px, batch 4 (the LoRA fast preset's batch)

Adds a markdown table (machine, torch, date, commit) to the pivotal section of docs/benchmarks.md unless --no-append.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import logging
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

from train_speed import _commit, _faces, _machine, _stdout_table, _sync, table  # noqa: E402

log = logging.getLogger("pivotal_speed")
STATUS = Path("/proc/self/status")
PIVOTAL_END = "<!-- pivotal_speed:end -->"  # docs/benchmarks.md: new tables go right before this line


@dataclasses.dataclass
class Api:
    """What the bench calls in the pack, named in one place."""

    train: Callable[..., Any]
    train_lora: Callable[..., Any]
    training_settings: type
    lora_fast: Any  # the LoRA `fast` preset (LoraSettings)
    cross_initialize: Callable[..., Any]
    names: Callable[[], list[str]]


def _api(core: Any) -> Api:
    return Api(core.training.trainer.train, core.lora.stage.train_lora, core.common.settings.TrainingSettings,
               core.lora.settings.PRESETS["fast"], core.method.initialization.cross_initialize, core.method.names.builtin_names)


# ---------------------------------------------------------------------------------------------
# The CPU's peak memory of one run


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]


class RunPeak:
    """Peak memory of one run: CUDA max allocated from its start, else the process's peak RSS above its start."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.start_kib = 0

    def start(self) -> RunPeak:
        gc.collect()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:  # hand freed heap back to the kernel, so the baseline holds no memory an earlier run left cached
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        STATUS.with_name("clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        self.start_kib = _status_kib("VmRSS")
        return self

    def mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return (_status_kib("VmHWM") - self.start_kib) / 1024


# ---------------------------------------------------------------------------------------------
# The two stages, step-timed


class StepTimer:
    """fault_hook/on_step callbacks that time each step (both stages call them around every step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[float] = []
        self.started = 0.0

    def fault_hook(self, _step: int) -> None:
        _sync(self.device)
        self.started = time.perf_counter()

    def on_step(self, _step: int, _total: int, _loss: float) -> None:
        _sync(self.device)
        self.steps.append(time.perf_counter() - self.started)


@dataclasses.dataclass
class Run:
    steps: list[float]
    peak_mib: float
    seconds: float  # the stage's whole call, setup included


def run_trainer(api: Api, m: Any, emb: Any, images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> Run:
    settings = api.training_settings(steps=args.warmup + args.steps, batch_size=args.batch, learning_rate=0.005, seed=0,
                                     resolution=args.resolution)
    timer, peak = StepTimer(device), RunPeak(device).start()
    started = time.perf_counter()
    with torch.inference_mode():  # as the node runs (ComfyUI runs every node under inference mode)
        api.train(m.model, m.clip, m.vae, images, emb, settings, on_step=timer.on_step, fault_hook=timer.fault_hook)
    return Run(timer.steps, peak.mib(), time.perf_counter() - started)


def run_lora(api: Api, m: Any, emb: Any, images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> Run:
    settings = dataclasses.replace(api.lora_fast, steps=args.warmup + args.steps, batch_size=args.batch,
                                   resolution=args.resolution)
    timer, peak = StepTimer(device), RunPeak(device).start()
    started = time.perf_counter()
    with torch.inference_mode():
        result = api.train_lora(m.model, m.clip, m.vae, images, emb, settings, on_step=timer.on_step,
                                fault_hook=timer.fault_hook)
    seconds = time.perf_counter() - started
    del result  # the patched clone holds only patches; dropped before the next run's baseline
    return Run(timer.steps, peak.mib(), seconds)


def bench(api: Api, real_models: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = real_models.build("sd15")
    log.info("SD 1.5 built in %.1f s (UNet %.0fM parameters)", time.perf_counter() - t0, m.unet_params / 1e6)
    with torch.inference_mode():
        emb = api.cross_initialize(m.clip, 2, api.names())
    images = _faces(args.images, args.resolution)
    trainer: list[float] = []
    lora: list[float] = []
    ratios: list[float] = []
    peaks: dict[str, list[float]] = {"trainer": [], "lora": []}
    for number in range(args.rounds):
        order = ("trainer", "lora") if number % 2 == 0 else ("lora", "trainer")  # alternated: drift cancels
        runs = {}
        for which in order:
            runner = run_trainer if which == "trainer" else run_lora
            runs[which] = runner(api, m, emb, images, args, device)
            peaks[which].append(runs[which].peak_mib)
            log.info("round %d %s: steps %s, peak %.0f MiB, %.1f s", number + 1, which,
                     [round(s, 3) for s in runs[which].steps], runs[which].peak_mib, runs[which].seconds)
        a, b = runs["trainer"].steps[args.warmup:], runs["lora"].steps[args.warmup:]
        trainer += a
        lora += b
        ratios += [y / x for x, y in zip(a, b, strict=True)]
    log.info("paired ratios LoRA/trainer %s", [round(r, 3) for r in ratios])
    return {"trainer": statistics.median(trainer), "lora": statistics.median(lora), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs": len(ratios),
            "trainer_peak": max(peaks["trainer"]), "lora_peak": max(peaks["lora"]), "rank": api.lora_fast.rank,
            "alpha": api.lora_fast.alpha}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized: 64 px, batch 1 (rounds and steps as given)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 512 on CUDA, 64 on the CPU)")
    parser.add_argument("--batch", type=int, default=None, help="samples per step, both stages (default 4 on CUDA, 1 on the CPU)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps per run left out of the medians")
    parser.add_argument("--rounds", type=int, default=8, help="trainer/LoRA run pairs (order alternating)")
    parser.add_argument("--images", type=int, default=1, help="face images (encoded once, both flips)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-append", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("root", "comfy", "host"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log.setLevel(logging.INFO)  # "root" above is the root logger: its WARNING level would hide the per-run lines
    _stdout_table()

    import host
    import real_models

    started = time.perf_counter()
    pack = host.boot(Path(tempfile.mkdtemp(prefix="cross_init_bench_")), prefer_gpu=True)
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm

    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    args.resolution = args.resolution or (512 if cuda and not args.quick else 64)
    args.batch = args.batch or (4 if cuda and not args.quick else 1)
    r = bench(_api(pack.cross_init_core), real_models, args, device)
    memory = "CUDA max allocated of each run (weights included)" if cuda else \
        "the process's peak RSS during the run above its RSS at the start (VmHWM reset per run; weights excluded)"
    lines = [
        "",
        f"### {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}: pivotal LoRA step vs token step",
        "",
        f"Machine: {_machine(device)}; torch {torch.__version__}; ComfyUI attention: {attention.optimized_attention.__name__}; "
        f"command: `python bench/pivotal_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"wall time {time.perf_counter() - started:.0f} s.",
        "",
        "| model | px | batch | LoRA rank/alpha | runs x steps (warm-up+measured) | trainer s/step | LoRA s/step | "
        "**LoRA / trainer** (median of paired, min-max) | trainer peak MiB | LoRA peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| SD 1.5 | {args.resolution} | {args.batch} | {r['rank']}/{r['alpha']:g} | {args.rounds} x ({args.warmup}+{args.steps}) | "
        f"{r['trainer']:.3f} | {r['lora']:.3f} | **{r['ratio']:.2f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}, "
        f"{r['pairs']} pairs) | {r['trainer_peak']:.0f} | {r['lora_peak']:.0f} |",
        "",
        f"Peak MiB: {memory}.",
    ]
    text = "\n".join(lines) + "\n"
    for line in text.splitlines():
        table.info(line)
    if not args.no_append:
        insert_table(args.output, text)
        log.info("added to %s", args.output)
    return 0


def insert_table(page: Path, text: str) -> None:
    """Puts `text` at the end of the page's pivotal section (before the GPU check's part), else at the page's end."""
    old = page.read_text(encoding="utf-8") if page.exists() else ""
    before, marker, after = old.partition(PIVOTAL_END)
    page.write_text(before.rstrip("\n") + "\n" + text + "\n" + marker + after if marker else old + text, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
