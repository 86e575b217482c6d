"""Measures what autograd keeps per sample for one UNet forward at the real SD sizes (device independent).

Counts the distinct storages that `saved_tensors_hooks` see during a forward with a cond that requires
grad (host weights excluded), attributing each to the UNet block layer running at the time. Plain =
their sum; checkpointed = the layers' inputs (what checkpointing keeps) + the largest single layer
(recomputed in backward). Prints elements per latent pixel; `memory.ACTIVATION_ELEMENTS` is
fitted to these numbers.

    python bench/activation_memory.py --models sd15 sd21 --latent 32
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

log = logging.getLogger("activation_memory")


def measure(core, models, latent: int) -> dict[str, float]:
    model = models.model
    width = core.host.model_context_width(model)
    if width is None:
        raise ValueError(f"{type(model.model).__name__}: its UNet config names no context_dim (not an SD UNet)")
    x = torch.randn(1, 4, latent, latent)
    sigma = torch.full((1,), 3.0)
    blocks = core.host.unet_blocks(model)
    per_layer: dict[int, dict[int, int]] = {}
    inputs: dict[int, int] = {}
    current = [-1]
    hooks = []
    for i, layer in enumerate(blocks):
        def pre(_mod, args, i=i):
            current[0] = i
            inputs[i] = args[0].numel() * args[0].element_size()
        hooks.append(layer.register_forward_pre_hook(pre))
    with torch.inference_mode(), core.host.training_session(model, models.clip):
        weights = {p.untyped_storage().data_ptr() for p in model.model.parameters()}
        cond = torch.randn(1, 77, width, requires_grad=True)

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in weights:
                per_layer.setdefault(current[0], {})[ptr] = t.untyped_storage().nbytes()
            return t

        extra = {}
        if core.host.is_sdxl_model(model):  # SDXL's UNet also takes the pooled + size vector (ADM)
            pooled = torch.randn(1, int(model.model.model_config.unet_config["adm_in_channels"]) - 6 * 256)
            extra["y"] = core.host.sdxl_adm(model, pooled, latent * 8, latent * 8)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = core.host.denoised(model, x, sigma, cond, **extra)
        element = out.element_size()
        del out
    for h in hooks:
        h.remove()
    plain = sum(sum(d.values()) for d in per_layer.values())
    largest = max(sum(d.values()) for k, d in per_layer.items() if k >= 0)
    outside = sum(per_layer.get(-1, {}).values())
    ckpt = sum(inputs.values()) + largest + outside
    pixels = latent * latent
    return {"plain": plain / element / pixels, "checkpointed": ckpt / element / pixels, "plain_mib": plain / 2**20,
            "checkpointed_mib": ckpt / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "sd21"])
    parser.add_argument("--latent", type=int, nargs="+", default=[32])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import host
    import real_models

    pack = host.boot(Path(tempfile.mkdtemp(prefix="cross_init_bench_")))
    core = pack.cross_init_core
    out = logging.getLogger("activation_memory.table")
    out.addHandler(logging.StreamHandler(sys.stdout))
    out.setLevel(logging.INFO)
    out.propagate = False
    out.info("| model | latent | plain MiB | plain elem/px | checkpointed MiB | checkpointed elem/px |")
    out.info("|---|---|---|---|---|---|")
    for kind in args.models:
        models = real_models.build(kind)
        for latent in args.latent:
            r = measure(core, models, latent)
            out.info(f"| {real_models.LABELS[kind]} | {latent}x{latent} | {r['plain_mib']:.0f} | {r['plain']:.0f} | "
                     f"{r['checkpointed_mib']:.0f} | {r['checkpointed']:.0f} |")
        del models
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
