"""Scenario 5: faults at step k of a training (exception in the UNet or CLIP forward, Cancel, NaN, out of
memory). After each: the host MODEL/CLIP/VAE are bit-identical and hold the same tensor objects, no hook,
forward override, patch, weight wrapper or monkeypatched function is left behind, no requires_grad leaked,
CLIP layer options (clip skip) and torch's grad/inference state are restored, the caller's embedding is
untouched, and the error is clear.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers import face_images, init_embedding, settings
from reliability_state import assert_unchanged, snapshot, torch_state

FAULT_STEP = 2  # 1-based: the k-th forward call of the hooked block is step k of the loop
STEPS = 4


class KthCall:
    """A forward pre-hook (or forward hook) on a real host module that acts on its k-th call only."""

    def __init__(self, module: torch.nn.Module, k: int, action, post: bool = False) -> None:
        self.calls, self.k, self.action = 0, k, action
        register = module.register_forward_hook if post else module.register_forward_pre_hook
        self.handle = register(self._post if post else self._pre)

    def _pre(self, module, args):
        self.calls += 1
        if self.calls == self.k:
            self.action()

    def _post(self, module, args, output):
        self.calls += 1
        return output * float("nan") if self.calls == self.k else output

    def remove(self) -> None:
        self.handle.remove()


def _raise(exc: BaseException):
    def act() -> None:
        raise exc
    return act


def _cancel() -> None:
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)


def _unet_block(m):
    return m.model.model.diffusion_model.middle_block[0]  # a ResBlock, called by the UNet on every forward


def _clip_layer(m):
    return m.clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0]


def _oom() -> BaseException:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


FAULTS = {
    # name: (module to hook, action, post-hook?, expected exception type name, message regex)
    "unet_exception": (_unet_block, lambda: _raise(RuntimeError("injected UNet failure")), False, "RuntimeError", "injected UNet failure"),
    "clip_exception": (_clip_layer, lambda: _raise(RuntimeError("injected CLIP failure")), False, "RuntimeError", "injected CLIP failure"),
    "cancel": (_unet_block, lambda: _cancel, False, "InterruptProcessingException", ""),
    "nan_loss": (_unet_block, None, True, "TrainingDivergedError", rf"step {FAULT_STEP}/{STEPS}.*NaN"),
    "out_of_memory": (_unet_block, lambda: _raise(_oom()), False, "OutOfMemoryError", "out of memory"),
}


def _train_with_fault(core, m, emb, fault: str, clip=None):
    target, make_action, post, _exc, _msg = FAULTS[fault]
    hook = KthCall(target(m), FAULT_STEP, make_action() if make_action else None, post=post)
    done: list[int] = []
    try:
        with torch.inference_mode():
            inside = torch_state()
            with pytest.raises(BaseException) as info:
                core.training.trainer.train(m.model, clip or m.clip, m.vae, face_images(1), emb, settings(core, steps=STEPS, batch_size=1),
                                    on_step=lambda s, t, loss: done.append(s))
            assert torch_state() == inside, "grad/inference mode or saved-tensor hooks not restored after the fault"
    finally:
        hook.remove()
        import comfy.model_management as mm

        mm.interrupt_current_processing(False)
    return info.value, done, hook.calls


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_at_step_k_leaves_the_host_exactly_as_it_was(core, tiny, fault):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    emb_before = {k: v.clone() for k, v in emb.vectors.items()}
    before = snapshot(m)
    exc, done, calls = _train_with_fault(core, m, emb, fault)
    _target, _action, _post, exc_type, message = FAULTS[fault]
    assert type(exc).__name__ == exc_type or (fault == "out_of_memory" and isinstance(exc, core.common.errors.CrossInitError)), repr(exc)
    if fault != "out_of_memory":
        assert re.search(message, str(exc)), str(exc)
    # the fault hit step k: no step after it ran (Cancel pressed during step k stops at most after step k)
    allowed = [list(range(1, FAULT_STEP))] + ([list(range(1, FAULT_STEP + 1))] if fault == "cancel" else [])
    assert done in allowed, done
    assert calls == FAULT_STEP, calls
    assert_unchanged(before, m)
    assert all(torch.equal(emb.vectors[k], v) and not emb.vectors[k].requires_grad for k, v in emb_before.items())


def test_fault_with_clip_skip_restores_the_clip_layer_options(core, tiny):
    """clip skip (-2) makes training switch the shared encoder to a hidden layer; a fault must switch it back."""
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    skipped = m.clip.clone()
    skipped.clip_layer(-2)
    before = snapshot(m)
    encoder = m.clip.cond_stage_model.clip_l
    options = (encoder.layer, encoder.layer_idx)
    exc, _done, _calls = _train_with_fault(core, m, emb, "unet_exception", clip=skipped)
    assert "injected UNet failure" in str(exc)
    assert (encoder.layer, encoder.layer_idx) == options
    assert skipped.layer_idx == -2 and m.clip.layer_idx is None
    assert_unchanged(before, m)


def test_out_of_memory_becomes_a_clear_error_that_suggests_the_memory_option(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    exc, _done, _calls = _train_with_fault(core, m, emb, "out_of_memory")
    assert isinstance(exc, core.common.errors.CrossInitError), repr(exc)
    message = str(exc)
    assert f"step {FAULT_STEP}" in message and "out of GPU memory" in message
    assert "memory" in message.split("out of GPU memory", 1)[1] and "VRAM" in message
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)  # the message stands alone


@pytest.mark.parametrize("call", [1, 2])
def test_fault_inside_checkpointed_micro_batches_removes_every_instance_forward(core, tiny, call):
    """With UNet checkpointing and micro-batches the trainer sets instance `forward`s on UNet blocks and runs
    several forwards per step; a fault in the first or the second micro-batch must still remove them all."""
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    before = snapshot(m)
    memory = core.training.memory.MemorySettings(micro_batch=1, checkpointing=True)
    hook = KthCall(_unet_block(m), call, _raise(RuntimeError("injected micro-batch failure")))
    try:
        with torch.inference_mode(), pytest.raises(RuntimeError, match="injected micro-batch failure"):
            core.training.trainer.train(m.model, m.clip, m.vae, face_images(2), emb, settings(core, steps=2, batch_size=2), memory=memory)
    finally:
        hook.remove()
    assert_unchanged(before, m)
