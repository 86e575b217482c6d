"""SDXL on a tiny SDXL-like host model (both text encoders tiny, the ADM path real).

Cross Initialization per encoder against an independent forward (penultimate layer, no final LayerNorm,
clip skip respected), the ADM vector and context the UNet sees during training against the host's own
conditioning code, gradients into both vector sets through both the cross-attention context and the
pooled/ADM path, placeholder layout, the file format (clip_l + clip_g) and its `embedding:NAME` round trip,
clear errors for single-encoder files, and the host left bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_same_fingerprint, face_images, host_weights, independent_init

NAMES = ["Tom Hanks", "Meryl Streep", "Cher", "Denzel Washington", "Scarlett Johansson"]
WIDTHS = {"clip_l": 64, "clip_g": 96}
RES = 64


def init_embedding(core, clip, names=NAMES):
    with torch.inference_mode():
        return core.method.initialization.cross_initialize(clip, 2, names)


def settings(core, **kw):
    base = {"steps": 2, "batch_size": 2, "learning_rate": 0.01, "resolution": RES, "seed": 0}
    base.update(kw)
    return core.common.settings.TrainingSettings(**base)


def perturbed(vectors: dict[str, torch.Tensor], seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in vectors.items()}


def sdxl_fingerprint(m) -> dict[str, object]:
    """Host outputs on fixed inputs (UNet with the host's own ADM vector, CLIP cond + pooled, VAE) and every weight."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    with torch.inference_mode():
        cond, pooled = m.clip.encode_from_tokens(m.clip.tokenize("a photo of a person"), return_pooled=True)
        adm = m.model.model.encode_adm(pooled_output=pooled, width=1024, height=1024, crop_w=0, crop_h=0,
                                       target_width=1024, target_height=1024)
        out: dict[str, object] = {
            "unet": m.model.model.apply_model(x, torch.tensor([3.0]), c_crossattn=cond, y=adm).clone(),
            "clip": cond.clone(),
            "pooled": pooled.clone(),
            "vae": m.vae.encode(torch.rand(1, 64, 64, 3, generator=gen)).clone(),
        }
        out.update(host_weights(m))
    return out


def assert_sdxl_host_unchanged(before: dict[str, object], m) -> None:
    assert_same_fingerprint(before, sdxl_fingerprint(m))
    for enc in (m.clip.cond_stage_model.clip_l, m.clip.cond_stage_model.clip_g):
        assert (enc.layer, enc.layer_idx, enc.return_projected_pooled) == enc.options_default


@pytest.fixture(scope="module")
def sdxl(tiny):
    return tiny("sdxl")


# ---------------------------------------------------------------------------------------------
# Cross Initialization per encoder


@pytest.mark.parametrize("clip_skip", [None, -3])
def test_initial_vectors_match_independent_computation_per_encoder(core, sdxl, clip_skip):
    clip = sdxl.clip.clone()
    if clip_skip is not None:
        clip.clip_layer(clip_skip)
    assert [(s.key, s.token_key, s.width) for s in core.host.encoder_slots(clip)] == [("clip_l", "l", 64), ("clip_g", "g", 96)]
    emb = init_embedding(core, clip)
    assert emb.widths() == WIDTHS and emb.num_tokens == 2
    layer = -2 if clip_skip is None else clip_skip  # SDXL: penultimate by default, no final LayerNorm
    for token_key in ("l", "g"):
        with torch.inference_mode(False), torch.no_grad():
            expected = independent_init(clip, token_key, NAMES, 2, layer, final_ln=False)
            with_ln = independent_init(clip, token_key, NAMES, 2, layer, final_ln=True)
        got = emb.vectors[f"clip_{token_key}"]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert (got - with_ln).abs().max() > 1e-2  # the final LayerNorm really is left out
        assert torch.equal(emb.init_vectors[f"clip_{token_key}"], got)
    if clip_skip is not None:
        default = init_embedding(core, sdxl.clip)
        for key in WIDTHS:
            assert (emb.vectors[key] - default.vectors[key]).abs().max() > 1e-2
    # the host CLIP's options are back to their defaults (clip skip is applied per encode)
    for enc in (sdxl.clip.cond_stage_model.clip_l, sdxl.clip.cond_stage_model.clip_g):
        assert (enc.layer, enc.layer_idx) == enc.options_default[:2]


@pytest.mark.parametrize(
    "text",
    [
        "a photo of {} person",
        "{}",
        "(a photo of {}:1.2) person, (smiling:0.8), portrait of {} in a garden",
        "a " + "very " * 80 + "long prompt with {} near the end of the second chunk",
    ],
)
def test_placeholder_positions_are_identical_in_both_token_streams(core, sdxl, text):
    slots = core.host.encoder_slots(sdxl.clip)
    layout = core.method.prompt_tokens.layout_prompt(sdxl.clip, slots, text, "{}", 2)
    assert layout.positions["l"] == layout.positions["g"]
    assert len(layout.positions["l"]) == 2 * text.count("{}")
    assert [row for _c, _i, row in layout.positions["g"]] == [0, 1] * text.count("{}")
    tokens_l, tokens_g = layout.tokens["l"], layout.tokens["g"]
    assert len(tokens_l) == len(tokens_g) == (2 if "long" in text else 1)
    pad_l, pad_g = sdxl.clip.tokenizer.clip_l.pad_token, sdxl.clip.tokenizer.clip_g.pad_token
    for chunk_l, chunk_g in zip(tokens_l, tokens_g, strict=True):
        assert len(chunk_l) == len(chunk_g) == 77
        # the same words and weights in both streams; only the padding token differs (l pads with EOS, g with 0)
        for (tl, wl), (tg, wg) in zip(chunk_l, chunk_g, strict=True):
            assert wl == wg
            assert tl == tg or (tl == pad_l and tg == pad_g)


# ---------------------------------------------------------------------------------------------
# Training: the ADM vector and context the UNet sees, gradients


class UNetInputs:
    """Records the context and ADM vector `y` the host UNet receives (a forward pre-hook, removed on exit)."""

    def __init__(self, model) -> None:
        self.module = model.model.diffusion_model
        self.calls: list[dict[str, torch.Tensor]] = []

    def __enter__(self) -> UNetInputs:
        self.handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, _module, _args, kwargs):
        self.calls.append({"context": kwargs["context"], "y": kwargs["y"]})

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def host_conditioning(clip, model, layouts, templates, vectors, slots, res):
    """What stock ComfyUI gives for the same captions: encode_from_tokens per caption, then encode_adm."""
    conds, adms = [], []
    with torch.inference_mode():
        for template in templates:
            tokens = layouts[template].fill({k: v.detach() for k, v in vectors.items()}, slots)
            cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            conds.append(cond)
            adms.append(model.model.encode_adm(pooled_output=pooled, width=res, height=res, crop_w=0, crop_h=0,
                                               target_width=res, target_height=res))
    return torch.cat(conds), torch.cat(adms)


@pytest.mark.parametrize("clip_skip", [None, -3])
def test_training_context_and_adm_equal_the_hosts_conditioning(core, sdxl, clip_skip):
    clip = sdxl.clip.clone()
    if clip_skip is not None:
        clip.clip_layer(clip_skip)
    emb = init_embedding(core, clip)
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(sdxl.model, clip, sdxl.vae, face_images(), emb, settings(core, batch_size=3))
    draw = run.sampler().draw(3)
    start = perturbed(emb.vectors, seed=11)
    with UNetInputs(sdxl.model) as seen, torch.inference_mode(), core.host.training_session(sdxl.model, clip) as device:
        core.method.loss.StepLoss(run, device)({k: v.clone() for k, v in start.items()}, draw)
    (call,) = seen.calls
    cond, adm = host_conditioning(clip, sdxl.model, run.layouts, draw.templates, start, run.slots, RES)
    assert call["context"].shape == (3, 77, 64 + 96) and call["y"].shape == (3, 96 + 6 * 256)
    torch.testing.assert_close(call["context"].detach(), cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call["y"].detach(), adm, rtol=1e-5, atol=1e-5)
    # the ADM's first 96 columns are clip_g's pooled output for each caption with the learned vectors
    pooled_g = adm[:, :96]
    # and the size conditioning is the host's for this resolution (a 1024 image would give other numbers)
    with torch.inference_mode():
        adm_1024 = core.host.sdxl_adm(sdxl.model, pooled_g, 1024, 1024)
        host_1024 = sdxl.model.model.encode_adm(pooled_output=pooled_g, width=1024, height=1024, crop_w=0, crop_h=0,
                                                target_width=1024, target_height=1024)
    assert torch.equal(adm_1024, host_1024)
    assert (adm_1024[:, 96:] - adm[:, 96:]).abs().max() > 1e-2


def test_gradients_reach_both_encoders_through_context_and_adm_and_match_finite_differences(core, sdxl):
    emb = init_embedding(core, sdxl.clip)
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(sdxl.model, sdxl.clip, sdxl.vae, face_images(), emb, settings(core, batch_size=2),
                                        core.common.settings.LossSettings(reg_weight=0.0))
    draw = run.sampler().draw(2)
    start = perturbed(emb.vectors, seed=7, scale=0.1)
    keys = list(WIDTHS)
    with UNetInputs(sdxl.model) as seen, torch.inference_mode(), core.host.training_session(sdxl.model, sdxl.clip) as device:
        step_loss = core.method.loss.StepLoss(run, device)
        params = {k: torch.nn.Parameter(start[k].clone()) for k in keys}
        loss, _mse, _reg = step_loss(params, draw)
        y, context = seen.calls[-1]["y"], seen.calls[-1]["context"]
        grad_y, grad_context = torch.autograd.grad(loss, [y, context], retain_graph=True)
        via_adm = torch.autograd.grad(y, [params[k] for k in keys], grad_y, retain_graph=True, allow_unused=True)
        via_context = torch.autograd.grad(context, [params[k] for k in keys], grad_context, retain_graph=True, allow_unused=True)
        loss.backward()
        grads = {k: params[k].grad.clone() for k in keys}
        host_params = list(sdxl.model.model.parameters()) + list(sdxl.clip.cond_stage_model.parameters())
        assert all(p.grad is None for p in host_params)

        def fd(direction: dict[str, torch.Tensor], eps: float = 0.05) -> tuple[float, float]:
            analytic = float(sum((grads[k] * direction[k]).sum() for k in keys))
            with torch.no_grad():
                plus = float(step_loss({k: start[k] + eps * direction[k] for k in keys}, draw)[0])
                minus = float(step_loss({k: start[k] - eps * direction[k] for k in keys}, draw)[0])
            return analytic, (plus - minus) / (2 * eps)

        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        joint = fd({k: grads[k] / norm for k in keys})
        g_only = fd({"clip_l": torch.zeros_like(grads["clip_l"]), "clip_g": grads["clip_g"] / grads["clip_g"].norm()})
        l_only = fd({"clip_l": grads["clip_l"] / grads["clip_l"].norm(), "clip_g": torch.zeros_like(grads["clip_g"])})

    l_adm, g_adm = via_adm
    l_ctx, g_ctx = via_context
    # clip_g reaches the UNet twice: its hidden states (cross-attention) and its pooled output (ADM). The
    # tiny UNet hears the pooled part weakly (measured |via ADM| / |grad| ~ 2e-3), but the path is there and
    # the two parts add up to the gradient exactly
    assert float(grad_y[:, :96].abs().max()) > 0  # the loss depends on the pooled columns of y
    assert g_adm is not None and torch.isfinite(g_adm).all() and g_adm.norm() > 1e-4 * grads["clip_g"].norm(), (g_adm, grads)
    assert g_ctx.norm() > 0.5 * grads["clip_g"].norm()
    # clip_l only through the context: the pooled output is clip_g's
    assert l_adm is None or float(l_adm.abs().max()) == 0.0
    assert l_ctx.norm() > 0
    torch.testing.assert_close(g_adm + g_ctx, grads["clip_g"], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(l_ctx, grads["clip_l"], rtol=1e-4, atol=1e-7)
    for key in keys:
        assert torch.isfinite(grads[key]).all() and grads[key].abs().max() > 0, key
    for name, (analytic, numeric) in {"joint": joint, "clip_g": g_only, "clip_l": l_only}.items():
        assert abs(analytic) > 1e-6, name
        assert abs(numeric - analytic) <= 0.02 * abs(analytic), (name, numeric, analytic)


def test_regularizer_sums_the_per_encoder_mean_distances(core):
    init = {"clip_l": torch.zeros(2, 64), "clip_g": torch.zeros(2, 96)}
    moved = {"clip_l": torch.zeros(2, 64), "clip_g": torch.zeros(2, 96)}
    moved["clip_l"][0, 0], moved["clip_l"][1, 1] = 3.0, 1.0  # per-token distances 3, 1: mean 2
    moved["clip_g"][0, :4] = 2.0  # distances 4, 0: mean 2
    assert float(core.method.loss.regularizer(moved, init)) == pytest.approx(2.0 + 2.0)


def test_training_updates_both_vector_sets_and_leaves_the_host_unchanged(core, sdxl):
    emb = init_embedding(core, sdxl.clip)
    before = sdxl_fingerprint(sdxl)
    with torch.inference_mode():
        result = core.training.trainer.train(sdxl.model, sdxl.clip, sdxl.vae, face_images(), emb, settings(core, steps=2), mode="custom")
    out = result.embedding
    assert out.widths() == WIDTHS
    for key in WIDTHS:
        moved = (out.vectors[key] - emb.vectors[key]).abs().max()
        # two AdamW steps of lr 0.01 move each coordinate by about lr (plus the small weight decay)
        assert 0.005 < moved <= 2 * 0.01 * 1.1, (key, moved)
        assert torch.equal(out.init_vectors[key], emb.vectors[key])
    assert out.metadata["base_model"] == "sdxl-eps" and out.metadata["resolution"] == str(RES)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert_sdxl_host_unchanged(before, sdxl)


# ---------------------------------------------------------------------------------------------
# Files and conditioning


def test_saved_file_loads_in_the_host_for_both_encoders(core, pack, sdxl, embeddings_dir: Path):
    import tiny_models
    from safetensors import safe_open

    import nodes

    emb = init_embedding(core, sdxl.clip)
    trained = emb.with_vectors(perturbed(emb.vectors, seed=3))
    name = "sdxl_face_roundtrip"
    path = core.embeddings.embedding_io.save_embedding(trained, embeddings_dir, name, overwrite=True)
    with safe_open(str(path), framework="pt") as handle:
        shapes = {k: tuple(handle.get_tensor(k).shape) for k in handle.keys()}
        for key in WIDTHS:
            assert torch.equal(handle.get_tensor(key), trained.vectors[key])
    assert shapes == {"clip_l": (2, 64), "clip_g": (2, 96)}
    # (the pack's own loader insists on the real widths 768/1280; real-size files: test_embedding_files.py)

    encoder = nodes.NODE_CLASS_MAPPINGS["CrossInitCLIPTextEncode"]
    with torch.inference_mode():
        clip = tiny_models.build_clip("sdxl", embedding_directory=str(embeddings_dir))
        # the host's SDXL tokenizer finds each encoder's own key in the file
        tokens = clip.tokenize(f"a photo of embedding:{name} person")
        (stock,) = nodes.CLIPTextEncode().encode(clip, f"a photo of embedding:{name} person")
        ours = encoder.execute(clip, trained, "a photo of <face> person", "<face>").result[0]
        (plain,) = nodes.CLIPTextEncode().encode(clip, "a photo of sks sks person")
        only_l = encoder.execute(clip, trained.with_vectors({**trained.vectors, "clip_l": emb.vectors["clip_l"]}),
                                 "a photo of <face> person", "<face>").result[0]
        only_g = encoder.execute(clip, trained.with_vectors({**trained.vectors, "clip_g": emb.vectors["clip_g"]}),
                                 "a photo of <face> person", "<face>").result[0]
    for key, token_key in (("clip_l", "l"), ("clip_g", "g")):
        spliced = [t for t, _w in tokens[token_key][0] if not isinstance(t, int)]
        assert len(spliced) == 2 and torch.equal(torch.stack(spliced), trained.vectors[key]), key
    cond, pooled = ours[0][0], ours[0][1]["pooled_output"]
    assert cond.shape == stock[0][0].shape == (1, 77, 64 + 96)
    assert pooled.shape == (1, 96)
    torch.testing.assert_close(cond, stock[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, stock[0][1]["pooled_output"], rtol=1e-5, atol=1e-5)
    # same token layout without the learned vectors: both halves and the pooled output differ
    plain_cond, plain_pooled = plain[0][0], plain[0][1]["pooled_output"]
    assert (cond[..., :64] - plain_cond[..., :64]).abs().max() > 1e-3
    assert (cond[..., 64:] - plain_cond[..., 64:]).abs().max() > 1e-3
    assert (pooled - plain_pooled).abs().max() > 1e-3
    # each encoder's vectors go into their own half; the pooled output comes from clip_g's vectors only
    l_changed, g_changed = only_l[0][0], only_g[0][0]  # only_l: clip_l reset to init, clip_g trained
    assert (l_changed[..., :64] - cond[..., :64]).abs().max() > 1e-3
    torch.testing.assert_close(l_changed[..., 64:], cond[..., 64:], rtol=0, atol=0)
    torch.testing.assert_close(only_l[0][1]["pooled_output"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(g_changed[..., :64], cond[..., :64], rtol=0, atol=0)
    assert (g_changed[..., 64:] - cond[..., 64:]).abs().max() > 1e-3
    assert (only_g[0][1]["pooled_output"] - pooled).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("vectors", "match"),
    [
        ({"clip_l": torch.randn(2, 64)}, r"SDXL CLIP needs clip_l 64 and clip_g 96; the embedding has only clip_l .*clip_g is missing"),
        ({"clip_g": torch.randn(2, 96)}, r"SDXL CLIP needs clip_l 64 and clip_g 96; the embedding has only clip_g .*clip_l is missing"),
        ({"clip_l": torch.randn(2, 64), "clip_g": torch.randn(2, 80)}, r"clip_g is 80 wide"),
    ],
)
def test_single_encoder_embedding_is_refused_with_a_clear_error(core, pack, sdxl, vectors, match):
    import nodes

    emb = core.embeddings.embedding.CrossInitEmbedding(vectors=vectors)
    encoder = nodes.NODE_CLASS_MAPPINGS["CrossInitCLIPTextEncode"]
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError, match=match):
        encoder.execute(sdxl.clip, emb, "a photo of <face> person", "<face>")
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError, match=match):
        core.training.trainer.train(sdxl.model, sdxl.clip, sdxl.vae, face_images(), emb, settings(core))


def test_single_encoder_file_is_refused_by_the_load_node_path(core, sdxl, tmp_path):
    from safetensors.torch import save_file

    save_file({"clip_l": torch.randn(2, 768)}, str(tmp_path / "sd1_face.safetensors"))
    emb = core.embeddings.embedding_io.load_embedding(tmp_path / "sd1_face.safetensors")
    slots = [core.common.families.EncoderSlot("clip_l", "l", 768), core.common.families.EncoderSlot("clip_g", "g", 1280)]
    with pytest.raises(core.common.errors.InvalidInputError) as info:
        core.embeddings.embedding.check_matches_slots(emb, slots)
    message = str(info.value)
    assert "this SDXL CLIP needs clip_l 768 and clip_g 1280; the embedding has only clip_l" in message
    assert "SD 1.x" in message  # says what the file was made for


def test_trainer_resolution_auto_is_1024_for_sdxl(core, pack, tiny, sdxl, monkeypatch):
    import nodes

    trainer = nodes.NODE_CLASS_MAPPINGS["CrossInitTrainer"]
    (resolution,) = [i for i in trainer.GET_SCHEMA().inputs if i.id == "resolution"]
    assert resolution.default == core.common.settings.AUTO_RESOLUTION == 0
    assert core.common.settings.auto_resolution(0, sdxl=True) == 1024 and core.common.settings.auto_resolution(0, sdxl=False) == 512
    assert core.common.settings.auto_resolution(768, sdxl=True) == 768
    # what the node passes on: the trainer is stopped before any work, with the resolution it chose
    seen = {}

    def stop(model, clip, vae, images, embedding, chosen, *args, **kwargs):
        seen["resolution"] = chosen.resolution
        raise RuntimeError("stop")

    monkeypatch.setattr(core.training.trainer, "train", stop)
    for models, expected in ((sdxl, 1024), (tiny("sd1"), 512)):
        emb = init_embedding(core, models.clip)
        with pytest.raises(RuntimeError, match="stop"):
            trainer.execute(models.model, models.clip, models.vae, face_images(), emb, "fast", 1, 1, 0.01, 0, resolution=0)
        assert seen.pop("resolution") == expected
