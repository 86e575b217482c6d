"""Memory options leave the math unchanged: micro-batches, UNet checkpointing, out-of-place CLIP, lazy syncs."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_host_unchanged, face_images, host_fingerprint, init_embedding, one_draw_step_loss

REL = 1e-5


def _cfg(core, **kw):
    base = {"steps": 4, "batch_size": 4, "learning_rate": 0.05, "resolution": 64, "seed": 3}
    base.update(kw)
    return core.common.settings.TrainingSettings(**base)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _train(core, m, emb, memory, masks=None, loss=None, **kw):
    with torch.inference_mode():
        return core.training.trainer.train(m.model, m.clip, m.vae, face_images(3), emb, _cfg(core, **kw), loss, masks=masks, memory=memory)


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_micro_batches_and_checkpointing_give_the_same_trajectory_and_vectors(core, tiny, kind):
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    mem = core.training.memory.MemorySettings
    plain = _train(core, m, emb, mem(budget_gb=0))
    assert plain.memory_plan.micro_batch == 4 and not plain.memory_plan.checkpointing
    variants = {
        "micro 1": mem(micro_batch=1),
        "micro 3 (uneven chunks 3+1)": mem(micro_batch=3),
        "checkpointing": mem(checkpointing=True),
        "micro 1 + checkpointing": mem(micro_batch=1, checkpointing=True),
    }
    for name, memory in variants.items():
        out = _train(core, m, emb, memory)
        assert out.memory_plan.micro_batch == (memory.micro_batch or 4) and out.memory_plan.checkpointing == bool(memory.checkpointing)
        assert len(out.losses) == len(plain.losses) == 4
        for a, b in zip(out.losses, plain.losses, strict=True):
            assert abs(a - b) <= REL * abs(b), (name, out.losses, plain.losses)
        for a, b in zip(out.regs, plain.regs, strict=True):
            assert abs(a - b) <= REL * abs(b) + 1e-9, (name, out.regs, plain.regs)
        for key, vec in plain.embedding.vectors.items():
            moved = _rel(vec, emb.vectors[key])
            assert moved > 1e-3, f"{name}: training moved the vectors by only {moved}"
            err = _rel(out.embedding.vectors[key], vec)
            assert err <= REL, (name, key, err)
    assert_host_unchanged(before, m)


def test_micro_batches_keep_the_masked_loss_exact(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    masks = torch.zeros(3, 64, 64)
    masks[0, 8:40, 8:56] = 1
    masks[1, 20:64, 0:30] = 1  # faces of different area: chunk shares are not chunk sizes
    masks[2, 0:16, 0:16] = 1
    loss = core.common.settings.LossSettings(background_weight=0.1)
    plain = _train(core, m, emb, core.training.memory.MemorySettings(budget_gb=0), masks=masks, loss=loss)
    micro = _train(core, m, emb, core.training.memory.MemorySettings(micro_batch=1), masks=masks, loss=loss)
    for a, b in zip(micro.losses, plain.losses, strict=True):
        assert abs(a - b) <= REL * abs(b), (micro.losses, plain.losses)
    assert _rel(micro.embedding.vectors["clip_l"], plain.embedding.vectors["clip_l"]) <= REL


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_chunk_gradients_sum_to_the_full_batch_gradient(core, tiny, kind):
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    with one_draw_step_loss(core, m, emb, _cfg(core, batch_size=5)) as (step_loss, draw):
        full = {k: torch.nn.Parameter(v.clone()) for k, v in emb.vectors.items()}
        whole = step_loss.diffusion(full, draw)
        whole.backward()
        parts = {k: torch.nn.Parameter(v.clone()) for k, v in emb.vectors.items()}
        summed = 0.0
        for first in range(0, 5, 2):  # chunks of 2, 2, 1
            part = step_loss.diffusion(parts, draw, slice(first, first + 2))
            part.backward()
            summed += float(part.detach())
    assert abs(summed - float(whole.detach())) <= REL * float(whole.detach())
    for key in full:
        assert _rel(parts[key].grad, full[key].grad) <= REL, key


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_out_of_place_clip_gives_the_clone_every_saved_tensor_gradient(core, tiny, kind):
    """The reference fix (clone every saved tensor around the host's in-place CLIP) gives the same gradient."""
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    with one_draw_step_loss(core, m, emb, _cfg(core, batch_size=3)) as (step_loss, draw):
        ours = {k: torch.nn.Parameter(v.clone()) for k, v in emb.vectors.items()}
        step_loss(ours, draw)[0].backward()
        layers = [mod for _k, enc in core.host.inner_encoders(m.clip) for mod in enc.transformer.modules()
                  if "forward" in mod.__dict__]
        assert layers, "the session patches the CLIP layers"
        saved = [mod.__dict__.pop("forward") for mod in layers]  # back to the host's in-place forward
        try:
            reference = {k: torch.nn.Parameter(v.clone()) for k, v in emb.vectors.items()}
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                step_loss(reference, draw)[0].backward()
        finally:
            for mod, fwd in zip(layers, saved, strict=True):
                mod.forward = fwd
    for key in ours:
        torch.testing.assert_close(ours[key].grad, reference[key].grad, rtol=1e-6, atol=1e-9)
    # outside the session the host's classes are in charge again
    assert not [mod for _k, enc in core.host.inner_encoders(m.clip) for mod in enc.transformer.modules()
                if "forward" in mod.__dict__]
    assert not [mod for mod in m.model.model.diffusion_model.modules() if "forward" in mod.__dict__]


def _saved_bytes(fn) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad or t.grad_fn is not None:  # activations, not the frozen weights
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def test_checkpointing_wraps_every_unet_block_layer_and_saves_less(core, tiny):
    m = tiny("sd1")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([1.0, 5.0])
    with torch.inference_mode(), core.host.training_session(m.model, m.clip):
        cond = torch.randn(2, 77, 64, requires_grad=True)

        def forward():
            return core.host.denoised(m.model, x, sigma, cond)

        plain_bytes = _saved_bytes(forward)
        plain_out = forward()
        with core.host.unet_checkpointing(m.model) as layers:
            ckpt_bytes = _saved_bytes(forward)
            ckpt_out = forward()
            ckpt_out.square().mean().backward()
            ckpt_grad = cond.grad.clone()
        cond.grad = None
        plain_out.square().mean().backward()
    unet = m.model.model.diffusion_model
    expected = sum(len(list(seq.children())) for seq in [*unet.input_blocks, unet.middle_block, *unet.output_blocks])
    assert layers == expected > 0
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert torch.equal(ckpt_out, plain_out)
    torch.testing.assert_close(ckpt_grad, cond.grad, rtol=1e-6, atol=1e-9)
    assert not [mod for mod in unet.modules() if "forward" in mod.__dict__]


def test_reading_the_loss_back_lazily_changes_nothing(core, tiny):
    m = tiny("sd2")
    emb = init_embedding(core, m.clip)
    seen = []
    with torch.inference_mode():
        lazy = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, _cfg(core, steps=10, batch_size=2))
        eager = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, _cfg(core, steps=10, batch_size=2),
                                    on_step=lambda s, t, loss: seen.append((s, loss)))
    assert lazy.losses == eager.losses and len(lazy.losses) == 10
    assert seen == list(enumerate(eager.losses, start=1))
    assert torch.equal(lazy.embedding.vectors["clip_h"], eager.embedding.vectors["clip_h"])


def test_memory_plan_picks_micro_batches_then_checkpointing(core):
    plan = core.training.memory.plan_memory
    gib = 2**30
    assert plan(8, None, 3 * gib, gib).micro_batch == 8
    p = plan(8, 7 * gib, 3 * gib, gib)
    assert (p.micro_batch, p.checkpointing) == (2, False)
    p = plan(8, 2 * gib, 3 * gib, gib // 2)
    assert (p.micro_batch, p.checkpointing) == (4, True)
    p = plan(8, 100 * gib, 3 * gib, gib)
    assert (p.micro_batch, p.checkpointing) == (8, False)
    p = plan(8, 100 * gib, 3 * gib, gib, core.training.memory.MemorySettings(micro_batch=3))
    assert (p.micro_batch, p.checkpointing) == (3, False)


@pytest.mark.parametrize("text,budget", [("auto", None), ("", None), ("8", 8.0), ("12.5 GB", 12.5), ("none", 0.0)])
def test_memory_input_parses(core, text, budget):
    assert core.training.memory.parse_memory(text).budget_gb == budget


@pytest.mark.parametrize("text", ["lots", "-4", "nan", "0.0.1"])
def test_bad_memory_input_names_the_input(core, text):
    with pytest.raises(core.common.errors.InvalidInputError, match="memory"):
        core.training.memory.parse_memory(text)


def test_unknown_clip_layer_falls_back_to_cloning_with_the_same_result(core, tiny, monkeypatch):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    known = _train(core, m, emb, None, steps=2, batch_size=2)
    monkeypatch.setattr(core.host.encoding, "_clip_layer_is_known", lambda layer: False)
    fallback = _train(core, m, emb, None, steps=2, batch_size=2)
    for a, b in zip(fallback.losses, known.losses, strict=True):
        assert abs(a - b) <= REL * abs(b)
    assert _rel(fallback.embedding.vectors["clip_l"], known.embedding.vectors["clip_l"]) <= REL
    assert_host_unchanged(before, m)


def test_activation_estimate_uses_each_familys_measured_constants(core, tiny):
    host, mem = core.host, core.training.memory
    for kind, family in (("sd1", "sd"), ("sdxl", "sdxl")):
        m = tiny(kind)
        element = host.compute_dtype_size(m.model) * m.model.model.model_config.unet_config["model_channels"] / 320
        for checkpointed, key in ((False, "plain"), (True, "checkpointed")):
            linear, quadratic = mem.ACTIVATION_ELEMENTS[family][key]
            pixels = 64 * 64
            want = int((linear * pixels + quadratic * pixels**2) * element)
            assert mem.activation_bytes_per_sample(m.model, (64, 64), checkpointed=checkpointed) == want
    # the measured SDXL UNet keeps more per latent pixel than SD 1.5 at 512 px (deep transformers)
    sd = mem.ACTIVATION_ELEMENTS["sd"]["plain"]
    xl = mem.ACTIVATION_ELEMENTS["sdxl"]["plain"]
    assert xl[0] + xl[1] * 4096 > 0.8 * (sd[0] + sd[1] * 4096)


def test_peak_vram_is_cuda_max_allocated_from_the_start_of_the_run(core, monkeypatch):
    """DevicePeak on a CUDA device (imitated here: torch's CUDA memory statistics recorded) resets CUDA's peak
    statistics for that device when the run starts and reads max allocated at its end; elsewhere it reports None."""
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: calls.append(("max", device)) or 3 * 2**30 + 2**19)
    peak = core.training.memory.DevicePeak(torch.device("cuda", 0)).start()
    assert calls == [("reset", torch.device("cuda", 0))]
    assert peak.mib() == 3072.5 and calls[-1] == ("max", torch.device("cuda", 0))
    for device in ("cpu", torch.device("mps")):
        calls.clear()
        assert core.training.memory.DevicePeak(device).start().mib() is None and calls == []


def test_the_peak_reaches_the_file_metadata_the_log_and_the_runner_summary(core, tiny, monkeypatch, caplog):
    """On CUDA the trainer writes the run's peak into the metadata (`peak_vram_mib`) and its summary log line,
    and the batch runner's table shows it; without a GPU neither has the key or the number."""
    import importlib
    import logging

    from safetensors.torch import save

    jobs = importlib.import_module(f"{core.__name__}.client.train.jobs")
    files = importlib.import_module(f"{core.__name__}.client.train.files")

    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    plain = core.training.trainer.train(m.model, m.clip, m.vae, face_images(1, 64), emb, _cfg(core, steps=1, batch_size=1))
    assert plain.peak_vram_mib is None and "peak_vram_mib" not in plain.embedding.metadata

    class CudaPeak(core.training.memory.DevicePeak):  # what a CUDA device reports, on this CPU
        def mib(self) -> float:
            return 6543.4

    monkeypatch.setattr(core.training.trainer, "DevicePeak", CudaPeak)
    with caplog.at_level(logging.INFO, logger=core.training.trainer.log.name):
        result = core.training.trainer.train(m.model, m.clip, m.vae, face_images(1, 64), emb,
                                     _cfg(core, steps=1, batch_size=1))
    assert result.peak_vram_mib == 6543.4 and result.embedding.metadata["peak_vram_mib"] == "6543"
    assert any("peak VRAM 6543 MiB" in r.getMessage() for r in caplog.records)
    tensors, metadata = core.embeddings.embedding_io.to_file_dict(result.embedding)
    read_back = files.file_metadata(save(tensors, metadata=metadata))  # what the runner reads from a downloaded file
    assert read_back["peak_vram_mib"] == "6543"
    job = jobs.Job(name="me", images=[], source="--images", status="ok", peak_vram_mib=int(read_back["peak_vram_mib"]))
    table = jobs.format_summary([job])
    assert "final loss  VRAM MiB  server" in table.splitlines()[0] and table.splitlines()[2].split()[5] == "6543"
    assert jobs.summary_rows([job])[0]["peak_vram_mib"] == 6543
