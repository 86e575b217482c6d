"""Guards for newer ComfyUI hosts, exercised on the pinned host's real classes.

Newer ComfyUI streams weights ("dynamic VRAM") and marks such patchers with `is_dynamic()`; their
`get_non_dynamic_delegate()` / `clip.clone(disable_dynamic=True)` give ordinary copies. The pinned host
has no such patchers, so these tests add exactly those two methods to its real ModelPatcher/CLIP.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_fingerprint, face_images, host_fingerprint, init_embedding, settings


def dynamic_patcher(patcher, delegate):
    """The host's ModelPatcher, marked dynamic, whose non-dynamic delegate is `delegate` (or an exception)."""
    clone = patcher.clone()

    def get_non_dynamic_delegate():
        if isinstance(delegate, Exception):
            raise delegate
        return delegate

    clone.is_dynamic = lambda: True
    clone.get_non_dynamic_delegate = get_non_dynamic_delegate
    return clone


def test_training_uses_the_static_copy_of_a_streaming_model(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    streaming = dynamic_patcher(m.model, m.model)
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(streaming, m.clip, m.vae, face_images(), emb, settings(core))
        static = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core)).embedding
        via_delegate = core.training.trainer.train(streaming, m.clip, m.vae, face_images(), emb, settings(core)).embedding
    assert run.model is m.model
    assert torch.equal(static.vectors["clip_l"], via_delegate.vectors["clip_l"])


def test_streaming_model_without_a_static_copy_is_a_clear_error(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    streaming = dynamic_patcher(m.model, RuntimeError("no model factory registered"))
    with torch.inference_mode(), pytest.raises(core.common.errors.UnsupportedModelError, match="--disable-dynamic-vram"):
        core.training.trainer.train(streaming, m.clip, m.vae, face_images(), emb, settings(core))


def test_streaming_clip_is_cloned_without_streaming(core, tiny):
    m = tiny("sd2")
    clip = m.clip.clone()
    calls = []
    clip.patcher.is_dynamic = lambda: True
    original_clone = clip.clone

    def clone(disable_dynamic=False):
        calls.append(disable_dynamic)
        return original_clone()

    clip.clone = clone
    model, static_clip = core.host.static_models(m.model, clip)
    assert calls == [True] and static_clip is not clip and model is m.model


def test_clip_options_are_restored_including_newer_keys(core, tiny):
    m = tiny("sd1")
    encoder = m.clip.cond_stage_model.clip_l
    emb = init_embedding(core, m.clip)  # the host's own encode (0.33 leaves execution_device set itself)
    encoder.execution_device = "sentinel"  # what a newer host keeps on the encoder
    try:
        with torch.inference_mode():
            core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core, steps=1))
        assert encoder.execution_device == "sentinel"
    finally:
        del encoder.execution_device


# ---------------------------------------------------------------------------------------------
# Dynamic VRAM on the newest host's real classes


def _force_dynamic(patcher, reload):
    """Turns a host ModelPatcher into the host's own ModelPatcherDynamic, reloading through `reload`.

    ModelPatcherDynamic refuses CPU load devices (it hands back a plain ModelPatcher), so the class is set
    on the instance; everything else — is_dynamic(), get_non_dynamic_delegate(), clone(disable_dynamic=True)
    and the reload through `cached_patcher_init`, as the host's checkpoint loader registers it — is the
    host's own code.
    """
    import comfy.model_patcher

    patcher.__class__ = comfy.model_patcher.ModelPatcherDynamic
    patcher.non_dynamic_delegate_model = None
    patcher.cached_patcher_init = reload
    return patcher


def _fresh_tiny(kind):
    import tiny_models

    return tiny_models.build(kind)


def test_dynamic_vram_trains_the_modules_the_host_reloads_and_leaves_the_host_unchanged(core, tiny):
    import comfy.model_patcher

    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("this ComfyUI has no dynamic VRAM (ModelPatcherDynamic appeared after 0.3.75)")

    def reload_all(*_args, disable_dynamic=False):
        m = _fresh_tiny("sd1")  # the same seeded weights, as a reload from the checkpoint file gives
        return (m.model, m.clip, m.vae)

    def reload_clip(*_args, disable_dynamic=False):
        return _fresh_tiny("sd1").clip.patcher

    m = _fresh_tiny("sd1")
    reference = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = host_fingerprint(m)
    classes = (type(m.model), type(m.clip.patcher))
    _force_dynamic(m.model, (reload_all, (), 0))
    _force_dynamic(m.clip.patcher, (reload_clip, ()))
    assert m.model.is_dynamic() and m.clip.patcher.is_dynamic()
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(m.model, m.clip, m.vae, face_images(), emb, settings(core))
        trained = core.training.trainer.train(m.model, m.clip, m.vae, face_images(), emb, settings(core)).embedding
        expected = core.training.trainer.train(reference.model, reference.clip, reference.vae, face_images(), emb, settings(core)).embedding

    # trained on non-streaming patchers around the reloaded modules, never on the streaming originals
    assert not run.model.is_dynamic() and not run.clip.patcher.is_dynamic()
    assert run.model.model is not m.model.model
    assert run.clip.cond_stage_model is run.clip.patcher.model
    assert run.clip.cond_stage_model is not m.clip.cond_stage_model
    # same weights as a static host, so the same result; the streaming host objects are untouched
    assert torch.equal(trained.vectors["clip_l"], expected.vectors["clip_l"])
    assert not torch.equal(trained.vectors["clip_l"], emb.vectors["clip_l"])
    assert m.model.is_dynamic() and m.clip.patcher.is_dynamic()
    m.model.__class__, m.clip.patcher.__class__ = classes  # the fingerprint runs them as a CPU host does
    assert_same_fingerprint(before, host_fingerprint(m))
