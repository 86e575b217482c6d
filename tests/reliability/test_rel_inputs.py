"""Scenarios 2 and 3: bad images and bad settings, through the nodes a user wires. Each is refused with a
message that starts with the input's name, before any work (the VAE is a spy that fails if used), or is
handled as documented (non-square photos: centre square crop; values within 1e-3 of [0, 1]: clamped).
"""

from __future__ import annotations

import pytest
import torch
from helpers import face_images, init_embedding
from reliability_state import SpyVAE, node

GOOD = {"mode": "custom", "steps": 2, "batch_size": 1, "learning_rate": 0.01, "seed": 0, "resolution": 64}


def _train_node(core, m, images, emb, **overrides):
    kwargs = dict(GOOD, **overrides)
    vae = SpyVAE()
    with torch.inference_mode():
        try:
            return node("CrossInitTrainer").execute(m.model, m.clip, vae, images, emb, **kwargs)
        finally:
            assert vae.calls == 0, "the VAE ran before the bad input was refused"


# ---------------------------------------------------------------------------------------------
# 2. Images (empty, 1x1, NaN, 255-scale and channel counts: tests/test_training.py::test_bad_images_are_refused_before_any_work)


@pytest.mark.parametrize(("images", "match"), [
    (torch.rand(1, 4, 4096, 3), r"4096x4 pixels, too small"),         # extreme panorama strip
    (torch.rand(1, 4096, 2, 3), r"2x4096 pixels, too small"),         # extreme tall strip
    (torch.full((1, 64, 64, 3), -0.5), r"\[-0\.5, -0\.5\].*\[0, 1\]"),  # negative values
    (torch.full((1, 64, 64, 3), float("inf")), "NaN or infinite"),
    (torch.cat([torch.rand(1, 64, 64, 3), torch.full((1, 64, 64, 3), float("-inf"))]), r"image\(s\) \[1\]"),  # names the bad one
    (torch.rand(64, 64, 3), "expected an IMAGE batch"),               # a single image without batch dimension
    ([[0.5]], "expected an IMAGE batch"),                             # not a tensor at all
    (torch.rand(1, 64, 64, 5), "5 channels"),
])
def test_bad_images_are_refused_by_the_trainer_node_before_any_work(core, tiny, images, match):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    with pytest.raises(core.common.errors.InvalidInputError, match=match) as info:
        _train_node(core, m, images, emb)
    assert str(info.value).startswith("images:")


def test_non_square_extremes_are_centre_cropped_as_documented(core):
    """A 8x4096 strip is the smallest legal extreme: its centre square is used, resized to the resolution."""
    strip = torch.zeros(1, 8, 4096, 3)
    strip[:, :, 2044:2052] = 1.0  # only the centre 8x8 square is white
    out = core.training.run_setup.prepare_pixels(strip, 64)
    assert out.shape == (1, 64, 64, 3)
    assert float(out.min()) > 0.99  # nothing of the black sides leaked in
    tall = torch.rand(2, 4096, 100, 4)
    assert core.training.run_setup.prepare_pixels(tall, 64).shape == (2, 64, 64, 3)


def test_values_a_hair_outside_0_1_are_clamped_not_refused(core):
    images = torch.rand(1, 64, 64, 3)
    images[0, 0, 0] = torch.tensor([1.0005, -0.0005, 0.5])
    out = core.training.run_setup.prepare_pixels(images, 64)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize(("masks", "match"), [
    (torch.ones(3, 64, 64), r"^masks: 3 masks for 2 images"),
    (torch.ones(1, 1, 64, 64, 1), r"^masks: expected a MASK"),
    (torch.full((2, 64, 64), float("nan")), r"^masks: image\(s\) \[0, 1\] contain NaN"),
])
def test_bad_masks_are_refused_naming_the_input(core, masks, match):
    with pytest.raises(core.common.errors.InvalidInputError, match=match):
        core.training.run_setup.prepare_masks(masks, 2, 64, (8, 8), background_weight=0.5)


# ---------------------------------------------------------------------------------------------
# 3. Settings (core-level cases: tests/test_training.py::test_bad_training_settings_name_the_input,
#    tests/test_initialization.py::test_bad_settings_name_the_input)


@pytest.mark.parametrize(("override", "name"), [
    # 0 is not bad: it takes the preset's (in custom, the paper's) value
    ({"steps": -5}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": 10**9}, "steps"),
    ({"batch_size": -1}, "batch_size"), ({"batch_size": 1000}, "batch_size"),
    ({"learning_rate": -0.01}, "learning_rate"),
    ({"learning_rate": float("inf")}, "learning_rate"), ({"learning_rate": 1e6}, "learning_rate"),
    ({"resolution": 100}, "resolution"), ({"resolution": 4096}, "resolution"), ({"mode": "turbo"}, "mode"),
])
def test_bad_trainer_settings_are_refused_naming_the_input(core, tiny, override, name):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    with pytest.raises(core.common.errors.InvalidInputError) as info:
        _train_node(core, m, face_images(1), emb, **override)
    assert str(info.value).startswith(f"{name}:"), str(info.value)
    assert str(next(iter(override.values()))) in str(info.value) or name == "mode"


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"reg_weight": -1e-5}, "reg_weight"), ({"reg_weight": float("nan")}, "reg_weight"),
    ({"reg_weight": float("inf")}, "reg_weight"), ({"reg_weight": 0.0, "background_weight": 1.5}, "background_weight"),
    ({"reg_weight": 0.0, "background_weight": -0.1}, "background_weight"),
])
def test_bad_loss_settings_are_refused_naming_the_input(core, kwargs, name):
    with pytest.raises(core.common.errors.InvalidInputError, match=rf"^{name}:"):
        node("CrossInitLossSettings").execute(**kwargs)


@pytest.mark.parametrize(("kwargs", "name", "needle"), [
    ({"num_tokens": 0}, "num_tokens", "from 1 to 16"),
    ({"num_tokens": -3}, "num_tokens", "from 1 to 16"),
    ({"num_tokens": 17}, "num_tokens", "from 1 to 16"),
    ({"names": "# just a comment\n\n   "}, "names", "blank or a '#' comment"),
    ({"names": "\u200b\n\ufeff\n\u2060"}, "names", "blank or a '#' comment"),  # invisible characters only
    ({"num_tokens": 5, "names": "Cher\nMadonna"}, "num_tokens", "longest name"),
    ({"source": "celebrities"}, "source", "'names' or 'words'"),
])
def test_bad_init_settings_are_refused_naming_the_input(core, tiny, kwargs, name, needle):
    args = {"num_tokens": 2, "names": "Tom Hanks\nMeryl Streep", "source": "names", **kwargs}
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError) as info:
        node("CrossInitEmbeddingInit").execute(clip=tiny("sd1").clip, **args)
    assert str(info.value).startswith(f"{name}:") and needle in str(info.value), str(info.value)


@pytest.mark.parametrize(("text", "placeholder", "name", "needle"), [
    ("a photo of a person", "<face>", "text", "'<face>' does not appear"),
    ("", "<face>", "text", "does not appear"),
    ("a photo of <face>", "<person>", "text", "'<person>' does not appear"),
    ("a photo of <face>", "", "placeholder", "empty"),
    ("a photo of <face>", "   ", "placeholder", "empty"),
])
def test_text_encode_node_refuses_a_missing_placeholder_naming_the_input(core, tiny, text, placeholder, name, needle):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError) as info:
        node("CrossInitCLIPTextEncode").execute(clip=m.clip, embedding=emb, text=text, placeholder=placeholder)
    assert str(info.value).startswith(f"{name}:") and needle in str(info.value), str(info.value)
