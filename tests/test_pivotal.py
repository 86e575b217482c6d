"""Pivotal tuning on tiny host models: the LoRA stage, its files, and loading bundled files (ours and others')."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import assert_same_fingerprint, face_images, host_weights, init_embedding, one_draw_step_loss, settings

KINDS = ["sd1", "sd2", "sd2_eps", "sdxl"]  # sd2: 768-v, sd2_eps: the 512 px base


def lora_settings(core, **kw):
    base = {"rank": 4, "alpha": 4.0, "learning_rate": 1e-2, "steps": 3, "batch_size": 2, "resolution": 64, "seed": 0}
    base.update(kw)
    return core.lora.settings.LoraSettings(**base)


def train(core, m, emb, **kw):
    passed = ("save_every", "fault_hook", "on_step", "masks", "loss_settings", "preview", "preview_every", "memory")
    extra = {k: kw.pop(k) for k in passed if k in kw}
    with torch.inference_mode():  # as ComfyUI runs nodes
        return core.lora.stage.train_lora(m.model, m.clip, m.vae, face_images(), emb, lora_settings(core, **kw), **extra)


def host_fingerprint(core, m) -> dict:
    """helpers.host_fingerprint for every family (SDXL's UNet also takes the ADM vector): the host's UNet and CLIP
    outputs on fixed inputs, and every weight object with its requires_grad."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    with torch.inference_mode():
        cond, pooled = m.clip.encode_from_tokens(m.clip.tokenize("a photo of a person"), return_pooled=True)
        extra = {"y": core.host.sdxl_adm(m.model, pooled, 64, 64)} if core.host.is_sdxl_model(m.model) else {}
        out = {"unet": m.model.model.apply_model(x, torch.tensor([3.0]), c_crossattn=cond, **extra).clone(),
               "clip": cond.clone()}
    out.update(host_weights(m))
    return out


def assert_host_unchanged(core, before: dict, m) -> None:
    assert_same_fingerprint(before, host_fingerprint(core, m))


def unet_output(core, m, patcher) -> torch.Tensor:
    """The UNet's output with `patcher` loaded as ComfyUI loads it for sampling (its LoRA patches merged in); the
    host's weights are put back afterwards (unload), as ComfyUI does when another model is loaded."""
    import comfy.model_management as mm

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    with torch.inference_mode():
        cond, pooled = m.clip.encode_from_tokens(m.clip.tokenize("a photo of a person"), return_pooled=True)
        extra = {"y": core.host.sdxl_adm(m.model, pooled, 64, 64)} if core.host.is_sdxl_model(m.model) else {}
        try:
            mm.load_models_gpu([patcher], force_full_load=True)
            return patcher.model.apply_model(x, torch.tensor([2.0]), c_crossattn=cond, **extra).clone()
        finally:
            mm.unload_all_models()


def assert_host_values_unchanged(core, before: dict, m) -> None:
    """After sampling with a patched clone: ComfyUI's own unpatching puts each original weight back in a new Parameter
    object, so here the host's outputs and every weight's values are compared, not the objects."""
    after = host_fingerprint(core, m)
    for key, value in before.items():
        if key.startswith("w."):
            assert torch.equal(after[key], value), key
        elif not key.startswith("rg."):
            assert torch.equal(after[key], value), key


def hooks_left(core, m) -> int:
    unet = m.model.model.diffusion_model
    return sum(len(unet.get_submodule(t.module_path)._forward_hooks) for t in core.host.lora_targets(m.model))


@pytest.fixture
def loras_dir(pack):
    from pathlib import Path

    import folder_paths

    folder = Path(folder_paths.get_folder_paths("loras")[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------------------------------------
# The layers and the gradient


@pytest.mark.parametrize("kind", KINDS)
def test_targets_are_every_attention_projection_under_the_hosts_own_kohya_names(core, tiny, kind):
    import comfy.lora

    m = tiny(kind)
    targets = core.host.lora_targets(m.model)
    attention = [name for name, mod in m.model.model.diffusion_model.named_modules() if type(mod).__name__ == "CrossAttention"]
    assert len(attention) == 14 and len(targets) == 4 * len(attention) == 56  # 7 transformer blocks x attn1 + attn2
    key_map = comfy.lora.model_lora_keys_unet(m.model.model, {})
    for target in targets:
        assert key_map[target.name] == f"diffusion_model.{target.module_path}.weight"
        assert target.module_path.rsplit(".", 2)[-2:][0] in {"attn1", "attn2", "to_out"}
    assert {t.name.rsplit("_attn", 1)[1] for t in targets} == {"1_to_q", "1_to_k", "1_to_v", "1_to_out_0",
                                                               "2_to_q", "2_to_k", "2_to_v", "2_to_out_0"}


def test_lora_gradient_matches_finite_differences_and_never_reaches_host_weights(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    targets = core.host.lora_targets(m.model)
    down, up = core.lora.weights.initial_weights(targets, 2, seed=3)
    gen = torch.Generator().manual_seed(4)
    up = {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in up.items()}  # both matrices get gradients
    with one_draw_step_loss(core, m, emb, settings(core, batch_size=2)) as (step_loss, draw):
        params = {**{f"d{k}": torch.nn.Parameter(v.clone()) for k, v in down.items()},
                  **{f"u{k}": torch.nn.Parameter(v.clone()) for k, v in up.items()}}
        downs = {k: params[f"d{k}"] for k in down}
        ups = {k: params[f"u{k}"] for k in up}
        with core.host.lora_layers(m.model, targets, downs, ups, 0.5) as count:
            assert count == 56
            loss = step_loss.diffusion(emb.vectors, draw)
            loss.backward()
            grads = {k: p.grad.clone() for k, p in params.items()}
            norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
            eps = 0.02
            with torch.no_grad():
                for k, p in params.items():
                    p.add_(eps * grads[k] / norm)
                plus = float(step_loss.diffusion(emb.vectors, draw))
                for k, p in params.items():
                    p.sub_(2 * eps * grads[k] / norm)
                minus = float(step_loss.diffusion(emb.vectors, draw))
        host_params = list(m.model.model.parameters()) + list(m.clip.cond_stage_model.parameters())
        assert all(p.grad is None for p in host_params)
    assert hooks_left(core, m) == 0
    assert all(float(g.abs().max()) > 0 for g in grads.values())  # every module's down and up gets a gradient
    analytic, numeric = float(norm), (plus - minus) / (2 * eps)
    assert analytic > 1e-5
    assert abs(numeric - analytic) <= 0.02 * analytic, (numeric, analytic)


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class Run:
    """One LoRA run on a family's tiny models (4 steps, checkpoints at 2 and 4), shared by the tests that read it."""

    emb: object
    before: dict  # the host fingerprint before the run
    after: dict  # ... right after it
    result: object
    storage_before: dict[str, int]  # the UNet weights' memory before the run
    storage_during: dict[str, int]  # ... inside the training session
    hooks_during: int


@pytest.fixture(scope="module")
def trained(core, tiny):
    cache: dict[str, Run] = {}

    def get(kind: str) -> Run:
        if kind not in cache:
            m = tiny(kind)
            emb = init_embedding(core, m.clip)
            before = host_fingerprint(core, m)
            storage = {n: p.untyped_storage().data_ptr() for n, p in m.model.model.diffusion_model.named_parameters()}
            seen: dict[str, int] = {}

            def during(step: int) -> None:
                if step == 1:  # inside the session
                    seen.update({n: p.untyped_storage().data_ptr() for n, p in m.model.model.diffusion_model.named_parameters()})
                    seen["hooks"] = hooks_left(core, m)

            result = train(core, m, emb, steps=4, save_every=2, fault_hook=during)
            hooks = seen.pop("hooks")
            cache[kind] = Run(emb, before, host_fingerprint(core, m), result, storage, seen, hooks)
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_stage_trains_the_lora_only_and_leaves_the_host_bit_identical(core, tiny, trained, kind):
    m, run = tiny(kind), trained(kind)
    assert run.hooks_during == 56 and hooks_left(core, m) == 0
    assert run.storage_during == run.storage_before  # the session trains on the host's own weight memory: no copies
    assert_same_fingerprint(run.before, run.after)  # outputs, weight objects and flags as they were
    result = run.result
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.embedding is run.emb  # the token stays at its pivot
    lora = result.lora
    assert len(lora) == 3 * 56 and [c.metadata["steps"] for c in result.checkpoints] == ["2", "4"]
    assert result.checkpoints[-1] is lora
    ups = [v for k, v in lora.items() if k.endswith("lora_up.weight")]
    assert min(float(u.abs().max()) for u in ups) > 1e-4  # every module moved from its zero start
    assert {float(v) for k, v in lora.items() if k.endswith(".alpha")} == {4.0}
    assert lora.metadata["steps"] == "4" and lora.metadata["method"] == "cross_init_pivotal"
    assert lora.metadata["base_model"] == {"sd1": "sd1-eps", "sd2": "sd2-v", "sd2_eps": "sd2-eps", "sdxl": "sdxl-eps"}[kind]
    # the patched model is the host's own loader's clone; sampling with it leaves the host's values as they were
    assert result.model is not m.model and len(result.model.patches) == 56
    assert not torch.equal(unet_output(core, m, result.model), unet_output(core, m, m.model))
    assert_host_values_unchanged(core, run.before, m)


def test_each_sd2_prediction_is_recorded_for_lora_browsers(core, trained):
    """kohya's ss_base_model_version / ss_v_parameterization follow the host model's prediction (eps or v)."""
    for kind, base, version in (("sd2", "sd2-v", "sd_v2_768_v"), ("sd2_eps", "sd2-eps", "sd_v2")):
        lora = trained(kind).result.lora
        meta = core.lora.files.ss_metadata(lora, "face")
        assert lora.metadata["base_model"] == base, kind
        assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_v_parameterization"]) == (version, "True", str(kind == "sd2"))


def test_first_step_loss_equals_the_token_trainers_on_the_same_draw(core, tiny, trained):
    """The LoRA starts as the identity edit (up = 0), so step 1's loss is the trainer's diffusion MSE exactly."""
    m, run = tiny("sd2"), trained("sd2")
    with torch.inference_mode():
        token = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), run.emb, settings(core, steps=1))
    assert run.result.losses[0] == pytest.approx(token.losses[0], rel=1e-5)
    assert run.result.losses[0] > 0


def test_token_learning_rate_trains_the_token_toward_its_cross_init_start(core, tiny, trained):
    m, frozen = tiny("sd1"), trained("sd1")
    emb = frozen.emb
    result = train(core, m, emb, token_learning_rate=1e-2)
    assert frozen.result.regs == [0.0] * 4 and frozen.result.embedding is emb
    moved = float((result.embedding.vectors["clip_l"] - emb.vectors["clip_l"]).norm())
    assert moved > 1e-3
    assert result.regs[0] == 0.0 and result.regs[-1] > 0  # distance from the start, after the token moved
    assert torch.equal(result.embedding.init_vectors["clip_l"], emb.vectors["clip_l"])  # the start is kept
    assert result.embedding.metadata["method"] == "cross_init_pivotal"
    assert "optimizer_state" not in result.embedding.metadata
    assert result.lora.embedding is result.embedding
    assert emb.vectors["clip_l"].equal(init_embedding(core, m.clip).vectors["clip_l"])  # the input is not changed


def test_face_masks_weight_the_loss_as_in_the_trainer(core, tiny, trained):
    m, run = tiny("sd1"), trained("sd1")
    masks = torch.zeros(2, 64, 64)
    masks[:, 16:48, 16:48] = 1.0
    face_only = core.common.settings.LossSettings(background_weight=0.0)
    masked = train(core, m, run.emb, steps=1, masks=masks, loss_settings=face_only)
    with torch.inference_mode():
        token = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), run.emb, settings(core, steps=1), face_only,
                                    masks=masks)
    assert masked.losses[0] == pytest.approx(token.losses[0], rel=1e-5)  # the trainer's masked objective exactly
    assert abs(masked.losses[0] - run.result.losses[0]) > 1e-4  # and not the unmasked one
    steps: list[int] = []
    with pytest.raises(core.common.errors.InvalidInputError, match="masks: 3 masks for 2 images"):
        train(core, m, run.emb, masks=torch.ones(3, 64, 64), loss_settings=face_only, fault_hook=steps.append)
    assert steps == []


def test_checkpoints_equal_a_shorter_run_also_in_micro_batches_with_checkpointing(core, tiny, trained):
    m, run = tiny("sd1"), trained("sd1")
    plan = core.training.memory.MemorySettings(micro_batch=1, checkpointing=True)  # the memory plan changes only round-off
    short = train(core, m, run.emb, steps=2, memory=plan)
    assert (short.memory_plan.micro_batch, short.memory_plan.checkpointing) == (1, True)
    first = run.result.checkpoints[0]
    assert first.keys() == short.lora.keys() and first.metadata["steps"] == "2"
    # Adam normalises each gradient, so float round-off of the regrouped sums can move a near-zero one by a step's
    # size: compare the runs' difference with what the two steps moved the LoRA, over all its tensors
    down, _up = core.lora.weights.initial_weights(core.host.lora_targets(m.model), 4, seed=0)
    start = core.lora.weights.to_state_dict(down, _up, 4.0)
    moved = torch.sqrt(sum(((first[k] - start[k]) ** 2).sum() for k in first))
    apart = torch.sqrt(sum(((first[k] - short.lora[k]) ** 2).sum() for k in first))
    assert float(moved) > 0.1 and float(apart) < 1e-3 * float(moved), (float(apart), float(moved))
    torch.testing.assert_close(torch.tensor(short.losses), torch.tensor(run.result.losses[:2]), rtol=1e-5, atol=0)


def test_an_error_mid_run_leaves_the_host_bit_identical_and_no_hook_behind(core, tiny):
    m = tiny("sdxl")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(core, m)

    def fail(step: int) -> None:
        if step == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(core, m, emb, fault_hook=fail)
    assert hooks_left(core, m) == 0
    assert_host_unchanged(core, before, m)


def test_cancel_stops_within_one_step_and_leaves_the_host_bit_identical(core, tiny):
    import comfy.model_management as mm

    m = tiny("sd2")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(core, m)
    done: list[int] = []

    def press_cancel(step: int) -> None:
        if step == 1:
            mm.interrupt_current_processing(True)

    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(core, m, emb, steps=10, fault_hook=press_cancel, on_step=lambda s, _t, _l: done.append(s))
    finally:
        mm.interrupt_current_processing(False)
    assert done in ([1], [1, 2])  # the step that saw Cancel is the last one at most (the host may stop it inside)
    assert hooks_left(core, m) == 0
    assert_host_unchanged(core, before, m)


def test_previews_sample_with_the_lora_so_far_and_leave_the_host_bit_identical(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(core, m)
    render = core.lora.stage.progress_preview(m.model, m.clip, m.vae, face_images(), 64, 0, steps=1)
    shown: dict[int, object] = {}

    def keep(step, token, targets, down, up, scale):
        assert token is emb and scale == 1.0 and hooks_left(core, m) == 0  # the session is closed while sampling
        shown[step] = (render(step, token, targets, down, up, scale), {k: v.clone() for k, v in up.items()})
        return shown[step][0]

    result = train(core, m, emb, steps=4, preview=keep, preview_every=2)
    assert sorted(shown) == [2, 4]
    (kind, image, size), ups = shown[4]
    assert (kind, size) == ("JPEG", 512) and image.size == (512, 256)  # the face beside the sample
    assert all(torch.equal(ups[k], result.lora[k + ".lora_up.weight"]) for k in ups)  # the LoRA at that step
    # the same preview without the LoRA differs: the sample went through the LoRA's layers
    plain = core.training.preview.progress_preview(m.model, m.clip, m.vae, face_images(), 64, 0, steps=1)(4, emb)[1]
    assert image.tobytes() != plain.tobytes()
    assert hooks_left(core, m) == 0
    assert_host_unchanged(core, before, m)


def test_fp16_unet_uses_loss_scaling_and_an_overflowing_step_leaves_the_lora_as_it_was(core, tiny, monkeypatch):
    import tiny_models

    base = tiny("sd1")
    with torch.inference_mode():
        m = tiny_models.TinyModels(tiny_models.build_model("sd1", dtype=torch.float16), base.clip, base.vae, "sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(core, m)
    real_mse = core.method.loss.diffusion_mse
    calls = {"n": 0}

    def overflow_at_second_step(*args, **kwargs):
        calls["n"] += 1  # 1e30 is finite in float32 (the loss) but its gradient overflows the fp16 backward
        value = real_mse(*args, **kwargs)
        return value * 1e30 if calls["n"] == 2 else value

    monkeypatch.setattr(core.method.loss, "diffusion_mse", overflow_at_second_step)
    result = train(core, m, emb, save_every=1)
    assert result.skipped_steps == [1] and len(result.losses) == 2
    first, second, final = result.checkpoints
    assert all(torch.equal(first[k], second[k]) for k in first)  # the skipped step did not move the LoRA
    assert any(not torch.equal(second[k], final[k]) for k in final)  # the next one did
    assert final.metadata["fp16_skipped_steps"] == "1" and final.metadata["unet_dtype"] == "float16"
    assert all(v.dtype == torch.float32 for v in final.values())  # float32 LoRA whatever the UNet computes in
    assert_host_unchanged(core, before, m)


@pytest.mark.parametrize(("change", "message"), [
    ({"rank": 0}, "rank: got 0; use 1..128"),
    ({"rank": 129}, "rank: got 129"),
    ({"alpha": 0.0}, "alpha: got 0.0"),
    ({"learning_rate": 0.0}, "learning_rate: got 0.0"),
    ({"token_learning_rate": -1.0}, "token_learning_rate: got -1.0; use 0"),
    ({"resolution": 100}, "resolution: got 100"),
])
def test_bad_settings_are_refused_before_any_step(core, tiny, change, message):
    m = tiny("sd1")
    steps: list[int] = []
    with pytest.raises(core.common.errors.InvalidInputError, match=message.replace(".", r"\.")):
        train(core, m, init_embedding(core, m.clip), fault_hook=steps.append, **change)
    assert steps == []


def test_presets_keep_the_users_seed_resolution_and_token_rate_and_custom_is_checked(core):
    lora_settings_mod = core.lora.settings
    custom = lora_settings_mod.LoraSettings(rank=8, seed=7, resolution=768, token_learning_rate=1e-4)
    full = lora_settings_mod.resolve("full", custom)
    fast = lora_settings_mod.resolve("fast", custom)
    assert (full.rank, full.alpha, full.learning_rate, full.steps, full.batch_size) == (32, 16.0, 1e-4, 1000, 4)
    assert (fast.rank, fast.alpha, fast.learning_rate, fast.steps, fast.batch_size) == (16, 16.0, 1e-4, 300, 4)
    assert (full.seed, full.resolution, full.token_learning_rate) == (7, 768, 1e-4) and full.scale == 0.5
    # the update budget steps x lr x alpha/rank that docs/pivotal.md justifies the presets by
    assert fast.steps * fast.learning_rate * fast.scale == pytest.approx(0.6 * full.steps * full.learning_rate * full.scale)
    assert lora_settings_mod.resolve("custom", custom) == custom
    with pytest.raises(core.common.errors.InvalidInputError, match="mode: got 'turbo'"):
        lora_settings_mod.resolve("turbo", custom)
    with pytest.raises(core.common.errors.InvalidInputError, match="rank: got 0"):
        lora_settings_mod.resolve("custom", lora_settings_mod.LoraSettings(rank=0))


def test_save_node_needs_a_token_to_bundle(core, trained, loras_dir):
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["CrossInitSaveLora"]
    plain = dict(trained("sd1").result.lora)  # a LORA_MODEL from elsewhere (e.g. core Train LoRA): no token with it
    with pytest.raises(core.common.errors.InvalidInputError, match=r"carries no token .* connect the embedding to bundle, or turn "
                                                            r"bundle_token off"):
        node.execute(lora=[plain], name=["tokenless"], overwrite=[True])
    assert not (loras_dir / "tokenless.safetensors").exists()
    node.execute(lora=[plain], name=["tokenless"], overwrite=[True], embedding=[trained("sd1").emb])
    tensors, metadata = _read(loras_dir / "tokenless.safetensors")
    assert "bundle_emb.tokenless.string_to_param.*" in tensors and metadata["ss_network_dim"] == "4"


def test_an_embedding_of_another_clip_is_refused_with_the_family_message(core, tiny):
    m = tiny("sd1")
    sdxl_token = init_embedding(core, tiny("sdxl").clip)
    steps: list[int] = []
    with pytest.raises(core.common.errors.InvalidInputError, match=r"this SD 1\.x CLIP needs clip_l 64.*made for SDXL"):
        train(core, m, sdxl_token, fault_hook=steps.append)
    assert steps == []


# ---------------------------------------------------------------------------------------------
# Files


def _read(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_saved_file_loads_in_the_stock_lora_loader_exactly_as_the_stage_model(core, tiny, trained, kind, loras_dir,
                                                                             embeddings_dir):
    from comfy_extras.nodes_train import LoraModelLoader

    import nodes

    m, run = tiny(kind), trained(kind)
    emb, before, result = run.emb, run.before, run.result
    name = f"pivotal_{kind}"
    for folder in (loras_dir, embeddings_dir):
        (folder / f"{name}.safetensors").unlink(missing_ok=True)
    node = nodes.NODE_CLASS_MAPPINGS["CrossInitSaveLora"]
    node.execute(lora=[result.lora], name=[name], overwrite=[False])
    tensors, metadata = _read(loras_dir / f"{name}.safetensors")
    lora_keys = {k for k in tensors if k.startswith("lora_unet_")}
    assert lora_keys == set(result.lora) and len(lora_keys) == 3 * 56
    bundle = {k: v for k, v in tensors.items() if k.startswith("bundle_emb.")}
    if kind == "sdxl":  # A1111's SDXL branch (OneTrainer's form)
        assert set(bundle) == {f"bundle_emb.{name}.clip_l", f"bundle_emb.{name}.clip_g"}
        assert torch.equal(bundle[f"bundle_emb.{name}.clip_g"], emb.vectors["clip_g"])
    else:  # A1111's .pt form
        assert set(bundle) == {f"bundle_emb.{name}.string_to_param.*"}
        assert torch.equal(bundle[f"bundle_emb.{name}.string_to_param.*"], emb.vectors["clip_l"])
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4"
    assert metadata["ss_base_model_version"] == {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}[kind]
    assert metadata["ss_steps"] == "4" and metadata["ss_output_name"] == name and metadata["ss_network_module"] == "networks.lora"
    assert metadata["method"] == "cross_init_pivotal" and metadata["cross_init_bundled_token"] == name
    token_file, token_meta = _read(embeddings_dir / f"{name}.safetensors")
    assert token_file.keys() == emb.vectors.keys() and all(torch.equal(token_file[k], emb.vectors[k]) for k in token_file)
    assert token_meta["lora_file"] == f"{name}.safetensors"
    # the stock Load LoRA node patches every module of the file, and its UNet equals the stage's model output
    model_lora, _clip_lora = nodes.LoraLoader().load_lora(m.model, m.clip, f"{name}.safetensors", 1.0, 1.0)
    assert len(model_lora.patches) == 56
    stage_out = unet_output(core, m, result.model)
    assert torch.equal(unet_output(core, m, model_lora), stage_out)
    # ComfyUI's own Load LoRA Model takes the LORA_MODEL output as it is
    (core_model,) = LoraModelLoader.execute(m.model, result.lora, 1.0).result
    assert torch.equal(unet_output(core, m, core_model), stage_out)
    assert_host_values_unchanged(core, before, m)


def test_save_checks_every_name_first_and_writes_a_list_as_steps(core, trained, loras_dir, embeddings_dir):
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["CrossInitSaveLora"]
    result = trained("sd1").result
    (embeddings_dir / "listed_face.safetensors").write_bytes(b"keep me")  # the last name is taken in one folder
    with pytest.raises(core.common.errors.EmbeddingExistsError, match="already exists"):
        node.execute(lora=result.checkpoints, name=["listed_face"], overwrite=[False])
    assert not list(loras_dir.glob("listed_face*")) and (embeddings_dir / "listed_face.safetensors").read_bytes() == b"keep me"
    (embeddings_dir / "listed_face.safetensors").unlink()
    node.execute(lora=result.checkpoints, name=["listed_face"], overwrite=[False])
    assert sorted(p.name for p in loras_dir.glob("listed_face*")) == ["listed_face-step0002.safetensors",
                                                                      "listed_face-step0004.safetensors",
                                                                      "listed_face.safetensors"]
    first, _ = _read(loras_dir / "listed_face-step0002.safetensors")
    assert torch.equal(first[next(iter(result.checkpoints[0]))], next(iter(result.checkpoints[0].values())))
    replaced = (loras_dir / "listed_face.safetensors").read_bytes()
    node.execute(lora=[result.lora], name=["listed_face"], overwrite=[True], bundle_token=[False])
    unbundled, _ = _read(loras_dir / "listed_face.safetensors")
    assert (loras_dir / "listed_face.safetensors").read_bytes() != replaced
    assert all(k.startswith("lora_unet_") for k in unbundled)  # bundle_token off: only LoRA keys (diffusers)
    with pytest.raises(core.common.errors.InvalidInputError, match="plain file name"):
        node.execute(lora=[result.lora], name=["../escape"], overwrite=[False])
    assert node.validate_inputs(name=["bad name"]) .startswith("name 'bad name': it contains spaces")


# ---------------------------------------------------------------------------------------------
# Loading bundled files


def _write(path, tensors, metadata=None):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def test_load_node_applies_our_file_and_returns_its_token(core, tiny, trained, loras_dir):
    import nodes

    m, run = tiny("sdxl"), trained("sdxl")
    emb, result = run.emb, run.result
    (loras_dir / "ours_sdxl.safetensors").unlink(missing_ok=True)
    nodes.NODE_CLASS_MAPPINGS["CrossInitSaveLora"].execute(lora=[result.lora], name=["ours_sdxl"], overwrite=[True])
    load = nodes.NODE_CLASS_MAPPINGS["CrossInitLoadLoraToken"]
    model, clip, token = load.execute(m.model, m.clip, "ours_sdxl.safetensors", 1.0).result
    assert clip is m.clip  # no text-encoder keys: the CLIP is passed through
    assert token.vectors.keys() == emb.vectors.keys() and all(torch.equal(token.vectors[k], emb.vectors[k]) for k in emb.vectors)
    assert torch.equal(unet_output(core, m, model), unet_output(core, m, result.model))
    half, _clip, _token = load.execute(m.model, m.clip, "ours_sdxl.safetensors", 0.5).result
    assert not torch.equal(unet_output(core, m, half), unet_output(core, m, model))


def test_load_node_reads_a1111_and_onetrainer_bundles_and_patches_the_clip(core, tiny, loras_dir):
    import comfy.lora

    import nodes

    load = nodes.NODE_CLASS_MAPPINGS["CrossInitLoadLoraToken"]
    m1 = tiny("sd1")
    targets = core.host.lora_targets(m1.model)[:4]
    down, up = core.lora.weights.initial_weights(targets, 2, seed=1)
    lora = core.lora.weights.to_state_dict(down, {k: v + 0.1 for k, v in up.items()}, 2.0)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # a text-encoder module, as kohya names it
    assert te in comfy.lora.model_lora_keys_clip(m1.clip.cond_stage_model, {})
    lora.update({f"{te}.lora_down.weight": torch.full((2, 64), 0.1), f"{te}.lora_up.weight": torch.full((64, 2), 0.1),
                 f"{te}.alpha": torch.tensor(2.0)})
    a1111 = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    _write(loras_dir / "a1111_style.safetensors", {**lora, "bundle_emb.jdoe.string_to_param.*": a1111})
    model, clip, token = load.execute(m1.model, m1.clip, "a1111_style.safetensors", 1.0).result
    assert torch.equal(token.vectors["clip_l"], a1111) and token.metadata["bundle_name"] == "jdoe"
    assert clip is not m1.clip and len(clip.patcher.patches) == 1 and len(model.patches) == 4
    with torch.inference_mode():
        tokens = m1.clip.tokenize("a photo")
        plain = m1.clip.encode_from_tokens(tokens)
        patched = clip.encode_from_tokens(tokens)
    assert float((patched - plain).abs().max()) > 1e-4
    import comfy.model_management as mm

    mm.unload_all_models()
    # OneTrainer's SDXL form, two tokens: the name picks one
    mx = tiny("sdxl")
    l_vec, g_vec = torch.randn(3, 64), torch.randn(3, 96)
    _write(loras_dir / "onetrainer.safetensors", {**lora, "bundle_emb.alice.clip_l": l_vec, "bundle_emb.alice.clip_g": g_vec,
                                                  "bundle_emb.bob.clip_l": l_vec[:1].clone(), "bundle_emb.bob.clip_g": g_vec[:1].clone()})
    with pytest.raises(core.common.errors.InvalidInputError, match="bundles several tokens \\(alice, bob\\); give the one"):
        load.execute(mx.model, mx.clip, "onetrainer.safetensors", 1.0)
    _model, _clip, alice = load.execute(mx.model, mx.clip, "onetrainer.safetensors", 1.0, token="alice").result
    assert torch.equal(alice.vectors["clip_g"], g_vec) and alice.num_tokens == 3
    # an SDXL bundle for an SD 1.x CLIP: the family message, before anything is applied
    with pytest.raises(core.common.errors.InvalidInputError, match=r"this SD 1\.x CLIP needs clip_l 64.*made for SDXL"):
        load.execute(m1.model, m1.clip, "onetrainer.safetensors", 1.0, token="bob")
    # a single tensor 768 wide for the tiny 64-wide CLIP
    _write(loras_dir / "wide.safetensors", {**lora, "bundle_emb.w.emb_params": torch.zeros(1, 768)})
    with pytest.raises(core.common.errors.InvalidInputError, match="clip_l is 768 wide, not 64"):
        load.execute(m1.model, m1.clip, "wide.safetensors", 1.0)
    # a Flux bundle (clip_l + t5)
    _write(loras_dir / "flux.safetensors", {**lora, "bundle_emb.f.clip_l": torch.zeros(1, 64), "bundle_emb.f.t5": torch.zeros(1, 8)})
    with pytest.raises(core.common.errors.EmbeddingFileError, match="also holds t5"):
        load.execute(m1.model, m1.clip, "flux.safetensors", 1.0)


def test_load_node_refuses_pickles_foreign_layers_and_files_without_a_token(core, tiny, loras_dir, tmp_path):
    import nodes

    load = nodes.NODE_CLASS_MAPPINGS["CrossInitLoadLoraToken"]
    m = tiny("sd1")
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (loras_dir / "evil.pt").write_bytes(pickle.dumps({"x": Payload()}))
    (loras_dir / "evil_renamed.safetensors").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(core.common.errors.EmbeddingFileError, match="pickles, which this node never unpickles"):
        load.execute(m.model, m.clip, "evil.pt", 1.0)
    with pytest.raises(core.common.errors.EmbeddingFileError, match="cannot be read as safetensors"):
        load.execute(m.model, m.clip, "evil_renamed.safetensors", 1.0)
    assert not marker.exists()
    targets = core.host.lora_targets(m.model)
    down, up = core.lora.weights.initial_weights(targets[:2], 2, seed=1)
    lora = core.lora.weights.to_state_dict(down, up, 2.0)
    _write(loras_dir / "no_token.safetensors", lora)
    with pytest.raises(core.common.errors.EmbeddingFileError, match="holds no bundled token"):
        load.execute(m.model, m.clip, "no_token.safetensors", 1.0)
    token = {"bundle_emb.t.string_to_param.*": torch.zeros(1, 64)}
    _write(loras_dir / "other_layout.safetensors", {**lora, "lora_unet_not_a_layer.lora_down.weight": torch.zeros(2, 4),
                                                    "lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 2), **token})
    with pytest.raises(core.common.errors.InvalidInputError, match="match no layer of this model"):
        load.execute(m.model, m.clip, "other_layout.safetensors", 1.0)
    # SDXL's attention (context 160 wide) on the SD 1.x model of the same block layout (context 64)
    mx = tiny("sdxl")
    wide_targets = [t for t in core.host.lora_targets(mx.model) if t.name.endswith("attn2_to_k")][:1]
    down, up = core.lora.weights.initial_weights(wide_targets, 2, seed=1)
    _write(loras_dir / "sdxl_layers.safetensors", {**core.lora.weights.to_state_dict(down, up, 2.0), **token})
    with pytest.raises(core.common.errors.InvalidInputError, match=r"do not fit this model's layers .*file \[32, 160\], layer \[32, 64\]"):
        load.execute(m.model, m.clip, "sdxl_layers.safetensors", 1.0)


# ---------------------------------------------------------------------------------------------
# diffusers reads the file into a UNet of the real SD 1.5 and SDXL block layouts (small widths)

# ComfyUI's own configs of the two layouts (comfy/model_detection.py) at 32 channels, and diffusers' matching UNet
LAYOUTS = {
    "sd15": ({"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
              "use_linear_in_transformer": False, "context_dim": 64},
             {"block_out_channels": (32, 64, 128, 128), "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 64}),
    "sdxl": ({"num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10],
              "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
              "use_linear_in_transformer": True, "context_dim": 160, "num_classes": "sequential",
              "adm_in_channels": 96 + 6 * 256},
             {"block_out_channels": (32, 64, 128), "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
              "up_block_types": ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), "cross_attention_dim": 160,
              "transformer_layers_per_block": (1, 2, 10), "use_linear_projection": True}),
}


def _comfy_layout_model(layout: str):
    import comfy.model_base
    import comfy.supported_models
    import tiny_models

    config, _diffusers = LAYOUTS[layout]
    unet = {"model_channels": 32, "in_channels": 4, "out_channels": 4, "num_heads": 2, "num_head_channels": -1,
            "adm_in_channels": None, "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
            "use_temporal_resblock": False, "image_size": 32, "dtype": torch.float32, **config}
    family = comfy.supported_models.SDXL(unet) if layout == "sdxl" else comfy.supported_models.SD15(unet)
    family.unet_config.update({"num_heads": 2, "num_head_channels": -1})
    family.set_inference_dtype(torch.float32, None)
    cls = comfy.model_base.SDXL if layout == "sdxl" else comfy.model_base.BaseModel
    with torch.inference_mode():
        return tiny_models._patcher(cls(family, model_type=comfy.model_base.ModelType.EPS))


def _diffusers_pipeline(layout: str):
    """A real StableDiffusionPipeline / StableDiffusionXLPipeline of the layout's UNet block structure, every part small
    and random; the tokenizer is the CLIP BPE vocabulary the host ships (comfy/sd1_tokenizer)."""
    import os

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = Path(os.environ["COMFYUI_PATH"]) / "comfy" / "sd1_tokenizer"
    tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"))

    def encoder(width: int, cls=CLIPTextModel):
        return cls(CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=2,
                                  projection_dim=width))

    _comfy, config = LAYOUTS[layout]
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=2, attention_head_dim=2, norm_num_groups=32, **config)
    vae = AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, layers_per_block=1)
    parts = {"vae": vae, "unet": unet, "scheduler": EulerDiscreteScheduler(steps_offset=1), "tokenizer": tokenizer}
    if layout == "sdxl":
        return StableDiffusionXLPipeline(text_encoder=encoder(64), text_encoder_2=encoder(96, CLIPTextModelWithProjection),
                                         tokenizer_2=tokenizer, **parts)
    return StableDiffusionPipeline(text_encoder=encoder(64), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False, **parts)


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_diffusers_load_lora_weights_reads_the_file_into_the_real_block_layout_with_no_key_left_unused(core, layout,
                                                                                                      tmp_path):
    """pipeline.load_lora_weights (diffusers' kohya conversion, then peft's injection) on a file Save LoRA writes with
    bundle_token off: every module of the file becomes a LoRA layer of the UNet holding the file's exact matrices and
    alpha / rank, and no other layer gets one. A bundled file is refused by diffusers as it is (documented)."""
    from peft.tuners.lora import LoraLayer

    model = _comfy_layout_model(layout)
    targets = core.host.lora_targets(model)
    assert len(targets) == {"sd15": 16, "sdxl": 70}[layout] * 8  # transformer blocks x (attn1 + attn2) x 4
    down, up = core.lora.weights.initial_weights(targets, 4, seed=2)
    up = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) for i, (k, v) in enumerate(up.items())}
    lora = core.lora.weights.LoraModel(core.lora.weights.to_state_dict(down, up, 2.0),
                                       {"steps": "1", "base_model": f"{'sdxl' if layout == 'sdxl' else 'sd1'}-eps"})
    keys = ("clip_l", "clip_g") if layout == "sdxl" else ("clip_l",)
    token = core.embeddings.embedding.CrossInitEmbedding(vectors={k: torch.zeros(2, 8) for k in keys})
    core.lora.files.save_pivotal([(lora, token, "plain")], tmp_path, None, bundle=False)
    core.lora.files.save_pivotal([(lora, token, "bundled")], tmp_path, None, bundle=True)

    pipeline = _diffusers_pipeline(layout)
    pipeline.load_lora_weights(str(tmp_path), weight_name="plain.safetensors", adapter_name="face")
    unet = pipeline.unet
    path_of = {"lora_unet_" + name.replace(".", "_"): name for name, _m in unet.named_modules()}
    names = sorted({k.split(".")[0] for k in lora})
    for name in names:
        layer = unet.get_submodule(path_of[name])
        assert isinstance(layer, LoraLayer), name
        assert torch.equal(layer.lora_A["face"].weight, lora[f"{name}.lora_down.weight"]), name
        assert torch.equal(layer.lora_B["face"].weight, lora[f"{name}.lora_up.weight"]), name
        assert layer.scaling["face"] == 0.5, name  # alpha 2 / rank 4
    with_lora = [n for n, m in unet.named_modules() if isinstance(m, LoraLayer)]
    assert len(names) == len(targets) and sorted(with_lora) == sorted(path_of[n] for n in names)
    encoders = [pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)]
    assert not [n for e in encoders if e is not None for n, m in e.named_modules() if isinstance(m, LoraLayer)]
    # diffusers takes a kohya file only when every key is a LoRA key: the bundled file needs its bundle_emb.* dropped
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        pipeline.load_lora_weights(str(tmp_path), weight_name="bundled.safetensors", adapter_name="bundled")


# ---------------------------------------------------------------------------------------------
# The nodes in a graph, as ComfyUI runs them


def test_graph_trains_saves_the_checkpoints_and_feeds_core_save_lora_weights(pack, tiny, loras_dir, embeddings_dir):
    import folder_paths
    import workflow_runner as wr

    wr.install_face_image("pivotal_face.png", 64)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "pivotal_face.png"}},
        "3": {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}},
        "4": {"class_type": "CrossInitPivotalLora", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["3", 0], "mode": "custom",
            "rank": 2, "alpha": 2.0, "learning_rate": 0.01, "steps": 3, "batch_size": 1, "token_learning_rate": 0.0,
            "seed": 0, "resolution": 64, "save_every": 2, "preview_every": 2, "preview_steps": 1}},
        "5": {"class_type": "CrossInitSaveLora", "inputs": {"lora": ["4", 4], "name": "graph_face", "overwrite": False}},
        "7": {"class_type": "SaveLoRA", "inputs": {"lora": ["4", 0], "prefix": "loras/graph_core"}},
    }
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    names = ["graph_face-step0002.safetensors", "graph_face-step0003.safetensors", "graph_face.safetensors"]
    assert sorted(p.name for p in loras_dir.glob("graph_face*")) == names
    assert sorted(p.name for p in embeddings_dir.glob("graph_face*")) == names
    lora = wr.node_output(executor, "4", 0)
    assert len(lora) == 3 * 56 and lora.metadata["lora_rank"] == "2"
    ours, _meta = _read(loras_dir / "graph_face.safetensors")
    assert all(torch.equal(ours[k], v) for k, v in lora.items())
    (core_file,) = Path(folder_paths.get_output_directory(), "loras").glob("graph_core*.safetensors")
    saved, _ = _read(core_file)  # core Save LoRA Weights wrote the same tensors
    assert saved.keys() == lora.keys() and all(torch.equal(saved[k], v) for k, v in lora.items())


def test_a_taken_lora_name_is_refused_at_run_and_no_training_step_runs(pack, core, tiny, loras_dir, embeddings_dir,
                                                                       monkeypatch):
    """Save LoRA refuses a taken name when the graph is queued, naming the file (either folder); ComfyUI still runs
    the graph's other outputs, and the trainer and the LoRA stage above the Save node stop before any step."""
    import execution
    import workflow_runner as wr

    runs = []
    train, train_lora = core.training.trainer.train, core.lora.stage.train_lora
    monkeypatch.setattr(core.training.trainer, "train", lambda *a, **kw: runs.append("token") or train(*a, **kw))
    monkeypatch.setattr(core.lora.stage, "train_lora", lambda *a, **kw: runs.append("lora") or train_lora(*a, **kw))
    wr.install_face_image("pivotal_face.png", 64)
    taken = loras_dir / "clash_face-step0002.safetensors"
    taken.write_bytes(b"keep me")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "pivotal_face.png"}},
        "3": {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}},
        "4": {"class_type": "CrossInitTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["3", 0], "mode": "custom",
            "steps": 2, "batch_size": 1, "learning_rate": 0.02, "seed": 0, "resolution": 64, "preview_every": 0}},
        "5": {"class_type": "CrossInitPivotalLora", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["4", 2], "mode": "custom",
            "rank": 2, "alpha": 2.0, "learning_rate": 0.01, "steps": 2, "batch_size": 1, "token_learning_rate": 0.0,
            "seed": 0, "resolution": 64, "preview_every": 0}},
        "6": {"class_type": "CrossInitSaveLora", "inputs": {"lora": ["5", 0], "name": "clash_face", "overwrite": False}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["5", 3]}},
    }
    save = pack.nodes.pivotal.CrossInitSaveLora
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        ok, _error, outputs, node_errors = wr.validate(prompt)
        assert ok and sorted(outputs) == ["7", "8"] and set(node_errors) == {"6"}  # the rest would run
        message = str(node_errors["6"])
        assert f"{taken} already exists" in message and "Choose another name, or turn on overwrite" in message
        executor = execution.PromptExecutor(wr.ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        executor.execute(prompt, "clash", {"client_id": None}, outputs)
        assert not executor.success and "CrossInitTrainer" in wr.failure(executor)
        assert f"{taken} already exists" in wr.failure(executor)
        assert save.validate_inputs(name="clash_face", overwrite=True) is True  # the fixes
        assert save.validate_inputs(name="clash_face_new", overwrite=False) is True
    assert runs == [] and taken.read_bytes() == b"keep me"
    assert not list(embeddings_dir.glob("clash_face*")) and sorted(p.name for p in loras_dir.glob("clash_face*")) == [taken.name]
    # the embeddings folder counts too (Save LoRA writes the token there), unless save_embedding is off
    taken.unlink()
    (embeddings_dir / "clash_face.safetensors").write_bytes(b"keep me")
    refused = save.validate_inputs(name="clash_face", overwrite=False)
    assert isinstance(refused, str) and f"{embeddings_dir / 'clash_face.safetensors'} already exists" in refused
    assert save.validate_inputs(name="clash_face", overwrite=False, save_embedding=False) is True
    too_long = "n" * (core.common.embedding_names.MAX_NAME_LENGTH - 10)  # fits alone, not as NAME-step200000
    assert "too long for its checkpoint files" in str(save.validate_inputs(name=too_long, overwrite=False))


def test_the_lora_stage_alone_refuses_a_taken_save_name_before_any_step(pack, core, tiny, loras_dir, monkeypatch):
    runs = []
    train_lora = core.lora.stage.train_lora
    monkeypatch.setattr(core.lora.stage, "train_lora", lambda *a, **kw: runs.append("lora") or train_lora(*a, **kw))
    taken = loras_dir / "alone_face.safetensors"
    taken.write_bytes(b"keep me")
    node = pack.nodes.pivotal.CrossInitPivotalLora
    prompt = {"5": {"class_type": "CrossInitPivotalLora", "inputs": {}},
              "6": {"class_type": "CrossInitSaveLora", "inputs": {"lora": ["5", 0], "name": "alone_face", "overwrite": False}}}
    monkeypatch.setattr(node, "hidden", type("Hidden", (), {"prompt": prompt, "unique_id": "5"})(), raising=False)
    m = tiny("sd1")
    with pytest.raises(core.common.errors.EmbeddingExistsError, match=r"alone_face\.safetensors already exists"):
        node.execute(m.model, m.clip, m.vae, face_images(), init_embedding(core, m.clip), "custom", 2, 2.0, 0.01, 2, 1, 0.0, 0)
    assert runs == [] and taken.read_bytes() == b"keep me"


def test_the_lora_stage_refuses_a_dotted_bundle_name_below_it_even_with_overwrite_on(pack, core, tiny, loras_dir,
                                                                                    monkeypatch):
    """A name with '.' cannot be a bundled token's word (readers cut bundle_emb.NAME.* at the first dot): the stage
    above such a Save LoRA stops before any step, whatever overwrite says; with bundle_token off the name is fine."""
    runs = []
    train_lora = core.lora.stage.train_lora
    monkeypatch.setattr(core.lora.stage, "train_lora", lambda *a, **kw: runs.append("lora") or train_lora(*a, **kw))
    node = pack.nodes.pivotal.CrossInitPivotalLora
    m = tiny("sd1")
    args = (m.model, m.clip, m.vae, face_images(), init_embedding(core, m.clip), "custom", 2, 2.0, 0.01, 1, 1, 0.0, 0)

    def run_below(save_inputs: dict) -> None:
        prompt = {"5": {"class_type": "CrossInitPivotalLora", "inputs": {}},
                  "6": {"class_type": "CrossInitSaveLora", "inputs": {"lora": ["5", 0], **save_inputs}}}
        monkeypatch.setattr(node, "hidden", type("Hidden", (), {"prompt": prompt, "unique_id": "5"})(), raising=False)
        with torch.inference_mode():
            node.execute(*args, resolution=64, preview_every=0)

    with pytest.raises(core.common.errors.InvalidInputError,
                       match=r"name 'anna\.smith': a token bundled in a LoRA file cannot have '\.'.*'anna_smith'.*Save LoRA node"):
        run_below({"name": "anna.smith", "overwrite": True})
    with pytest.raises(core.common.errors.InvalidInputError, match=r"token_name 'a\.b'"):
        run_below({"name": "anna", "overwrite": True, "token_name": "a.b"})
    assert runs == []
    run_below({"name": "anna.smith", "overwrite": True, "bundle_token": False})
    run_below({"name": "anna.smith", "overwrite": True, "token_name": "anna_smith"})
    assert runs == ["lora", "lora"] and not list(loras_dir.glob("anna.smith*"))  # nothing saved: no Save LoRA ran


def test_save_refuses_a_dotted_bundle_name_a_token_of_another_family_and_a_list_of_tokens(core, tiny, trained, loras_dir,
                                                                                          embeddings_dir):
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["CrossInitSaveLora"]
    lora = trained("sd1").result.lora
    refused = node.validate_inputs(name=["my.face"], overwrite=[False])
    assert isinstance(refused, str) and "cannot have '.'" in refused and "it would load as 'my'" in refused
    assert "Use e.g. 'my_face'" in refused
    assert node.validate_inputs(name=["my.face"], overwrite=[False], bundle_token=[False]) is True
    assert node.validate_inputs(name=["my.face"], overwrite=[False], token_name=["my_face"]) is True
    assert str(node.validate_inputs(name=["face"], overwrite=[False], token_name=["a.b"])).startswith("token_name 'a.b'")
    with pytest.raises(core.common.errors.InvalidInputError, match=r"name 'my\.face': a token bundled"):
        node.execute(lora=[lora], name=["my.face"], overwrite=[False])
    assert not list(loras_dir.glob("my.face*")) and not list(embeddings_dir.glob("my.face*"))
    node.execute(lora=[lora], name=["my.face"], overwrite=[True], bundle_token=[False])
    tensors, _meta = _read(loras_dir / "my.face.safetensors")
    assert tensors and all(k.startswith("lora_unet_") for k in tensors) and (embeddings_dir / "my.face.safetensors").is_file()

    # a token of another family than the LoRA's (base_model sd1-eps): refused, nothing written
    sdxl_token = init_embedding(core, tiny("sdxl").clip)
    with pytest.raises(core.common.errors.InvalidInputError,
                       match=r"embedding: it is a token for SDXL \(clip_l \[2, 64\], clip_g \[2, 96\]\), but the LoRA was "
                             r"trained on SD 1\.x"):
        node.execute(lora=[lora], name=["mixed_face"], overwrite=[False], embedding=[sdxl_token])
    assert not list(loras_dir.glob("mixed_face*")) and not list(embeddings_dir.glob("mixed_face*"))
    # a list of tokens (a checkpoints output) would pair the wrong token with the LoRA: refused
    token = trained("sd1").emb
    with pytest.raises(core.common.errors.InvalidInputError, match="embedding: got a list of 2 tokens"):
        node.execute(lora=[lora], name=["listed_tokens"], overwrite=[False], embedding=[token, token])
    assert not list(loras_dir.glob("listed_tokens*"))


@pytest.mark.parametrize("node_id", ["CrossInitPivotalLora", "CrossInitTrainer"])
def test_an_empty_image_batch_gets_its_message_with_previews_on(pack, core, tiny, node_id):
    """Previews are on by default (-1): the preview hook must not read the first face before the images are checked."""
    import nodes

    node = nodes.NODE_CLASS_MAPPINGS[node_id]
    m = tiny("sd1")
    empty = torch.zeros(0, 64, 64, 3)
    emb = init_embedding(core, m.clip)
    # custom mode, 1 step of batch 1; the LoRA stage's rank 2, alpha 2 and frozen token
    widgets = (2, 2.0, 0.01, 1, 1, 0.0, 0) if node_id == "CrossInitPivotalLora" else (1, 1, 0.01, 0)
    with pytest.raises(core.common.errors.InvalidInputError, match="images: the batch is empty"), torch.inference_mode():
        node.execute(m.model, m.clip, m.vae, empty, emb, "custom", *widgets)


def test_load_node_reads_onetrainer_sd1_and_sd2_bundles_without_their_output_embedding(core, tiny, loras_dir, caplog):
    """OneTrainer's SD LoRA saver bundles `bundle_emb.NAME.clip_l` for SD 1.x and SD 2.x alike (the SD 2.x vectors are
    the OpenCLIP-H encoder's) and, when trained, the output embedding `clip_l_out`, which ComfyUI's CLIP cannot take."""
    import logging

    import nodes

    load = nodes.NODE_CLASS_MAPPINGS["CrossInitLoadLoraToken"]
    gen = torch.Generator().manual_seed(3)
    for kind, key in (("sd1", "clip_l"), ("sd2", "clip_h")):
        m = tiny(kind)
        down, up = core.lora.weights.initial_weights(core.host.lora_targets(m.model)[:2], 2, seed=1)
        lora = core.lora.weights.to_state_dict(down, up, 2.0)
        vectors, output = torch.randn(2, 64, generator=gen), torch.randn(2, 64, generator=gen)
        _write(loras_dir / f"onetrainer_{kind}.safetensors", {**lora, "bundle_emb.ot.clip_l": vectors,
                                                             "bundle_emb.ot.clip_l_out": output})
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _model, _clip, token = load.execute(m.model, m.clip, f"onetrainer_{kind}.safetensors", 1.0).result
        assert list(token.vectors) == [key] and torch.equal(token.vectors[key], vectors), kind
        assert "clip_l_out (OneTrainer's output embedding) is not used" in caplog.text
        _write(loras_dir / f"onetrainer_{kind}_out.safetensors", {**lora, "bundle_emb.ot.clip_l_out": output})
        with pytest.raises(core.common.errors.EmbeddingFileError, match=r"holds only clip_l_out, OneTrainer's output embedding"):
            load.execute(m.model, m.clip, f"onetrainer_{kind}_out.safetensors", 1.0)
