"""Cross Initialization against an independent computation of the reference algorithm (name columns, means, encoder pass)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import independent_init

NAMES = ["Tom Hanks", "Meryl Streep", "Cher", "Denzel Washington", "Scarlett Johansson"]
DATA = Path(__file__).resolve().parents[1] / "cross_init_core" / "data"
# tiny host CLIP -> (token key, layer_idx): SD1 conditions on the last layer, SD2 on the penultimate (both + final LN)
CONDITIONING_LAYER = {"sd1": ("l", None), "sd2": ("h", -2)}


def reference_names() -> list[str]:
    """The shipped reference list read as its training script reads it: every line a name, repeats kept."""
    return (DATA / "wiki_names_v2.txt").read_text(encoding="utf-8").splitlines()


def init_node():
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["CrossInitEmbeddingInit"]


def test_reference_list_is_shipped_as_published_and_read_with_its_repeats(core):
    raw = (DATA / "wiki_names_v2.txt").read_text(encoding="utf-8")
    assert raw.count("\n") == 690 and not raw.endswith("\n")  # 690 terminated lines + one without a newline
    names = reference_names()
    assert len(names) == 691 and len(set(names)) == 646
    assert all(name and name == name.strip() and not name.startswith("#") for name in names)
    assert core.method.names.builtin_names() == tuple(names)  # the default list, in order, duplicates kept
    assert core.method.names.names_from_input("") == names
    licence = (DATA / "LICENSE-CrossInitialization.txt").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Copyright (c) 2024 lyuPang" in licence
    notice = (DATA / "README.md").read_text(encoding="utf-8")
    assert all(f"`{f}`" in notice for f in ("wiki_names_v2.txt", "caption_templates.txt", "LICENSE-CrossInitialization.txt"))


def test_pack_list_stays_selectable_and_plain(core):
    names = core.method.names.builtin_names("pack")
    assert len(names) == 1324 and len(set(names)) >= 1300
    assert all(name == name.strip() and "," not in name for name in names)
    assert core.method.names.names_from_input("", "pack") == list(names)
    assert len(set(names) & set(reference_names())) == 165
    with pytest.raises(core.common.errors.InvalidInputError, match="name_list: got 'celebs'; use one of reference, pack"):
        core.method.names.names_from_input("", "celebs")


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_default_node_output_equals_the_reference_computation(core, tiny, kind):
    """With default inputs the node's start vectors are the reference script's: the 691-line list, repeats weighing twice."""
    token_key, layer_idx = CONDITIONING_LAYER[kind]
    clip = tiny(kind).clip
    with torch.inference_mode():
        emb = init_node().execute(clip=clip, num_tokens=2, names="").result[0]
    names = reference_names()
    with torch.inference_mode(False), torch.no_grad():
        expected = independent_init(clip, token_key, names, 2, layer_idx, final_ln=True)
        without_repeats = independent_init(clip, token_key, list(dict.fromkeys(names)), 2, layer_idx, final_ln=True)
    got = emb.vectors[f"clip_{token_key}"]
    assert got.shape == (2, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got - without_repeats).abs().max() > 1e-4  # the check can tell a de-duplicated list apart
    assert emb.metadata["init_names"] == "reference" and emb.metadata["init_count"] == "691"
    assert emb.metadata["init_source"] == "names"


def test_pack_list_and_typed_names_through_the_node(core, tiny):
    clip = tiny("sd1").clip
    pack_names = [line.strip() for line in (DATA / "celebrity_names.txt").read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    with torch.inference_mode():
        from_pack = init_node().execute(clip=clip, num_tokens=2, names="", name_list="pack").result[0]
        typed = init_node().execute(clip=clip, num_tokens=2, names="Tom Hanks\nCher\nTom Hanks", name_list="pack").result[0]
    with torch.inference_mode(False), torch.no_grad():
        expected_pack = independent_init(clip, "l", pack_names, 2, None, final_ln=True)
        expected_typed = independent_init(clip, "l", ["Tom Hanks", "Cher", "Tom Hanks"], 2, None, final_ln=True)
    torch.testing.assert_close(from_pack.vectors["clip_l"], expected_pack, rtol=0, atol=1e-5)
    torch.testing.assert_close(typed.vectors["clip_l"], expected_typed, rtol=0, atol=1e-5)  # typed names win over name_list
    assert from_pack.metadata["init_names"] == "pack" and from_pack.metadata["init_count"] == "1324"
    assert typed.metadata["init_names"] == "typed" and typed.metadata["init_count"] == "3"


def test_api_prompt_saved_before_name_list_existed_still_runs(core, tiny, embeddings_dir):
    import workflow_runner as wr

    m = tiny("sd2")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "old.safetensors"}},
        "2": {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}},
        "3": {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["2", 0], "name": "old_prompt_face", "overwrite": True}},
    }
    with wr.tiny_checkpoint_loader(m, ["old.safetensors"]):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    from safetensors import safe_open

    with safe_open(str(embeddings_dir / "old_prompt_face.safetensors"), framework="pt") as f:
        saved, metadata = f.get_tensor("clip_h"), f.metadata()
    with torch.inference_mode(False), torch.no_grad():
        expected = independent_init(m.clip, "h", reference_names(), 2, -2, final_ln=True)
    torch.testing.assert_close(saved, expected, rtol=0, atol=1e-5)
    assert metadata["init_names"] == "reference" and metadata["init_count"] == "691"


@pytest.mark.parametrize("kind,token_key,layer_idx", [("sd1", "l", None), ("sd2", "h", -2)])
def test_initial_vectors_match_independent_computation(core, tiny, kind, token_key, layer_idx):
    clip = tiny(kind).clip
    with torch.inference_mode():
        emb = core.method.initialization.cross_initialize(clip, 2, NAMES)
    with torch.inference_mode(False), torch.no_grad():
        expected = independent_init(clip, token_key, NAMES, 2, layer_idx, final_ln=True)
    got = emb.vectors[f"clip_{token_key}"]
    assert got.shape == (2, 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(emb.init_vectors[f"clip_{token_key}"], got)


def test_clip_skip_is_respected(core, tiny):
    clip = tiny("sd1").clip.clone()
    clip.clip_layer(-2)
    with torch.inference_mode():
        skipped = core.method.initialization.cross_initialize(clip, 2, NAMES).vectors["clip_l"]
        last = core.method.initialization.cross_initialize(tiny("sd1").clip, 2, NAMES).vectors["clip_l"]
    with torch.inference_mode(False), torch.no_grad():
        expected = independent_init(clip, "l", NAMES, 2, -2, final_ln=True)
    torch.testing.assert_close(skipped, expected, rtol=1e-5, atol=1e-5)
    assert (skipped - last).abs().max() > 1e-3


def test_column_means_follow_bpe_pieces(core):
    table = torch.arange(30.0).view(10, 3)
    means = core.method.initialization.column_means([[1, 2], [3], [5, 7, 9]], table, 2)
    torch.testing.assert_close(means[0], (table[1] + table[3] + table[5]) / 3)
    torch.testing.assert_close(means[1], (table[2] + table[7]) / 2)


def test_words_source_uses_the_phrase_tokens(core, tiny):
    clip = tiny("sd1").clip
    with torch.inference_mode():
        words = core.method.initialization.cross_initialize(clip, 2, ["woman"], source="words").vectors["clip_l"]
    with torch.inference_mode(False), torch.no_grad():
        expected = independent_init(clip, "l", ["woman woman"], 2, None, final_ln=True)
    torch.testing.assert_close(words, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "num_tokens,names,source,match",
    [
        (0, NAMES, "names", "num_tokens"),
        (17, NAMES, "names", "num_tokens"),
        (2, [], "names", "names"),
        (3, ["Cher"], "names", "num_tokens"),
        (2, NAMES, "celebs", "source"),
        (2, ["   "], "words", "words give no tokens"),
    ],
)
def test_bad_settings_name_the_input(core, tiny, num_tokens, names, source, match):
    with torch.inference_mode(), pytest.raises(core.common.errors.InvalidInputError, match=match):
        core.method.initialization.cross_initialize(tiny("sd1").clip, num_tokens, names, source=source)


def test_names_input_parsing(core):
    assert core.method.names.names_from_input("# c\nTom Hanks\n\n Cher \n") == ["Tom Hanks", "Cher"]
    assert core.method.names.names_from_input("  \n") == list(core.method.names.builtin_names("reference"))
    assert core.method.names.names_from_input("Cher\nCher", "pack") == ["Cher", "Cher"]
    with pytest.raises(core.common.errors.InvalidInputError, match="names"):
        core.method.names.names_from_input("# only a comment")


def test_unsupported_clip_is_refused(core):
    class NotAClip:
        cond_stage_model = torch.nn.Linear(2, 2)

    with pytest.raises(core.common.errors.UnsupportedModelError, match=r"supported: SD 1\.x"):
        core.host.encoder_slots(NotAClip())
