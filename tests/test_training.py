"""The trainer on tiny host models: gradients, targets, loss, regularizer, determinism, host left unchanged."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_host_unchanged, face_images, host_fingerprint, init_embedding, one_draw_step_loss, settings


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_gradient_matches_finite_differences_and_reaches_only_the_vectors(core, tiny, kind):
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    key = next(iter(emb.vectors))
    gen = torch.Generator().manual_seed(7)
    start = emb.vectors[key].clone() + 0.1 * torch.randn(emb.vectors[key].shape, generator=gen)
    with one_draw_step_loss(core, m, emb, settings(core, batch_size=3)) as (step_loss, draw):
        params = {key: torch.nn.Parameter(start.clone())}
        loss, _mse, _reg = step_loss(params, draw)
        loss.backward()
        grad = params[key].grad.clone()
        # the steepest direction gives the largest derivative, well above float32 round-off of the loss
        direction = grad / grad.norm()
        analytic = float((grad * direction).sum())
        eps = 0.05
        with torch.no_grad():
            plus = float(step_loss({key: start + eps * direction}, draw)[0])
            minus = float(step_loss({key: start - eps * direction}, draw)[0])
        host_params = list(m.model.model.parameters()) + list(m.clip.cond_stage_model.parameters())
        assert all(p.grad is None for p in host_params)
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-6
    assert abs(numeric - analytic) <= 0.02 * abs(analytic), (numeric, analytic)


def test_eps_and_v_predictions_and_targets(core, tiny):
    for kind, expected in (("sd1", "eps"), ("sd2", "v")):
        m = tiny(kind)
        assert core.host.prediction_type(m.model) == expected
        gen = torch.Generator().manual_seed(1)
        x0 = torch.randn(2, 4, 8, 8, generator=gen)
        noise = torch.randn(2, 4, 8, 8, generator=gen)
        t = torch.tensor([10, 700])
        sigma = core.host.sigmas_for_timesteps(m.model, t)
        ms = m.model.model.model_sampling
        with torch.inference_mode():
            cond = m.clip.encode_from_tokens(m.clip.tokenize("a face"))
            x_noisy = x0 + sigma.view(-1, 1, 1, 1) * noise
            den = m.model.model.apply_model(x_noisy, sigma, c_crossattn=cond.expand(2, -1, -1))
            xc, t_in = ms.calculate_input(sigma, x_noisy), ms.timestep(sigma).float()
            raw = m.model.model.diffusion_model(xc, t_in, context=cond.expand(2, -1, -1))
        pred = core.method.loss.prediction_from_denoised(expected, x_noisy, den, sigma)
        torch.testing.assert_close(pred, raw, rtol=1e-3, atol=1e-4)
        # targets from SD's DDPM schedule (scaled-linear betas), diffusers' convention: x_t = sqrt(a) x0 + sqrt(1-a) eps
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        a = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
        want = noise if expected == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
        torch.testing.assert_close(core.method.loss.target(expected, x0, noise, sigma), want, rtol=1e-4, atol=1e-5)


def test_training_loss_decreases_on_the_face(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    images = face_images(1)
    cfg = settings(core, steps=25, batch_size=4, learning_rate=0.1)
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(m.model, m.clip, m.vae, images, emb, cfg)
        result = core.training.trainer.train(m.model, m.clip, m.vae, images, emb, cfg)
    sampler = core.training.run_setup.StepSampler(99, 1, run.sigmas.shape[0], len(run.layouts), tuple(run.latents.shape[1:]))
    draws = [sampler.draw(8) for _ in range(4)]

    def held_out(vectors):
        with torch.inference_mode(), core.host.training_session(m.model, m.clip) as device, torch.no_grad():
            step_loss = core.method.loss.StepLoss(run, device)
            return sum(float(step_loss(vectors, d)[1]) for d in draws) / len(draws)

    before, after = held_out(emb.vectors), held_out(result.embedding.vectors)
    # a random move of the same size is the control: training must beat it, not just wander
    step = result.embedding.vectors["clip_l"] - emb.vectors["clip_l"]
    noise = torch.randn(step.shape, generator=torch.Generator().manual_seed(3))
    control = held_out({"clip_l": emb.vectors["clip_l"] + noise * step.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)})
    # the tiny UNet hears the text weakly, so the gain is small in relative terms but exact (fixed draws)
    assert before - after > 2e-4, (before, after)
    assert control - after > 2e-4, (control, after)
    assert len(result.losses) == 25 and all(torch.isfinite(torch.tensor(result.losses)))


def test_large_reg_weight_keeps_vectors_near_init(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    cfg = settings(core, steps=12, batch_size=2, learning_rate=0.05)
    distances = {}
    for reg in (0.0, 1000.0):
        with torch.inference_mode():
            loss = core.common.settings.LossSettings(reg_weight=reg)
            out = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, cfg, loss)
        distances[reg] = float((out.embedding.vectors["clip_l"] - emb.vectors["clip_l"]).norm(dim=1).max())
    assert distances[0.0] > 0.3
    assert distances[1000.0] < 0.15 * distances[0.0], distances


def test_same_seed_same_vectors_and_metadata(core, tiny):
    m = tiny("sd2")
    emb = init_embedding(core, m.clip)
    with torch.inference_mode():
        a = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, seed=5), mode="custom").embedding
        b = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, seed=5)).embedding
        c = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, seed=6)).embedding
    assert torch.equal(a.vectors["clip_h"], b.vectors["clip_h"])
    assert not torch.equal(a.vectors["clip_h"], c.vectors["clip_h"])
    assert a.metadata["base_model"] == "sd2-v"
    assert a.metadata["steps"] == "3" and a.metadata["seed"] == "5" and a.metadata["method"] == "cross_initialization"
    assert torch.equal(a.init_vectors["clip_h"], emb.vectors["clip_h"])


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_host_bit_identical_after_success(core, tiny, kind):
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    with torch.inference_mode():
        core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core))
    assert_host_unchanged(before, m)


def test_host_bit_identical_after_error_inside_the_step(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)

    def boom(step: int) -> None:
        if step == 1:
            raise RuntimeError("injected failure")

    with torch.inference_mode(), pytest.raises(RuntimeError, match="injected failure"):
        core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core), fault_hook=boom)
    assert_host_unchanged(before, m)


def test_cancel_is_honoured_within_one_step_and_host_unchanged(core, tiny):
    import comfy.model_management as mm

    m = tiny("sd2")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    steps_done = []

    def press_cancel(step: int) -> None:
        if step == 2:
            mm.interrupt_current_processing(True)

    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=10), fault_hook=press_cancel,
                                on_step=lambda s, t, loss: steps_done.append(s))
    finally:
        mm.interrupt_current_processing(False)
    assert steps_done in ([1, 2], [1, 2, 3])  # the step that saw Cancel is the last one at most
    assert_host_unchanged(before, m)


def test_nan_loss_stops_with_clear_error_and_keeps_last_finite_vectors(core, tiny, monkeypatch):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    with torch.inference_mode():
        two_steps = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=2)).embedding
    real_mse = core.method.loss.diffusion_mse
    calls = {"n": 0}

    def mse_nan_at_third_step(*args, **kwargs):
        calls["n"] += 1
        value = real_mse(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(core.method.loss, "diffusion_mse", mse_nan_at_third_step)
    with torch.inference_mode(), pytest.raises(core.common.errors.TrainingDivergedError, match=r"step 3/5.*NaN") as info:
        core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=5))
    assert info.value.step == 2
    assert torch.equal(info.value.embedding.vectors["clip_l"], two_steps.vectors["clip_l"])
    assert_host_unchanged(before, m)


def test_progress_bar_reports_every_step(core, tiny, monkeypatch):
    """The trainer updates the host's progress bar after every step; what reaches the UI hook is the host's
    choice (0.33 throttles plain updates to one per 100 ms, never the first or the last)."""
    import comfy.utils

    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    updates, seen = [], []
    update_absolute = comfy.utils.ProgressBar.update_absolute

    def spy(bar, value, total=None, preview=None):
        updates.append((value, total))
        return update_absolute(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", spy)
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        with torch.inference_mode():
            core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=4))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert updates == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[0] == (1, 4) and seen[-1] == (4, 4) and set(seen) <= set(updates)
    assert [value for value, _total in seen] == sorted({value for value, _total in seen})


def test_masked_loss_ignores_the_background(core):
    gen = torch.Generator().manual_seed(0)
    goal = torch.randn(2, 4, 8, 8, generator=gen)
    face = torch.zeros(2, 1, 8, 8)
    face[..., 2:6, 2:6] = 1.0
    pred_a = goal + 0.1 * torch.randn(2, 4, 8, 8, generator=gen)
    pred_b = torch.where(face.bool().expand_as(pred_a), pred_a, pred_a + 5.0)  # only the background differs
    weight = 0.0 + 1.0 * face
    assert core.method.loss.diffusion_mse(pred_a, goal, weight) == core.method.loss.diffusion_mse(pred_b, goal, weight)
    assert core.method.loss.diffusion_mse(pred_a, goal) != core.method.loss.diffusion_mse(pred_b, goal)
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 16:48] = 1
    w = core.training.run_setup.prepare_masks(masks, 2, 64, (8, 8), background_weight=0.25)
    assert w.shape == (4, 1, 8, 8)
    assert float(w[0, 0, 4, 4]) == 1.0 and float(w[0, 0, 0, 0]) == 0.25
    assert core.training.run_setup.prepare_masks(masks, 2, 64, (8, 8), background_weight=1.0) is None


@pytest.mark.parametrize(
    "kw,match",
    [
        # 0 is not bad: it takes the preset's (in custom, the paper's) value (tests/test_nodes.py)
        ({"steps": -3}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": -0.01}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": 50.0}, "learning_rate"),
        ({"resolution": 100}, "resolution"),
    ],
)
def test_bad_training_settings_name_the_input(core, kw, match):
    base = {"mode": "custom", "steps": 10, "batch_size": 2, "learning_rate": 0.01, "seed": 0, "resolution": 512}
    base.update(kw)
    with pytest.raises(core.common.errors.InvalidInputError, match=match):
        core.common.settings.resolve(**base)


def test_presets(core):
    preset = core.common.settings.USE_PRESET  # 0: the mode's own value
    full = core.common.settings.resolve("full", preset, preset, preset, 3)
    fast = core.common.settings.resolve("fast", preset, preset, preset, 3)
    assert (full.steps, full.batch_size, full.learning_rate, full.seed) == (320, 8, 0.005, 3)
    assert (fast.steps, fast.batch_size) == (25, 8) and fast.learning_rate > full.learning_rate
    overridden = core.common.settings.resolve("fast", 7, 2, 0.03, 3)  # any other value overrides the preset
    assert (overridden.steps, overridden.batch_size, overridden.learning_rate) == (7, 2, 0.03)
    with pytest.raises(core.common.errors.InvalidInputError, match="reg_weight"):
        core.common.settings.LossSettings(reg_weight=-1.0).validated()


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.zeros(0, 64, 64, 3), "empty"),
        (torch.zeros(1, 1, 1, 3), "too small"),
        (torch.full((1, 64, 64, 3), float("nan")), "NaN"),
        (torch.full((1, 64, 64, 3), 255.0), r"\[0, 1\]"),
        (torch.zeros(1, 64, 64, 2), "channels"),
    ],
)
def test_bad_images_are_refused_before_any_work(core, tiny, images, match):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError, match=match):
        core.training.trainer.train(m.model, m.clip, m.vae, images, emb, settings(core))


def test_grayscale_rgba_and_odd_sizes_are_accepted(core):
    gray = core.training.run_setup.prepare_pixels(torch.rand(1, 40, 100, 1), 64)
    rgba = core.training.run_setup.prepare_pixels(torch.rand(2, 90, 50, 4), 64)
    assert gray.shape == (1, 64, 64, 3) and rgba.shape == (2, 64, 64, 3)
    assert torch.equal(gray[..., 0], gray[..., 2])


def test_mismatched_model_and_clip_or_embedding_are_refused(core, tiny):
    sd1, sd2 = tiny("sd1"), tiny("sd2")
    emb_sd2 = init_embedding(core, sd2.clip)
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError, match="clip_h"):
        core.training.trainer.train(sd1.model, sd1.clip, sd1.vae, face_images(), emb_sd2, settings(core))
    with torch.inference_mode(), pytest.raises(core.common.errors.UnsupportedModelError, match="same checkpoint"):
        core.training.trainer.train(tiny("sdxl").model, sd1.clip, sd1.vae, face_images(), init_embedding(core, sd1.clip), settings(core))


def test_previews_render_with_the_host_models_restored_and_reach_the_progress_bar(core, tiny):
    import comfy.utils

    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    seen, rendered = [], []
    hook = core.training.preview.progress_preview(m.model, m.clip, m.vae, face_images(1), 64, seed=0)

    def preview(step, snapshot):
        rendered.append((step, snapshot.vectors["clip_l"].clone()))
        return hook(step, snapshot)

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, image, node_id=None: seen.append((value, image)))
    try:
        with torch.inference_mode():
            result = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=5),
                                         preview=preview, preview_every=2)
            plain = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=5))
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert [step for step, _v in rendered] == [2, 4]
    images = [image for _value, image in seen if image is not None]
    assert len(images) == 2 and images[0][0] == "JPEG" and images[0][1].size == (512, 256)  # face | sample
    steps = [value for value, image in seen if image is None]  # a throttling host may drop the ones in between
    assert steps.count(1) == 2 and steps.count(5) == 2 and set(steps) <= {1, 2, 3, 4, 5}
    # previews leave the optimisation untouched: same vectors as a run without them
    assert torch.equal(result.embedding.vectors["clip_l"], plain.embedding.vectors["clip_l"])
    assert not torch.equal(rendered[0][1], rendered[1][1])
    assert_host_unchanged(before, m)


def test_preview_panel_shows_the_face_beside_the_sample(core):
    face = torch.zeros(64, 48, 3)
    face[..., 0] = 1.0
    sample = torch.ones(64, 64, 3) * 0.5
    panel = core.training.preview.side_by_side(face, sample, height=128)
    assert panel.size == (96 + 128, 128)
    assert panel.getpixel((10, 10)) == (255, 0, 0) and panel.getpixel((200, 10)) == (127, 127, 127)
    gray = core.training.preview.side_by_side(torch.full((64, 64, 1), 0.5), sample, height=64)  # grayscale photos train too
    assert gray.getpixel((5, 5)) == (127, 127, 127)


def test_console_progress_shows_steps_and_loss(core, tiny, capsys):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    with torch.inference_mode():
        result = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=3))
    err = capsys.readouterr().err
    assert "Cross-Init training" in err and "3/3" in err
    assert f"loss={result.losses[-1]:.4f}" in err


def test_console_progress_follows_comfyuis_progress_bar_switch(core, tiny, capsys, monkeypatch):
    import comfy.utils

    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_ENABLED", False)
    with torch.inference_mode():
        result = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=2))
    assert len(result.losses) == 2
    assert "Cross-Init training" not in capsys.readouterr().err


def test_captions_are_the_reference_templates_drawn_uniformly(core, tiny):
    """81 reference templates (repeats kept) filled with 'face of {} person'; the seeded draw is uniform over all 81."""
    from pathlib import Path

    from transformers import CLIPTokenizer

    raw = (Path(__file__).resolve().parents[1] / "cross_init_core" / "data" / "caption_templates.txt").read_text(encoding="utf-8")
    templates = raw.splitlines()
    assert len(templates) == 81 and len(set(templates)) == 57
    captions = [t.replace("{}", "face of {} person") for t in templates]
    assert captions[0] == "a photo of a face of {} person" and captions[-1] == "a depiction of a small face of {} person"
    assert core.method.templates.CAPTION_TEMPLATES == tuple(captions)

    m = tiny("sd1")
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(m.model, m.clip, m.vae, face_images(), init_embedding(core, m.clip), settings(core))
    assert len(run.layouts) == 81
    tokenizer: CLIPTokenizer = m.clip.tokenizer.clip_l.tokenizer
    for caption, layout in zip(captions, run.layouts, strict=True):
        before, after = caption.split("{}")
        prefix = tokenizer(before)["input_ids"][:-1]  # BOS + the words before the tokens
        rest = tokenizer(after)["input_ids"][1:]  # the words after them + EOS
        chunk = layout.tokens["l"][0]
        # the learned tokens sit right where the caption's inner {} is, and the words around them are the caption's
        assert layout.positions["l"] == [(0, len(prefix), 0), (0, len(prefix) + 1, 1)]
        assert [t for t, _w in chunk[: len(prefix)]] == prefix
        assert [t for t, _w in chunk[len(prefix) + 2 : len(prefix) + 2 + len(rest)]] == rest

    sampler = run.sampler()
    rounds = 200
    drawn = torch.tensor([i for _ in range(rounds) for i in sampler.draw(81).templates])
    counts = torch.bincount(drawn, minlength=81).double()
    assert counts.shape == (81,) and counts.min() > 0
    chi_square = float(((counts - rounds) ** 2 / rounds).sum())
    assert chi_square < 124.84  # 0.1% critical value of chi-square with 80 degrees of freedom
    # and repeated templates weigh more, as in the reference: 'a rendering of a' is 3 of the 81
    rendering = [i for i, c in enumerate(captions) if c == "a rendering of a face of {} person"]
    assert len(rendering) == 3
    share = float(counts[rendering].sum()) / (rounds * 81)
    assert abs(share - 3 / 81) < 0.01
