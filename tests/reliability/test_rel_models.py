"""Scenario 1: wrong models. Non-SD text encoders built with ComfyUI's own classes (SD3 T5-only, Flux
CLIP-L + T5, Mochi T5-only, an SD1 CLIP whose clip_l slot holds a T5), embeddings of the wrong width, and
MODEL/CLIP pairs whose context widths differ: each refused with a clear message before any work (no model
load, no VAE encode, no text encode, no progress).
"""

from __future__ import annotations

import pytest
import torch
from helpers import face_images, init_embedding
from reliability_state import SpyVAE, node

T5_TINY = {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 1}
CLIP_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": 64}


def _build(target, options):
    import comfy.sd
    import tiny_models

    with torch.inference_mode():
        clip = comfy.sd.CLIP(target=target, model_options=options)
        tiny_models._init_weights(clip.cond_stage_model, 5)
    return clip


def _foreign_clip(kind: str):
    import comfy.sd1_clip
    import comfy.supported_models_base as smb
    from comfy.text_encoders import flux, genmo, sd3_clip

    if kind == "sd3_t5_only":  # CLIPLoader type "sd3" with a lone t5xxl file
        return _build(smb.ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip(clip_l=False, clip_g=False, t5=True)),
                      {"t5xxl_model_config": T5_TINY})
    if kind == "flux":
        options = {"t5xxl_model_config": T5_TINY, "clip_l_model_config": CLIP_TINY}
        return _build(smb.ClipTarget(flux.FluxTokenizer, flux.flux_clip()), options)
    if kind == "mochi_t5_only":  # an SD1ClipModel subclass whose only encoder is a T5
        return _build(smb.ClipTarget(genmo.MochiT5Tokenizer, genmo.mochi_te()), {"t5xxl_model_config": T5_TINY})
    if kind == "sd1_slot_holding_t5":  # the host's own `clip_l_class` model option puts a T5 in SD1ClipModel's slot
        return _build(smb.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel),
                      {"clip_l_class": sd3_clip.T5XXLModel, "t5xxl_model_config": T5_TINY})
    raise ValueError(kind)


FOREIGN = ["sd3_t5_only", "flux", "mochi_t5_only", "sd1_slot_holding_t5"]


@pytest.fixture(scope="module")
def foreign_clip():
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = _foreign_clip(kind)
        return cache[kind]

    return get


@pytest.fixture
def no_work(monkeypatch):
    """Records model loads, text encodes and progress updates; tests assert none happened."""
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils

    seen: dict[str, int] = {"load_models_gpu": 0, "encode_from_tokens": 0, "progress": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            seen[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(mm, "load_models_gpu", counting("load_models_gpu", mm.load_models_gpu))
    monkeypatch.setattr(comfy.sd.CLIP, "encode_from_tokens", counting("encode_from_tokens", comfy.sd.CLIP.encode_from_tokens))
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: seen.__setitem__("progress", seen["progress"] + 1))
    yield seen
    comfy.utils.set_progress_bar_global_hook(previous)


def _reset(seen: dict[str, int]) -> None:
    seen.update(dict.fromkeys(seen, 0))


def _assert_unsupported(exc: BaseException) -> None:
    message = str(exc)
    assert "unsupported model" in message and "supported:" in message, message
    assert "SD 1.x" in message and "SD 2.x" in message


@pytest.mark.parametrize("kind", FOREIGN)
def test_non_sd_text_encoder_is_refused_by_every_node_before_any_work(core, tiny, foreign_clip, no_work, kind):
    clip = foreign_clip(kind)
    sd1 = tiny("sd1")
    emb = init_embedding(core, sd1.clip)
    vae = SpyVAE()
    _reset(no_work)
    calls = {
        "init": lambda: node("CrossInitEmbeddingInit").execute(clip=clip, num_tokens=2, names="Tom Hanks\nCher"),
        "train": lambda: node("CrossInitTrainer").execute(sd1.model, clip, vae, face_images(1), emb, "custom", 2, 1, 0.01, 0,
                                                          resolution=64),
        "encode": lambda: node("CrossInitCLIPTextEncode").execute(clip=clip, embedding=emb, text="a photo of <face>"),
    }
    for what, call in calls.items():
        with torch.inference_mode(), pytest.raises(core.common.errors.UnsupportedModelError) as info:
            call()
        _assert_unsupported(info.value)
        assert no_work == {"load_models_gpu": 0, "encode_from_tokens": 0, "progress": 0}, (what, no_work)
    assert vae.calls == 0


@pytest.mark.parametrize("kind", ["sd3_t5_only", "flux"])
def test_non_sd_text_encoder_error_names_the_encoder_class(core, tiny, foreign_clip, kind):
    """Host-level check too: the error names the encoder class, so the user sees which loader was wrong."""
    with pytest.raises(core.common.errors.UnsupportedModelError) as info:
        core.host.encoder_slots(foreign_clip(kind))
    _assert_unsupported(info.value)
    assert type(foreign_clip(kind).cond_stage_model).__qualname__ in str(info.value)


def _wide_sd2_clip():
    import comfy.supported_models_base as smb
    from comfy.text_encoders import sd2_clip

    config = dict(CLIP_TINY, hidden_size=96, projection_dim=96, hidden_act="gelu")
    return _build(smb.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel), {"clip_h_model_config": config})


def test_sd1_unet_with_sd2_clip_of_another_width_is_refused_before_any_work(core, tiny, no_work):
    sd1 = tiny("sd1")  # UNet context_dim 64
    clip = _wide_sd2_clip()  # clip_h 96 wide, like SD2's 1024 against SD1's 768
    with torch.inference_mode():
        emb = core.method.initialization.cross_initialize(clip, 2, ["Tom Hanks", "Cher"])
    vae = SpyVAE()
    _reset(no_work)
    with torch.inference_mode(), pytest.raises(core.common.errors.UnsupportedModelError) as info:
        node("CrossInitTrainer").execute(sd1.model, clip, vae, face_images(1), emb, "custom", 2, 1, 0.01, 0, resolution=64)
    message = str(info.value)
    assert message.startswith("model/clip") and "64" in message and "96" in message and "same checkpoint" in message
    assert vae.calls == 0 and no_work == {"load_models_gpu": 0, "encode_from_tokens": 0, "progress": 0}


@pytest.mark.parametrize(("family", "widths", "needle"), [
    ("sd1", {"clip_l": 768}, "clip_l is 768 wide, not 64"),        # a real SD1 file on this (64-wide) CLIP
    ("sd1", {"clip_h": 1024}, "made for SD 2.x"),                  # an SD2 file on an SD1 CLIP
    ("sd2", {"clip_l": 768}, "made for SD 1.x"),                   # an SD1 file on an SD2 CLIP
])
def test_embedding_of_the_wrong_width_is_an_error_at_encode_never_ignored(core, tiny, no_work, family, widths, needle):
    """Stock ComfyUI prints a warning and drops a mismatched embedding; this node must refuse instead."""
    clip = tiny(family).clip
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={k: torch.randn(2, w) for k, w in widths.items()})
    _reset(no_work)
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError) as info:
        node("CrossInitCLIPTextEncode").execute(clip=clip, embedding=emb, text="a photo of <face> person")
    assert str(info.value).startswith("embedding:") and needle in str(info.value), str(info.value)
    assert no_work["encode_from_tokens"] == 0


def test_embedding_of_the_wrong_width_is_refused_by_the_trainer_before_any_work(core, tiny, no_work):
    sd2 = tiny("sd2")
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_h": torch.randn(2, 1024)})
    vae = SpyVAE()
    _reset(no_work)
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError, match=r"^embedding:.*clip_h is 1024 wide, not 64"):
        node("CrossInitTrainer").execute(sd2.model, sd2.clip, vae, face_images(1), emb, "custom", 2, 1, 0.01, 0, resolution=64)
    assert vae.calls == 0 and no_work == {"load_models_gpu": 0, "encode_from_tokens": 0, "progress": 0}
