"""Guards for newer ComfyUI hosts, exercised on the pinned host's real classes.

Newer ComfyUI streams weights ("dynamic VRAM") and marks such patchers with `is_dynamic()`; their
`get_non_dynamic_delegate()` / `clip.clone(disable_dynamic=True)` give ordinary copies. The pinned host
has no such patchers, so these tests add exactly those two methods to its real ModelPatcher/CLIP.
"""

from __future__ import annotations

import pytest
import torch
from test_training import face_images, init_embedding, settings


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
        run = core.training.prepare_run(streaming, m.clip, m.vae, face_images(), emb, settings(core))
        static = core.training.train(m.model, m.clip, m.vae, face_images(), emb, settings(core)).embedding
        via_delegate = core.training.train(streaming, m.clip, m.vae, face_images(), emb, settings(core)).embedding
    assert run.model is m.model
    assert torch.equal(static.vectors["clip_l"], via_delegate.vectors["clip_l"])


def test_streaming_model_without_a_static_copy_is_a_clear_error(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    streaming = dynamic_patcher(m.model, RuntimeError("no model factory registered"))
    with torch.inference_mode(), pytest.raises(core.errors.UnsupportedModelError, match="--disable-dynamic-vram"):
        core.training.train(streaming, m.clip, m.vae, face_images(), emb, settings(core))


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
    model, static_clip = core.host_adapter.static_models(m.model, clip)
    assert calls == [True] and static_clip is not clip and model is m.model


def test_clip_options_are_restored_including_newer_keys(core, tiny):
    m = tiny("sd1")
    encoder = m.clip.cond_stage_model.clip_l
    encoder.execution_device = "sentinel"  # what a newer host keeps on the encoder
    try:
        with torch.inference_mode():
            core.training.train(m.model, m.clip, m.vae, face_images(), init_embedding(core, m.clip), settings(core, steps=1))
        assert encoder.execution_device == "sentinel"
    finally:
        del encoder.execution_device
