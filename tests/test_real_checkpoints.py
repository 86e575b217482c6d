"""Real-architecture checkpoints through the stock loader: SD 1.5 (eps, clip_l 768) and SD 2.1 768-v (v, clip_h 1024).

A randomly initialised checkpoint of the real size is saved by the host's own `comfy.sd.save_checkpoint`,
loaded with the stock CheckpointLoaderSimple under inference mode (model detection, CLIP width, VAE and
CPU dtypes all real), then Cross-Initialized, trained for 2 steps at 64 px and saved as an embedding that
the stock tokenizer finds as `embedding:NAME`. The host UNet must give bit-identical outputs before and
after training, and no host CLIP weight may be replaced or written.

Phase timings (wall and process CPU time) and RSS are logged; `pytest -s` shows them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import resource
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from real_checkpoints import SPECS, V_PRED_PROBE, V_PRED_PROBE_STD, build_checkpoint

log = logging.getLogger(__name__)

NAMES = ["Tom Hanks", "Meryl Streep", "Denzel Washington"]
NUM_TOKENS = 2


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


@contextlib.contextmanager
def _visible_log() -> Iterator[None]:
    """Shows this module's INFO lines on stderr (seen with `pytest -s`) besides pytest's own log capture."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[real-ckpt] %(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.setLevel(level)
        log.removeHandler(handler)


class PhaseTimer:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Logs wall time and process CPU time (all threads; independent of other jobs on a shared machine)."""
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - started
            self.cpu[name] = time.process_time() - cpu_started
            log.info("%s %-13s %6.1f s wall %6.1f s cpu  (rss %.2f GiB, peak %.2f GiB)", self.kind, name, self.wall[name],
                     self.cpu[name], _rss_gib(), _peak_rss_gib())

    def summary(self) -> None:
        log.info("%s total %.1f s wall, %.1f s cpu; peak RSS %.2f GiB; wall by phase %s", self.kind, sum(self.wall.values()),
                 sum(self.cpu.values()), _peak_rss_gib(), {k: round(v, 1) for k, v in self.wall.items()})


def _astronaut_64() -> torch.Tensor:
    """skimage's astronaut resized to 64x64 as a ComfyUI IMAGE [1, 64, 64, 3] in [0, 1]."""
    from PIL import Image
    from skimage import data

    small = Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).unsqueeze(0)


def _host_unet_output(model: Any, width: int) -> torch.Tensor:
    """The host UNet's denoised output on a fixed latent, sigma and cond."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn((1, 4, 8, 8), generator=gen)
    cond = torch.randn((1, 77, width), generator=gen)
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([2.5]), c_crossattn=cond).detach().float().clone()


def _weights_fingerprint(module: torch.nn.Module) -> list[tuple[str, int, int, float]]:
    """(name, object id, data pointer, float64 sum) of every parameter and buffer: shows that no host weight
    was replaced or written, at a fraction of the cost of a CLIP-H forward on CPU."""
    with torch.no_grad():
        return [
            (name, id(t), t.data_ptr(), float(t.detach().double().sum()))
            for name, t in [*module.named_parameters(), *module.named_buffers()]
        ]


def _clip_layer_options(clip: Any) -> tuple:
    encoder = getattr(clip.cond_stage_model, clip.cond_stage_model.clip)  # SD1/SD2: the one inner encoder
    return (clip.layer_idx, encoder.layer, encoder.layer_idx, encoder.return_projected_pooled)


def _free_host_models() -> None:
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # glibc: hand freed heap pages back before the next model
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd15", "sd21v"])
def test_real_checkpoint_end_to_end(kind: str, core: Any, embeddings_dir: Path) -> None:
    import comfy.model_base
    import comfy.supported_models
    import folder_paths
    from safetensors import safe_open

    import nodes

    spec = SPECS[kind]
    timer = PhaseTimer(kind)
    checkpoints = Path(folder_paths.get_folder_paths("checkpoints")[0])
    checkpoints.mkdir(parents=True, exist_ok=True)
    ckpt_name = f"cross_init_random_{kind}.safetensors"
    ckpt_path = checkpoints / ckpt_name
    emb_name = f"cross_init_real_{kind}"
    emb_path = embeddings_dir / f"{emb_name}.safetensors"
    model = clip = vae = None
    leaked: list[str] = []
    with _visible_log():
        try:
            # 1. a random checkpoint at the real architecture, saved by the host's save_checkpoint in fp16
            with timer.phase("build+save"):
                counts = build_checkpoint(kind, ckpt_path, seed=0)
            log.info("%s %s: %.2f GiB, params %s", kind, ckpt_name, ckpt_path.stat().st_size / 2**30, counts)
            prefix = "model.diffusion_model."
            with safe_open(str(ckpt_path), framework="pt") as f:
                keys = set(f.keys())
                probe = f.get_tensor(prefix + V_PRED_PROBE)
                assert f.get_tensor(prefix + "input_blocks.0.0.weight").dtype == torch.float16
            assert any(k.startswith("cond_stage_model.") for k in keys)
            assert any(k.startswith("first_stage_model.") for k in keys)
            probe_std = float(probe.float().std(unbiased=False))
            if spec.prediction == "v":
                # 0.3.75 decides SD2 v-prediction from this bias alone (SD20.model_type); the file's "v_pred" key,
                # written by save_checkpoint for any V model, is read only for SDXL. Control: zeroed, it says EPS.
                assert abs(probe_std - V_PRED_PROBE_STD) < 0.05, probe_std
                sd20 = comfy.supported_models.SD20(dict(spec.unet))
                assert sd20.model_type({prefix + V_PRED_PROBE: probe}, prefix) == comfy.model_base.ModelType.V_PREDICTION
                assert sd20.model_type({prefix + V_PRED_PROBE: torch.zeros_like(probe)}, prefix) == comfy.model_base.ModelType.EPS
            else:
                assert probe_std == 0.0
            gc.collect()

            # 2. the stock loader node, under inference mode as ComfyUI's executor runs nodes
            assert ckpt_name in folder_paths.get_filename_list("checkpoints")
            with timer.phase("load"), torch.inference_mode():
                model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)
            gc.collect()
            config = model.model.model_config
            assert type(config).__name__ == spec.config_class
            assert config.unet_config["model_channels"] == 320 and config.unet_config["context_dim"] == spec.width
            expected = comfy.model_base.ModelType.V_PREDICTION if spec.prediction == "v" else comfy.model_base.ModelType.EPS
            assert model.model.model_type == expected
            assert core.host.prediction_type(model) == spec.prediction
            slots = core.host.encoder_slots(clip)
            assert [(s.key, s.width) for s in slots] == [(spec.slot_key, spec.width)]
            assert type(vae.first_stage_model).__name__ == "AutoencoderKL"
            log.info("%s detected %s %s; unet %s, clip %s, vae %s", kind, type(config).__name__, model.model.model_type.name,
                     model.model.get_dtype(), sorted(map(str, clip.cond_stage_model.dtypes)), vae.vae_dtype)

            with timer.phase("host-before"):
                unet_before = _host_unet_output(model, spec.width)
                clip_before = _weights_fingerprint(clip.cond_stage_model)
                clip_options = _clip_layer_options(clip)
            assert torch.isfinite(unet_before).all()

            # 3. Cross Initialization and 2 training steps, under inference mode like the nodes
            with timer.phase("cross-init"), torch.inference_mode():
                init = core.method.initialization.cross_initialize(clip, num_tokens=NUM_TOKENS, names=NAMES)
            assert set(init.vectors) == {spec.slot_key}
            start = init.vectors[spec.slot_key]
            assert tuple(start.shape) == (NUM_TOKENS, spec.width)
            assert torch.isfinite(start).all()

            settings = core.common.settings.TrainingSettings(steps=2, batch_size=1, learning_rate=0.005, resolution=64)
            with timer.phase("train"), torch.inference_mode():
                result = core.training.trainer.train(model, clip, vae, _astronaut_64(), init, settings)
            log.info("%s losses %s", kind, result.losses)
            assert len(result.losses) == 2 and all(np.isfinite(result.losses))
            learned = result.embedding.vectors[spec.slot_key]
            assert tuple(learned.shape) == (NUM_TOKENS, spec.width)
            assert torch.isfinite(learned).all()
            assert not torch.equal(learned, start)
            assert float((learned - start).abs().max()) < 0.1  # 2 AdamW steps at lr 0.005 move an element ~0.01

            with timer.phase("host-after"):
                unet_after = _host_unet_output(model, spec.width)
                clip_after = _weights_fingerprint(clip.cond_stage_model)
            assert torch.equal(unet_before, unet_after), "training changed the host UNet's output"
            assert clip_after == clip_before, "training replaced or wrote host CLIP weights"
            assert _clip_layer_options(clip) == clip_options

            # 4. the embedding file, found by the stock tokenizer as embedding:NAME
            with timer.phase("save+encode"):
                emb_path.unlink(missing_ok=True)
                saved = core.embeddings.embedding_io.save_embedding(result.embedding, embeddings_dir, emb_name)
                assert saved == emb_path.resolve()
                with safe_open(str(saved), framework="pt") as f:
                    assert set(f.keys()) == {spec.slot_key}
                    on_disk = f.get_tensor(spec.slot_key)
                assert tuple(on_disk.shape) == (NUM_TOKENS, spec.width) and on_disk.dtype == torch.float32
                assert torch.equal(on_disk, learned)

                with torch.inference_mode():  # what CLIPTextEncode does
                    tokens = clip.tokenize(f"a photo of embedding:{emb_name} person")
                    cond = clip.encode_from_tokens(tokens)
                chunk = tokens[spec.token_key][0]
                assert len(chunk) == 77
                # ComfyUI 0.3.75 splices an [n, width] embedding as n consecutive [width] tensor tokens
                tensor_tokens = [t for t, _weight in chunk if torch.is_tensor(t)]
                assert [tuple(t.shape) for t in tensor_tokens] == [(spec.width,)] * NUM_TOKENS
                assert torch.equal(torch.stack(tensor_tokens).float(), learned)
                assert tuple(cond.shape) == (1, 77, spec.width) and torch.isfinite(cond).all()
        finally:
            with timer.phase("cleanup"):
                refs = [weakref.ref(m.model) for m in (model,) if m is not None]
                refs += [weakref.ref(c.cond_stage_model) for c in (clip,) if c is not None]
                del model, clip, vae
                _free_host_models()
                leaked = [type(r()).__name__ for r in refs if r() is not None]
                ckpt_path.unlink(missing_ok=True)
                emb_path.unlink(missing_ok=True)
            timer.summary()
    assert not leaked, f"host models still referenced after the test (their memory is not freed): {leaked}"
