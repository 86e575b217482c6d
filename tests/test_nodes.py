"""Node schemas and node-level behaviour as ComfyUI sees them."""

from __future__ import annotations

import pytest
import torch

PACK_NODES = {
    "CrossInitLoadPhotos",
    "CrossInitFacePrep",
    "CrossInitEmbeddingInit",
    "CrossInitLossSettings",
    "CrossInitTrainer",
    "CrossInitCLIPTextEncode",
    "CrossInitSaveEmbedding",
    "CrossInitLoadEmbedding",
    "CrossInitIdentityScore",
    "CrossInitPromptScore",
    "CrossInitCheckpointReport",
    "CrossInitSampleBatch",
    "CrossInitPivotalLora",
    "CrossInitSaveLora",
    "CrossInitLoadLoraToken",
    "CrossInitLoraCheckpointReport",
}


def node_class(name: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


def test_every_node_is_registered_with_description_category_and_tooltips(pack):
    import nodes

    assert PACK_NODES <= set(nodes.NODE_CLASS_MAPPINGS)
    for name in sorted(PACK_NODES):
        cls = node_class(name)
        info = cls.GET_NODE_INFO_V1()
        assert info["category"] == "training/cross_init", name
        assert len(info["description"]) > 30, name
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert len(options.get("tooltip", "")) > 10, f"{name}.{input_name} has no tooltip"


def test_save_node_refuses_bad_and_taken_names_when_queued(pack, core, embeddings_dir):
    import asyncio

    import execution

    (embeddings_dir / "taken_face.safetensors").write_bytes(b"keep me")
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.zeros(2, 768)})
    core.embeddings.embedding_io.save_embedding(emb, embeddings_dir, "queue_source_face", overwrite=True)
    prompt = {
        "1": {"class_type": "CrossInitLoadEmbedding", "inputs": {"name": "queue_source_face.safetensors"}},
        "2": {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["1", 0], "name": "../escape", "overwrite": False}},
    }
    ok, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("p1", prompt, None))
    assert not ok and "plain file name" in str(node_errors["2"])
    # a taken name is refused at Run, before anything runs, naming the file and both fixes
    prompt["2"]["inputs"]["name"] = "taken_face"
    ok, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("p2", prompt, None))
    assert not ok and f"{embeddings_dir / 'taken_face.safetensors'} already exists" in str(node_errors["2"])
    assert "another name, or turn on overwrite" in str(node_errors["2"])
    prompt["2"]["inputs"]["overwrite"] = True
    assert asyncio.run(execution.validate_prompt("p3", prompt, None))[0]
    # and again when the node runs (where a name linked from another node is first checked)
    with pytest.raises(core.common.errors.EmbeddingExistsError, match="already exists"):
        node_class("CrossInitSaveEmbedding").execute(embedding=emb, name="taken_face", overwrite=False)
    assert (embeddings_dir / "taken_face.safetensors").read_bytes() == b"keep me"


def test_text_encode_node_needs_the_placeholder(core, tiny):
    m = tiny("sd1")
    with torch.inference_mode():
        emb = core.method.initialization.cross_initialize(m.clip, 2, ["Tom Hanks", "Meryl Streep"])
        with pytest.raises(core.common.errors.InvalidInputError, match="placeholder '<face>' does not appear"):
            core.method.personalized_encode.encode_prompt(m.clip, emb, "a photo of a person")
        cond = core.method.personalized_encode.encode_prompt(m.clip, emb, "a (photo:1.1) of <face> person, <face> again")
    assert cond[0][0].shape == (1, 77, 64)
    assert cond[0][1]["pooled_output"].shape == (1, 64)


def test_placeholder_positions_match_the_learned_vectors(core, tiny):
    m = tiny("sd1")
    slots = core.host.encoder_slots(m.clip)
    layout = core.method.prompt_tokens.layout_prompt(m.clip, slots, "sks a photo of <face> person", "<face>", 3)
    # 'sks' is in the user's text, so another marker must stand for the placeholder
    assert [row for _c, _i, row in layout.positions["l"]] == [0, 1, 2]
    first = layout.positions["l"][0][1]
    assert [i for _c, i, _r in layout.positions["l"]] == [first, first + 1, first + 2]
    vectors = {"clip_l": torch.arange(3 * 64, dtype=torch.float32).view(3, 64)}
    filled = layout.fill(vectors, slots)["l"][0]
    assert len(filled) == 77
    assert torch.equal(filled[first + 1][0], vectors["clip_l"][1])


def test_load_node_reads_a_saved_embedding(core, embeddings_dir):
    vectors = {"clip_l": torch.randn(2, 768)}
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors=vectors, metadata={"mode": "fast"})
    core.embeddings.embedding_io.save_embedding(emb, embeddings_dir, "node_load_face", overwrite=True)
    out = node_class("CrossInitLoadEmbedding").execute(name="node_load_face.safetensors")
    loaded = out.result[0]
    assert torch.equal(loaded.vectors["clip_l"], vectors["clip_l"])
    assert loaded.metadata["mode"] == "fast"


def test_load_node_fingerprint_changes_when_the_file_is_rewritten(core, embeddings_dir):
    load = node_class("CrossInitLoadEmbedding")
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.zeros(2, 768)})
    core.embeddings.embedding_io.save_embedding(emb, embeddings_dir, "fingerprint_face", overwrite=True)
    first = load.fingerprint_inputs(name="fingerprint_face.safetensors")
    assert load.fingerprint_inputs(name="fingerprint_face.safetensors") == first
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.ones(3, 768)})
    core.embeddings.embedding_io.save_embedding(emb, embeddings_dir, "fingerprint_face", overwrite=True)
    assert load.fingerprint_inputs(name="fingerprint_face.safetensors") != first


def test_load_node_without_a_name_or_file_says_to_choose_one(core):
    load = node_class("CrossInitLoadEmbedding")
    with pytest.raises(core.common.errors.EmbeddingFileError, match=r"^name: no embedding chosen; choose a file in name"):
        load.execute(name=None, file="")
    with pytest.raises(core.common.errors.EmbeddingFileError, match=r"^name: 'gone.safetensors' is not in the embeddings folders"):
        load.execute(name="gone.safetensors")


# The trainer's preset fields: 0 = the mode's value, another value overrides it; what 0.2 saved still means the same.
# (mode, steps, batch_size, learning_rate) as saved -> (steps, batch, lr) that run
V0_2_SAVED = [
    (("fast", 25, 8, 0.02), (25, 8, 0.02)),      # 0.2's cross_init_fast / sdxl_fast workflows
    (("full", 320, 8, 0.005), (320, 8, 0.005)),  # 0.2's cross_init_full / paper / checkpoints workflows
    (("fast", 320, 8, 0.005), (25, 8, 0.02)),    # a node added by hand in 0.2: its defaults, which fast ignored
    (("custom", 40, 2, 0.01), (40, 2, 0.01)),    # custom: every field as given, as in 0.2
]
NEW_FIELDS = [
    (("fast", 0, 0, 0.0), (25, 8, 0.02)),
    (("full", 0, 0, 0.0), (320, 8, 0.005)),
    (("full", 160, 0, 0.0), (160, 8, 0.005)),    # going on: the steps to add, the rest the paper's
    (("fast", 40, 4, 0.0), (40, 4, 0.02)),
    (("custom", 0, 0, 0.01), (320, 8, 0.01)),    # custom's 0 = the paper's value
]


@pytest.mark.parametrize(("saved", "runs"), V0_2_SAVED + NEW_FIELDS, ids=lambda v: "-".join(map(str, v)))
def test_trainer_preset_fields_0_is_the_preset_and_0_2_workflows_keep_their_meaning(core, saved, runs):
    chosen = core.common.settings.resolve(*saved, seed=3)
    assert (chosen.steps, chosen.batch_size, chosen.learning_rate, chosen.seed) == (*runs, 3)


def test_trainer_node_runs_and_logs_the_fields_that_override_the_preset(pack, core, tiny, caplog):
    import logging

    import workflow_runner as wr

    wr.install_face_image("preset_face.png", 64)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "preset_face.png"}},
        "3": {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}},
        "4": {"class_type": "CrossInitTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["3", 0], "mode": "fast",
            "steps": 2, "batch_size": 1, "learning_rate": 0.0, "seed": 0, "resolution": 64, "preview_every": 0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
    }
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]), caplog.at_level(logging.INFO):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    metadata = wr.node_output(executor, "4", 0).metadata
    assert (metadata["steps"], metadata["batch_size"], float(metadata["learning_rate"])) == ("2", "1", 0.02)
    assert "fast: 2 steps, batch 1, lr 0.02; set on the node: steps 2 (preset 25), batch_size 1 (preset 8)" in caplog.text
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^steps: got -1; use 0 for the preset's value"):
        core.common.settings.resolve("fast", -1, 0, 0.0, 0)
