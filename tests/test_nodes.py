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


def test_save_node_refuses_bad_names_when_queued_and_taken_names_when_run(pack, core, embeddings_dir):
    import asyncio

    import execution

    (embeddings_dir / "taken_face.safetensors").write_bytes(b"keep me")
    emb = core.embedding.CrossInitEmbedding(vectors={"clip_l": torch.zeros(2, 768)})
    core.embedding_io.save_embedding(emb, embeddings_dir, "queue_source_face", overwrite=True)
    prompt = {
        "1": {"class_type": "CrossInitLoadEmbedding", "inputs": {"name": "queue_source_face.safetensors"}},
        "2": {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["1", 0], "name": "../escape", "overwrite": False}},
    }
    ok, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("p1", prompt, None))
    assert not ok and "plain file name" in str(node_errors["2"])
    # a taken name queues: re-queueing a workflow after its own successful save must not be refused
    prompt["2"]["inputs"]["name"] = "taken_face"
    ok, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt("p2", prompt, None))
    assert ok, node_errors
    with pytest.raises(core.errors.EmbeddingExistsError, match="already exists"):
        node_class("CrossInitSaveEmbedding").execute(embedding=emb, name="taken_face", overwrite=False)
    assert (embeddings_dir / "taken_face.safetensors").read_bytes() == b"keep me"


def test_text_encode_node_needs_the_placeholder(core, tiny):
    m = tiny("sd1")
    with torch.inference_mode():
        emb = core.initialization.cross_initialize(m.clip, 2, ["Tom Hanks", "Meryl Streep"])
        with pytest.raises(core.errors.InvalidInputError, match="placeholder '<face>' does not appear"):
            core.personalized_encode.encode_prompt(m.clip, emb, "a photo of a person")
        cond = core.personalized_encode.encode_prompt(m.clip, emb, "a (photo:1.1) of <face> person, <face> again")
    assert cond[0][0].shape == (1, 77, 64)
    assert cond[0][1]["pooled_output"].shape == (1, 64)


def test_placeholder_positions_match_the_learned_vectors(core, tiny):
    m = tiny("sd1")
    slots = core.host.encoder_slots(m.clip)
    layout = core.prompt_tokens.layout_prompt(m.clip, slots, "sks a photo of <face> person", "<face>", 3)
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
    emb = core.embedding.CrossInitEmbedding(vectors=vectors, metadata={"mode": "fast"})
    core.embedding_io.save_embedding(emb, embeddings_dir, "node_load_face", overwrite=True)
    out = node_class("CrossInitLoadEmbedding").execute(name="node_load_face.safetensors")
    loaded = out.result[0]
    assert torch.equal(loaded.vectors["clip_l"], vectors["clip_l"])
    assert loaded.metadata["mode"] == "fast"


def test_load_node_fingerprint_changes_when_the_file_is_rewritten(core, embeddings_dir):
    load = node_class("CrossInitLoadEmbedding")
    emb = core.embedding.CrossInitEmbedding(vectors={"clip_l": torch.zeros(2, 768)})
    core.embedding_io.save_embedding(emb, embeddings_dir, "fingerprint_face", overwrite=True)
    first = load.fingerprint_inputs(name="fingerprint_face.safetensors")
    assert load.fingerprint_inputs(name="fingerprint_face.safetensors") == first
    emb = core.embedding.CrossInitEmbedding(vectors={"clip_l": torch.ones(3, 768)})
    core.embedding_io.save_embedding(emb, embeddings_dir, "fingerprint_face", overwrite=True)
    assert load.fingerprint_inputs(name="fingerprint_face.safetensors") != first


def test_load_node_without_a_name_or_file_says_to_choose_one(core):
    load = node_class("CrossInitLoadEmbedding")
    with pytest.raises(core.errors.EmbeddingFileError, match=r"^name: no embedding chosen; choose a file in name"):
        load.execute(name=None, file="")
    with pytest.raises(core.errors.EmbeddingFileError, match=r"^name: 'gone.safetensors' is not in the embeddings folders"):
        load.execute(name="gone.safetensors")
