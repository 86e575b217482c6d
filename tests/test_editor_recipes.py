"""The editor's recipes as the README and the workflows' Notes give them, driven through ComfyUI's executor."""

from __future__ import annotations

import torch
import workflow_runner as wr


def _graph(start: dict, name: str, mode: str, steps: int, overwrite: bool = False) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_wide.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "recipe_face.png"}},
        "3": start,
        "4": {"class_type": "CrossInitTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["3", 0], "mode": mode,
            "steps": steps, "batch_size": 1, "learning_rate": 0.0, "seed": 0, "resolution": 64, "preview_every": 0}},
        "5": {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["4", 0], "name": name, "overwrite": overwrite}},
    }


def test_going_on_in_the_editor_load_embedding_custom_steps_to_add_and_a_new_name(pack, core, tiny, embeddings_dir,
                                                                                  monkeypatch):
    """Load Embedding into the trainer, `custom` with the steps to add: the count goes on from the file's, the
    regularizer pulls toward the first run's Cross-Init start (as `train --resume` in the terminal), the same name
    is refused at Run before any step, naming the file, and a new name or overwrite saves."""
    trained_runs = []
    train = core.training.trainer.train
    monkeypatch.setattr(core.training.trainer, "train", lambda *a, **kw: trained_runs.append(1) or train(*a, **kw))
    wr.install_face_image("recipe_face.png", 64)
    init = {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}}
    load = {"class_type": "CrossInitLoadEmbedding", "inputs": {"name": "recipe_face.safetensors"}}
    with wr.tiny_checkpoint_loader(tiny("sd1_wide"), ["tiny_wide.safetensors"]):
        first = wr.execute(_graph(init, "recipe_face", "custom", 3))
        assert first.success, wr.failure(first)
        start = wr.node_output(first, "3", 0)
        trained = wr.node_output(first, "4", 0)
        # the name this graph's own Save node wrote in this session passes the queue check (a graph run again is
        # served from the cache), so the Save node refuses it when reached: first, before the trainer runs
        clash = wr.execute(_graph(load, "recipe_face", "custom", 2))
        assert not clash.success and len(trained_runs) == 1
        message = wr.failure(clash)
        assert f"{embeddings_dir / 'recipe_face.safetensors'} already exists" in message
        assert "Choose another name, or turn on overwrite" in message
        more = wr.execute(_graph(load, "recipe_face-more", "custom", 2))
        assert wr.validate(_graph(load, "recipe_face", "custom", 2, overwrite=True))[0]  # or overwrite
    assert more.success, wr.failure(more)
    continued = wr.node_output(more, "4", 0)
    assert continued.metadata["steps"] == "5" and continued.metadata["continued_from_steps"] == "3"
    assert (continued.metadata["batch_size"], float(continued.metadata["learning_rate"])) == ("1", 0.005)  # custom's 0
    assert len(continued.loss_history) == 2
    for key, vectors in start.vectors.items():
        assert torch.equal(continued.init_vectors[key], vectors)  # the first run's start, recomputed from its names
        assert not torch.equal(continued.vectors[key], trained.vectors[key])  # it went on from the file's vectors
    saved = pack.cross_init_core.embeddings.embedding_io.load_embedding(embeddings_dir / "recipe_face-more.safetensors")
    assert saved.metadata["steps"] == "5" and torch.equal(saved.vectors["clip_l"], continued.vectors["clip_l"])


def test_a_taken_name_at_run_stops_the_whole_graph_before_the_training(pack, core, tiny, embeddings_dir, monkeypatch):
    """ComfyUI runs a graph's other outputs when one output node fails its check at Run (the server answers 200 with
    node_errors): the Save node is refused, and the trainer, run for the loss preview, stops before any step."""
    trained_runs = []
    train = core.training.trainer.train
    monkeypatch.setattr(core.training.trainer, "train", lambda *a, **kw: trained_runs.append(1) or train(*a, **kw))
    wr.install_face_image("recipe_face.png", 64)
    taken = embeddings_dir / "partial_face.safetensors"
    taken.write_bytes(b"keep me")
    init = {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}}
    prompt = _graph(init, "partial_face", "custom", 2)
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}}
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny_wide.safetensors"]):
        ok, _error, outputs, node_errors = wr.validate(prompt)
        assert ok and outputs == ["6"] and f"{taken} already exists" in str(node_errors["5"])  # the rest would run
        import execution

        executor = execution.PromptExecutor(wr.ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        executor.execute(prompt, "partial", {"client_id": None}, outputs)
    assert not executor.success and "CrossInitTrainer" in wr.failure(executor)
    assert f"{taken} already exists" in wr.failure(executor) and "turn on overwrite" in wr.failure(executor)
    assert trained_runs == [] and taken.read_bytes() == b"keep me"
