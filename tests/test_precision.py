"""Training through half-precision UNets: fp16 loss scaling, bf16 as is, metadata, host untouched.

The half-precision MODELs are the tiny SD1 UNet built with the same seed (same weights, rounded to the
dtype) through the host's own `set_inference_dtype`, the way its loader configures a UNet on a GPU;
ComfyUI runs them in fp16/bf16 on the CPU too, so these are the host's real half-precision kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_host_unchanged, face_images, host_fingerprint, init_embedding, one_draw_step_loss, settings

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}

# The tiny run's batch (2 x 4 x 8 x 8 latent elements) vs a real 512 px, batch-8 step (8 x 4 x 64 x 64):
# the MSE's gradient per predicted element is 2 x error / N, so scaling the tiny MSE by N_tiny / N_real
# gives the backward the same per-element start as the real step, and the token gradients land near the
# ~1e-8 measured there, under what fp16 can hold.
REAL_GRADIENT_FACTOR = (2 * 4 * 8 * 8) / (8 * 4 * 64 * 64)


@pytest.fixture(scope="module")
def precision_models(tiny):
    """name -> TinyModels: the tiny SD1 UNet in fp32, fp16, bf16 and fp32-weights-computed-in-fp16 (manual cast)."""
    import tiny_models

    base = tiny("sd1")
    with torch.inference_mode():
        models = {
            "fp16": tiny_models.build_model("sd1", dtype=torch.float16),
            "bf16": tiny_models.build_model("sd1", dtype=torch.bfloat16),
            "fp16_cast": tiny_models.build_model("sd1", dtype=torch.float32, manual_cast=torch.float16),
        }
    out = {name: tiny_models.TinyModels(model, base.clip, base.vae, "sd1") for name, model in models.items()}
    out["fp32"] = base
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_compute_dtype_is_what_activations_flow_in_and_only_fp16_is_scaled(core, precision_models):
    expected = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp16_cast": torch.float16}
    for name, m in precision_models.items():
        dtype = core.host.unet_compute_dtype(m.model)
        assert dtype == expected[name], name
        assert core.host.compute_dtype_size(m.model) == torch.empty((), dtype=dtype).element_size()
        scaler = core.training.loss_scaling.LossScaler.for_model(m.model)
        assert scaler.enabled == (dtype == torch.float16), name
        assert scaler.scale == (core.training.loss_scaling.LOSS_SCALE_INIT if scaler.enabled else 1.0)
    # fp32 weights under the host's manual-cast ops: the weights say float32, the activations are fp16
    assert precision_models["fp16_cast"].model.model.get_dtype() == torch.float32


def _first_gradients(core, m, emb, factor: float, scaler) -> torch.Tensor:
    """The unscaled float32 gradient of (factor x the diffusion MSE) w.r.t. the vectors, on one fixed draw."""
    with one_draw_step_loss(core, m, emb, settings(core, batch_size=2)) as (step_loss, draw):
        params = {k: torch.nn.Parameter(v.clone()) for k, v in emb.vectors.items()}
        scaler.scaled(factor * step_loss.diffusion(params, draw)).backward()
        scaler.unscale_(params)
        return params["clip_l"].grad.clone()


def test_fp16_underflows_at_real_gradient_sizes_without_scaling_and_not_with_it(core, precision_models):
    m32 = precision_models["fp32"]
    emb = init_embedding(core, m32.clip)
    off, on = core.training.loss_scaling.LossScaler(False), core.training.loss_scaling.LossScaler(True)
    reference = _first_gradients(core, m32, emb, REAL_GRADIENT_FACTOR, off)
    assert bool((reference != 0).all()) and float(reference.abs().mean()) < 1e-6  # real-size, all nonzero
    results = {}
    for name in ("fp16", "fp16_cast", "bf16"):
        m = precision_models[name]
        results[name] = (_first_gradients(core, m, emb, REAL_GRADIENT_FACTOR, off),
                         _first_gradients(core, m, emb, REAL_GRADIENT_FACTOR, on))
    for name in ("fp16", "fp16_cast"):
        unscaled, scaled = results[name]
        # without scaling the fp16 backward flushes the context gradient: what reaches the vectors is noise
        assert cosine(unscaled, reference) < 0.5, name
        assert cosine(scaled, reference) >= 0.9, name
        assert bool(torch.isfinite(scaled).all())
    unscaled_bf16, _ = results["bf16"]
    assert cosine(unscaled_bf16, reference) >= 0.9  # bfloat16 has float32's range: no scaling needed


@pytest.mark.parametrize("half", ["fp16", "bf16"])
def test_first_update_in_half_precision_matches_fp32(core, precision_models, half):
    m32, mh = precision_models["fp32"], precision_models[half]
    emb = init_embedding(core, m32.clip)
    cfg = settings(core, steps=1, learning_rate=0.01)
    before = host_fingerprint(mh)
    with torch.inference_mode():
        ref = core.training.trainer.train(m32.model, m32.clip, m32.vae, face_images(), emb, cfg)
        out = core.training.trainer.train(mh.model, mh.clip, mh.vae, face_images(), emb, cfg)
    assert out.skipped_steps == []
    assert (out.loss_scale is not None) == (half == "fp16")
    start = emb.vectors["clip_l"]
    ref_update, update = ref.embedding.vectors["clip_l"] - start, out.embedding.vectors["clip_l"] - start
    assert out.embedding.vectors["clip_l"].dtype == torch.float32
    assert cosine(update, ref_update) >= 0.9
    # Adam's first step moves a coordinate with a nonzero gradient by ~lr; weight decay alone by lr x 1e-2 x |v|
    assert float(update.abs().min()) > 0.5 * cfg.learning_rate, float(update.abs().min())
    assert_host_unchanged(before, mh)


def test_short_training_loss_curve_tracks_fp32(core, precision_models):
    emb = init_embedding(core, precision_models["fp32"].clip)
    cfg = settings(core, steps=4, batch_size=2, learning_rate=0.05)
    results = {}
    with torch.inference_mode():
        for name in ("fp32", "fp16", "bf16"):
            m = precision_models[name]
            results[name] = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, cfg)
    ref = torch.tensor(results["fp32"].losses)
    # same draws, weights rounded to the dtype: per-step losses agree to the dtype's rounding of the UNet
    # (fp16 ~1e-3, bf16 ~8e-3 relative per op); 2 % (fp16) and 5 % (bf16) of the loss leave room for the
    # vectors drifting apart over 4 steps, while a run whose tokens did not move would differ by more
    for name, tolerance in (("fp16", 0.02), ("bf16", 0.05)):
        result = results[name]
        assert result.skipped_steps == [] and len(result.losses) == cfg.steps, name
        losses = torch.tensor(result.losses)
        assert float(((losses - ref).abs() / ref.abs()).max()) <= tolerance, (name, losses, ref)
        total_ref = results["fp32"].embedding.vectors["clip_l"] - emb.vectors["clip_l"]
        total = result.embedding.vectors["clip_l"] - emb.vectors["clip_l"]
        assert cosine(total, total_ref) >= 0.9, name


def test_an_overflowing_fp16_step_is_skipped_and_training_continues(core, precision_models, monkeypatch):
    m = precision_models["fp16"]
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    real_mse = core.method.loss.diffusion_mse
    calls = {"n": 0}

    def overflow_at_third_step(*args, **kwargs):
        # 1e30 is finite in float32 (the loss) but its gradient overflows fp16 in the UNet's backward
        calls["n"] += 1
        value = real_mse(*args, **kwargs)
        return value * 1e30 if calls["n"] == 3 else value

    monkeypatch.setattr(core.method.loss, "diffusion_mse", overflow_at_third_step)
    snapshots: dict[int, torch.Tensor] = {}

    def keep(step: int, snapshot) -> None:
        snapshots[step] = snapshot.vectors["clip_l"].clone()

    with torch.inference_mode():
        out = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=5),
                                  preview=keep, preview_every=1)
    assert out.skipped_steps == [2]
    assert out.loss_scale == core.training.loss_scaling.LOSS_SCALE_INIT * core.training.loss_scaling.LOSS_SCALE_BACKOFF
    assert torch.equal(snapshots[3], snapshots[2])  # the skipped step left the vectors as they were
    for step in (1, 2, 4, 5):
        assert not torch.equal(snapshots[step], snapshots[step - 1] if step > 1 else emb.vectors["clip_l"])
    assert len(out.losses) == 4 and all(loss < 10 for loss in out.losses)
    assert torch.equal(out.embedding.vectors["clip_l"], snapshots[5])
    assert out.embedding.metadata["fp16_skipped_steps"] == "1"
    assert out.embedding.loss_steps == [1, 2, 4, 5]  # the step each loss belongs to: the report draws them there
    # the lowered loss scale travels with the optimizer state: a run going on starts from it, not from the initial one
    saved = core.embeddings.optimizer_state.unpack(out.embedding.metadata, out.embedding.vectors, "fp16 run")
    assert saved is not None and saved.step == 4 and saved.loss_scale == out.loss_scale
    monkeypatch.setattr(core.method.loss, "diffusion_mse", real_mse)
    with torch.inference_mode():
        more = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), out.embedding, settings(core, steps=1))
    assert more.loss_scale == out.loss_scale and more.embedding.loss_steps == [6]
    assert_host_unchanged(before, m)


def test_every_step_overflowing_is_a_clear_error(core, precision_models, monkeypatch):
    m = precision_models["fp16"]
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    real_mse = core.method.loss.diffusion_mse
    monkeypatch.setattr(core.method.loss, "diffusion_mse", lambda *a, **kw: real_mse(*a, **kw) * 1e30)
    diverged = core.common.errors.TrainingDivergedError
    with torch.inference_mode(), pytest.raises(diverged, match=r"all 3 steps overflowed.*--fp32-unet") as info:
        core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=3))
    assert torch.equal(info.value.embedding.vectors["clip_l"], emb.vectors["clip_l"])
    assert_host_unchanged(before, m)


def test_metadata_records_unet_precision_and_clip_layer(core, precision_models, tiny, tmp_path):
    cfg = settings(core, steps=1)
    m = precision_models["fp16"]
    emb = init_embedding(core, m.clip)
    with torch.inference_mode():
        fp16 = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, cfg).embedding
        skip = m.clip.clone()
        skip.clip_layer(-2)  # what CLIP Set Last Layer does
        bf16 = core.training.trainer.train(precision_models["bf16"].model, skip, m.vae, face_images(), emb, cfg).embedding
    from safetensors import safe_open

    with safe_open(str(core.embeddings.embedding_io.save_embedding(fp16, tmp_path, "half")), framework="pt") as handle:
        saved = handle.metadata()
    assert (saved["unet_dtype"], saved["clip_layer"]) == ("float16", "last")
    assert (bf16.metadata["unet_dtype"], bf16.metadata["clip_layer"]) == ("bfloat16", "-2")
    assert "fp16_skipped_steps" not in bf16.metadata
    # the families' own defaults, as the host resolves them: SD2 and SDXL take the penultimate layer
    assert core.host.clip_layer(tiny("sd2").clip) == "-2"
    assert core.host.clip_layer(tiny("sdxl").clip) == "-2"
    assert core.host.dtype_name(core.host.unet_compute_dtype(tiny("sd2").model)) == "float32"
