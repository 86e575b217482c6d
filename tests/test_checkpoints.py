"""Picking the best step and going on later: checkpoints every N steps, saving them as a list, validation
previews, the checkpoint report, and continuing a saved run, on tiny host models."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import workflow_runner as wr
from helpers import face_images, init_embedding, settings
from tqdm import tqdm


def _load(core, path):
    """A saved file as Cross-Init Load Embedding gives it (tiny models' widths: read without the real-width check)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        vectors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())
    return core.embeddings.embedding.CrossInitEmbedding(vectors=vectors, metadata={**metadata, "source_file": path.name})


def _train(core, m, emb, steps, **kw):
    with torch.inference_mode():
        return core.training.trainer.train(m.model, m.clip, m.vae, face_images(2, 64), emb, settings(core, steps=steps, seed=4), **kw)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_the_checkpoint_at_step_k_is_the_k_step_run(core, tiny, kind):
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    long = _train(core, m, emb, 5, save_every=2)
    assert [c.metadata["steps"] for c in long.checkpoints] == ["2", "4", "5"]
    assert long.checkpoints[-1] is long.embedding
    for checkpoint in long.checkpoints:
        k = int(checkpoint.metadata["steps"])
        short = _train(core, m, emb, k).embedding
        for key in short.vectors:
            assert torch.equal(checkpoint.vectors[key], short.vectors[key]), (k, key)  # bit-identical on the CPU
        assert checkpoint.loss_history == short.loss_history and len(checkpoint.loss_history) == k
        assert {k2: v for k2, v in checkpoint.metadata.items() if k2 != "steps"} == \
               {k2: v for k2, v in short.metadata.items() if k2 != "steps"}
        assert all(torch.equal(checkpoint.init_vectors[key], emb.vectors[key]) for key in emb.vectors)
    assert not torch.equal(long.checkpoints[0].vectors[next(iter(emb.vectors))], long.embedding.vectors[next(iter(emb.vectors))])


def test_without_save_every_the_checkpoints_are_the_final_tokens_only(core, tiny):
    m = tiny("sd1")
    result = _train(core, m, init_embedding(core, m.clip), 3)
    assert result.checkpoints == [result.embedding]
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^save_every: "):
        _train(core, m, init_embedding(core, m.clip), 3, save_every=-1)


# ---------------------------------------------------------------------------------------------
# The nodes, as ComfyUI runs them: the checkpoints list saved whole


def _training_prompt(name: str, steps: int, save_every: int, overwrite: bool = False) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ckpt_face.png"}},
        "3": {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}},
        "4": {"class_type": "CrossInitTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["3", 0], "mode": "custom",
            "steps": steps, "batch_size": 1, "learning_rate": 0.02, "seed": 0, "resolution": 64, "preview_every": 0,
            "save_every": save_every}},
        "5": {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["4", 2], "name": name, "overwrite": overwrite}},
    }


def test_the_checkpoints_list_is_saved_as_name_step_files_and_name(pack, tiny, embeddings_dir):
    from safetensors import safe_open

    wr.install_face_image("ckpt_face.png", 64)
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        executor = wr.execute(_training_prompt("ckpt_list", steps=5, save_every=2))
    assert executor.success, wr.failure(executor)
    names = sorted(p.name for p in embeddings_dir.glob("ckpt_list*"))
    assert names == ["ckpt_list-step0002.safetensors", "ckpt_list-step0004.safetensors", "ckpt_list-step0005.safetensors",
                     "ckpt_list.safetensors"]
    files = {}
    for name in names:
        with safe_open(str(embeddings_dir / name), framework="pt") as handle:
            files[name] = (handle.get_tensor("clip_l"), handle.metadata())
    assert [files[n][1]["steps"] for n in names] == ["2", "4", "5", "5"]
    assert torch.equal(files["ckpt_list.safetensors"][0], files["ckpt_list-step0005.safetensors"][0])
    final = wr.node_output(executor, "4", 0)  # the trainer's embedding output is the last checkpoint
    assert torch.equal(final.vectors["clip_l"], files["ckpt_list.safetensors"][0])
    assert wr.node_output(executor, "5", 0) == str(embeddings_dir / "ckpt_list.safetensors")
    import nodes

    listed = nodes.NODE_CLASS_MAPPINGS["CrossInitLoadEmbedding"].define_schema().inputs[0].options
    assert {"ckpt_list-step0002.safetensors", "ckpt_list.safetensors"} <= set(listed)  # Load Embedding lists them


def test_a_taken_name_is_refused_when_queued_naming_the_file_and_nothing_is_written(pack, tiny, embeddings_dir):
    wr.install_face_image("ckpt_face.png", 64)
    taken = embeddings_dir / "ckpt_clash-step0004.safetensors"
    taken.write_bytes(b"keep me")
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        ok, _error, _outputs, node_errors = wr.validate(_training_prompt("ckpt_clash", steps=4, save_every=2))
        assert not ok and set(node_errors) == {"5"}
        message = str(node_errors["5"])
        assert f"{taken} already exists" in message and "Choose another name, or turn on overwrite" in message
        assert wr.validate(_training_prompt("ckpt_clash", steps=4, save_every=2, overwrite=True))[0]  # the fix
        assert wr.validate(_training_prompt("ckpt_clash_new", steps=4, save_every=2))[0]  # the other fix
    assert sorted(p.name for p in embeddings_dir.glob("ckpt_clash*")) == ["ckpt_clash-step0004.safetensors"]
    assert taken.read_bytes() == b"keep me"


def test_a_name_too_long_for_its_checkpoints_is_refused_when_queued(pack, core):
    save = pack.nodes.embedding_files.CrossInitSaveEmbedding
    longest = len(core.common.embedding_names.checkpoint_name("", pack.nodes.embedding_files.MAX_RUN_STEPS))  # "-step200000"
    assert longest == 11
    fits = "n" * (core.common.embedding_names.MAX_NAME_LENGTH - longest)
    assert save.validate_inputs(name=fits, overwrite=False) is True
    refused = save.validate_inputs(name=fits + "n", overwrite=False)
    assert isinstance(refused, str) and refused.startswith("name ") and "too long for its checkpoint files" in refused
    assert f"Use at most {len(fits)} characters" in refused
    ok, _error, _outputs, node_errors = wr.validate(_training_prompt(fits + "n", steps=4, save_every=2))
    assert not ok and "too long for its checkpoint files" in str(node_errors["5"])


def test_run_again_after_its_own_save_is_served_from_the_cache_and_a_changed_training_stops_before_training(
        pack, core, tiny, embeddings_dir, monkeypatch):
    """One executor, as one ComfyUI server: the graph's own saved files do not refuse it at Run; when its training
    changed, the taken name stops the graph at the Save node before the trainer runs."""
    import execution

    trained = []
    train = core.training.trainer.train
    monkeypatch.setattr(core.training.trainer, "train", lambda *a, **kw: trained.append(1) or train(*a, **kw))
    wr.install_face_image("ckpt_face.png", 64)
    executor = execution.PromptExecutor(wr.ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})

    def run(prompt: dict) -> None:
        ok, error, outputs, node_errors = wr.validate(prompt)
        assert ok, (error, node_errors)
        executor.execute(prompt, "p", {"client_id": None}, outputs)

    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        run(_training_prompt("again_face", steps=3, save_every=2))
        assert executor.success, wr.failure(executor)
        files = {p.name: p.stat().st_mtime_ns for p in embeddings_dir.glob("again_face*")}
        assert sorted(files) == ["again_face-step0002.safetensors", "again_face-step0003.safetensors", "again_face.safetensors"]
        assert len(trained) == 1
        run(_training_prompt("again_face", steps=3, save_every=2))  # Run again, nothing changed
        assert executor.success, wr.failure(executor)
        assert len(trained) == 1
        run(_training_prompt("again_face", steps=4, save_every=2))  # the training changed: the name is taken
        assert not executor.success and "again_face.safetensors already exists" in wr.failure(executor)
        assert len(trained) == 1  # refused before any step
    assert {p.name: p.stat().st_mtime_ns for p in embeddings_dir.glob("again_face*")} == files
    # another Save node (another graph) gets no pass for these files
    assert "already exists" in str(pack.nodes.embedding_files.CrossInitSaveEmbedding.validate_inputs(name="again_face", overwrite=False))


def test_checkpoint_names(core):
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.zeros(2, 768)})
    steps = [emb.with_vectors(emb.vectors, steps=str(k)) for k in (80, 160, 12345)]
    named = core.embeddings.embedding_io.checkpoint_names(steps, "me")
    assert [n for _e, n in named] == ["me-step0080", "me-step0160", "me-step12345", "me"] and named[-1][0] is steps[-1]
    assert core.embeddings.embedding_io.checkpoint_names(steps[:1], "me") == [(steps[0], "me")]  # one embedding: just NAME
    with pytest.raises(core.common.errors.InvalidInputError, match="same step twice"):
        core.embeddings.embedding_io.checkpoint_names([steps[0], steps[0]], "me")
    with pytest.raises(core.common.errors.InvalidInputError, match=r"item 2 of the 2 .* no step count"):
        core.embeddings.embedding_io.checkpoint_names([steps[0], emb], "me")


# ---------------------------------------------------------------------------------------------
# Validation previews


def test_previews_sample_the_preview_prompt_with_the_preview_steps(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    faces = face_images(1, 64)
    prompt = "a watercolor painting of <face> person"
    render = core.training.preview.progress_preview(m.model, m.clip, m.vae, faces, 64, 3, prompt=prompt, steps=2)
    _kind, shown, _size = render(1, emb)
    preview = core.training.preview
    expected = preview.side_by_side(faces[0], preview.sample_portrait(m.model, m.clip, m.vae, emb, 64, 3, 2, prompt)[0])
    other = core.training.preview.side_by_side(faces[0], core.training.preview.sample_portrait(m.model, m.clip, m.vae, emb, 64, 3)[0])
    assert np.array_equal(np.asarray(shown), np.asarray(expected)) and not np.array_equal(np.asarray(shown), np.asarray(other))
    for bad_prompt, bad_steps, match in (("a photo of a person", 6, r"^preview_prompt: write <face>"),
                                         (prompt, 0, r"^preview_steps: ")):
        with pytest.raises(core.common.errors.InvalidInputError, match=match):
            core.training.preview.progress_preview(m.model, m.clip, m.vae, faces, 64, 3, prompt=bad_prompt, steps=bad_steps)


# ---------------------------------------------------------------------------------------------
# The report


def _ckpt(core, step, losses):
    emb = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.full((2, 768), float(step))}, metadata={"steps": str(step)})
    emb.loss_history = [(loss, 0.1) for loss in losses]
    return emb


def _identity(mean, higher=True, backend="insightface"):
    images = [{"index": 0, "face": mean is not None, "score": mean}]
    return json.dumps({"backend": backend, "metric": "cosine" if higher else "distance", "higher_is_better": higher,
                       "threshold": 0.28 if higher else 0.6, "mean": mean, "faces_found": int(mean is not None), "images": images})


def _prompt(mean):
    return json.dumps({"model": "clip-vit-base-patch32", "mean": mean, "images": [{"index": 0, "score": mean}]})


def test_the_report_picks_the_best_identity_within_the_prompt_margin(core):
    losses = [1.0 - i / 400 for i in range(320)]
    ckpts = [_ckpt(core, s, losses[:s]) for s in (80, 160, 240, 320)]
    identity = [_identity(v) for v in (0.30, 0.42, 0.55, 0.60)]
    prompt = [_prompt(v) for v in (0.300, 0.296, 0.291, 0.270)]
    report = core.scoring.checkpoint_report.build_report(ckpts, identity, prompt, margin=0.01)
    # 320 has the best identity but its prompt score is 0.03 below the best: 240 is the best within 0.01
    assert report.rows[report.best].step == 240 and [r.best for r in report.rows] == [False, False, True, False]
    assert core.scoring.checkpoint_report.build_report(ckpts, identity, prompt, margin=0.0).rows[0].best  # prompt alone decides
    assert core.scoring.checkpoint_report.build_report(ckpts, identity, prompt, margin=1.0).rows[3].best  # identity alone
    data = json.loads(report.as_json())
    assert data["best_step"] == 240 and data["margin"] == 0.01 and "within 0.01 of their best prompt score" in data["rule"]
    assert [c["step"] for c in data["checkpoints"]] == [80, 160, 240, 320]
    assert data["checkpoints"][0]["loss"] == pytest.approx(sum(losses[70:80]) / 10)
    text = report.as_text()
    assert "240" in text.splitlines()[4] and "<- best" in text.splitlines()[4] and "best: step 240" in text


def test_the_report_follows_the_backends_direction_and_passes_over_faceless_checkpoints(core):
    ckpts = [_ckpt(core, s, [1.0] * s) for s in (2, 4, 6)]
    dlib = [_identity(v, higher=False, backend="dlib") for v in (0.5, 0.4, None)]  # lower is better; 6: no face
    report = core.scoring.checkpoint_report.build_report(ckpts, dlib, [_prompt(0.3)] * 3, margin=0.01)
    assert report.rows[report.best].step == 4 and report.rows[2].identity is None and report.rows[2].faces == "0/1"
    no_scores = core.scoring.checkpoint_report.build_report(ckpts, [], [])
    assert no_scores.rows[no_scores.best].step == 6  # nothing scored: the last checkpoint
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^identity: 1 report"):
        core.scoring.checkpoint_report.build_report(ckpts, dlib[:1], [])
    with pytest.raises(core.common.errors.InvalidInputError, match="different backends"):
        core.scoring.checkpoint_report.build_report(ckpts, [_identity(0.3), *dlib[1:]], [])


def test_a_checkpoint_with_no_face_is_passed_over_whenever_another_has_one(core):
    """Identities 0.55 / 0.50 / no face at steps 80 / 160 / 240, prompt scores 0.280 / 0.285 / 0.300, margin 0.01:
    240 has the best prompt score but no face; among the two with a face the margin is measured from 0.285, so both
    count, and 80 has the better identity."""
    ckpts = [_ckpt(core, s, [1.0] * s) for s in (80, 160, 240)]
    identity = [_identity(v) for v in (0.55, 0.50, None)]
    prompt = [_prompt(v) for v in (0.280, 0.285, 0.300)]
    report = core.scoring.checkpoint_report.build_report(ckpts, identity, prompt, margin=0.01)
    assert report.rows[report.best].step == 80 and report.rows[2].faces == "0/1"
    assert core.scoring.checkpoint_report.build_report(ckpts, identity, prompt, margin=0.0).rows[1].best  # 0.285 alone: 160
    no_face = core.scoring.checkpoint_report.build_report(ckpts, [_identity(None)] * 3, prompt, margin=0.01)
    assert no_face.rows[no_face.best].step == 240  # no face anywhere: the prompt score decides
    assert "show no face are passed over" in report.rule() and "show no face are passed over" in json.loads(report.as_json())["rule"]


def test_the_identity_node_scores_each_checkpoints_samples_against_one_reference_set_never_paired_one_by_one(pack, core):
    """The checkpoints workflow maps Identity Score over a list of sample batches (one per checkpoint), each scored
    against the same reference: one report each. A reference that is a list too (photos of any sizes) is one set of
    photos for every batch, never paired with the batches index by index: the first batch's score is the one against
    both reference photos, not against the first alone."""
    from face_photos import as_image, astronaut
    from skimage import data

    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["CrossInitIdentityScore"]
    face, cup = as_image(astronaut()), as_image(data.coffee())
    mirrored = as_image(astronaut()[:, ::-1].copy())
    means, reports, grids = node.execute(reference=[face, mirrored], images=[face, cup], backend=["dlib"]).result
    assert len(means) == len(reports) == len(grids) == 2
    assert [json.loads(r)["faces_found"] for r in reports] == [1, 0] and means[0] < 0.6 and math.isnan(means[1])
    both = core.scoring.score_identity(torch.cat([face, mirrored]), face, "dlib").mean
    first_only = core.scoring.score_identity(face, face, "dlib").mean
    assert means[0] == pytest.approx(both, abs=1e-6) and abs(both - first_only) > 1e-4


def test_a_report_that_is_json_but_not_a_score_report_is_refused_by_name(core):
    ckpts = [_ckpt(core, s, [1.0] * s) for s in (2, 4)]
    for bad in ("[1, 2]", "3", json.dumps({"mean": 0.3, "images": [1]}), json.dumps({"mean": 0.3, "images": "x"})):
        with pytest.raises(core.common.errors.InvalidInputError, match=r"^prompt: report 2 of 2 is JSON but not a score report"):
            core.scoring.checkpoint_report.build_report(ckpts, [], [_prompt(0.3), bad])


def test_a_continued_runs_losses_are_drawn_at_their_steps(core):
    ckpts = [_ckpt(core, s, [1.0 + 0.1 * (i % 2) for i in range(s - 4)]) for s in (6, 8)]  # continued from step 4
    report = core.scoring.checkpoint_report.build_report(ckpts, [], [_prompt(0.3), _prompt(0.2)])
    plot = (core.scoring.checkpoint_report.render_plot(report)[0] * 255).round().to(torch.int16)
    loss = ((plot - torch.tensor(core.scoring.checkpoint_report.LOSS_COLOR, dtype=torch.int16)).abs().sum(-1) == 0)
    columns = loss[core.scoring.checkpoint_report.TOP + 2 * core.scoring.checkpoint_report.PANEL:].any(0).nonzero().flatten()
    report = core.scoring.checkpoint_report
    left, right = report.MARGIN_LEFT, report.WIDTH - report.MARGIN_RIGHT
    assert int(columns.min()) >= left + 5 / 8 * (right - left) - 3  # its first loss is step 5 of 8, not step 1


def test_losses_are_drawn_at_their_own_steps_when_fp16_skipped_some(core):
    """Steps 2-5 of 10 were skipped (fp16 overflow: no loss): the 6 losses belong to steps 1 and 6-10, so the loss
    curve has nothing over steps 2-5 and ends at step 10, not at step 6."""
    losses = [3.0, 1.0, 1.2, 1.1, 1.3, 1.0]
    last = _ckpt(core, 10, losses)
    last.loss_steps = [1, 6, 7, 8, 9, 10]
    report = core.scoring.checkpoint_report.build_report([_ckpt(core, 5, losses[:1]), last], [], [])
    assert report.loss_steps == [1, 6, 7, 8, 9, 10]
    plot = (core.scoring.checkpoint_report.render_plot(report)[0] * 255).round().to(torch.int16)
    loss = ((plot - torch.tensor(core.scoring.checkpoint_report.LOSS_COLOR, dtype=torch.int16)).abs().sum(-1) == 0)
    top = core.scoring.checkpoint_report.TOP + 2 * core.scoring.checkpoint_report.PANEL
    panel = loss[top:top + core.scoring.checkpoint_report.PANEL - 22]
    report = core.scoring.checkpoint_report
    left, right = report.MARGIN_LEFT, report.WIDTH - report.MARGIN_RIGHT
    columns = panel[:, left + 2:].any(0).nonzero().flatten() + left + 2
    x_of = lambda step: left + step / 10 * (right - left)  # noqa: E731
    assert abs(int(columns.min()) - x_of(1)) <= 3 and abs(int(columns.max()) - x_of(10)) <= 3
    # the line from step 1 to step 6 is one straight segment: no point drawn in between but on it
    assert int(columns.max()) > x_of(9)


def test_the_report_plot_marks_the_best_step(core):
    ckpts = [_ckpt(core, s, [1.0 / (i + 1) for i in range(s)]) for s in (10, 20, 30)]
    report = core.scoring.checkpoint_report.build_report(ckpts, [_identity(v) for v in (0.2, 0.5, 0.3)], [_prompt(0.3)] * 3)
    plot = core.scoring.checkpoint_report.render_plot(report)
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.shape[2] == core.scoring.checkpoint_report.WIDTH
    pixels = (plot[0] * 255).round().to(torch.int16)
    best = torch.tensor(core.scoring.checkpoint_report.BEST_COLOR, dtype=torch.int16)
    columns = ((pixels - best).abs().sum(-1) == 0).any(0).nonzero().flatten()
    report = core.scoring.checkpoint_report
    left, right = report.MARGIN_LEFT, report.WIDTH - report.MARGIN_RIGHT
    expected = left + 20 / 30 * (right - left)  # step 20 of 30
    assert columns.numel() and abs(float(columns.float().mean()) - expected) <= 2


def _lora_ckpt(core, step, losses):
    lora = core.lora.weights.LoraModel({"lora_unet_x.alpha": torch.tensor(1.0)}, {"steps": str(step)},
                                       embedding=_ckpt(core, 320, []))
    lora.loss_history = [(loss, 0.0) for loss in losses]
    lora.loss_steps = list(range(1, len(losses) + 1))
    return lora


def test_the_lora_report_picks_the_lora_step_by_the_same_rule(core):
    """The LoRA stage's checkpoints with the numbers of the token test above: the same step wins (240: the best
    identity among the steps within 0.01 of the best prompt score), the faceless one is passed over, and the JSON says
    whose checkpoints they are and gives the same rule."""
    build = core.scoring.checkpoint_report.build_report
    losses = [1.0 - i / 400 for i in range(320)]
    loras = [_lora_ckpt(core, s, losses[:s]) for s in (80, 160, 240, 320)]
    identity = [_identity(v) for v in (0.30, 0.42, 0.55, 0.60)]
    prompt = [_prompt(v) for v in (0.300, 0.296, 0.291, 0.270)]
    report = build(loras, identity, prompt, margin=0.01, stage="lora")
    tokens = build([_ckpt(core, s, losses[:s]) for s in (80, 160, 240, 320)], identity, prompt, margin=0.01)
    assert report.rows[report.best].step == 240 == tokens.rows[tokens.best].step
    assert [r.best for r in report.rows] == [False, False, True, False]
    assert build(loras, identity, prompt, margin=0.0, stage="lora").rows[0].best  # the prompt score alone decides
    assert build(loras, identity, prompt, margin=1.0, stage="lora").rows[3].best  # the identity alone
    data = json.loads(report.as_json())
    assert data["stage"] == "lora" and json.loads(tokens.as_json())["stage"] == "token"
    assert data["rule"] == json.loads(tokens.as_json())["rule"] and "show no face are passed over" in data["rule"]
    assert data["checkpoints"][1]["loss"] == pytest.approx(sum(losses[150:160]) / 10)
    # identities 0.55 / 0.50 / no face, prompt scores 0.280 / 0.285 / 0.300: the faceless step 240 is passed over
    faceless = build(loras[:3], [_identity(v) for v in (0.55, 0.50, None)], [_prompt(v) for v in (0.280, 0.285, 0.300)],
                     margin=0.01, stage="lora")
    assert faceless.rows[faceless.best].step == 80
    plain = {"lora_unet_x.alpha": torch.tensor(1.0)}  # a LORA_MODEL without metadata (core Train LoRA's): no step
    with pytest.raises(core.common.errors.InvalidInputError, match="Cross-Init Pivotal LoRA's checkpoints output"):
        build([plain], [], [], stage="lora")


def test_lora_report_node_picks_the_best_lora_in_a_graph_and_save_lora_writes_it(pack, core, tiny, embeddings_dir):
    """On tiny models, as ComfyUI runs it: the LoRA stage keeps a checkpoint every step, each is sampled with core Load
    LoRA Model and scored by the prompt score (no face in tiny-model noise: the prompt score decides), and the LoRA
    report's best is the LoRA of the best-scored step, which Cross-Init Save LoRA writes."""
    from pathlib import Path

    import folder_paths
    from helpers import save_tiny_clip
    from safetensors.torch import load_file

    clip_folder = Path(folder_paths.get_folder_paths("clip_scoring")[-1]) / "clip-vit-base-patch32"
    if not (clip_folder / "config.json").is_file():
        save_tiny_clip(clip_folder, seed=11)
    wr.install_face_image("lora_report_face.png", 64)
    loader = {"model": ["1", 0], "lora": ["4", 4], "strength_model": 1.0}
    if any(name == "bypass" for name, _spec, _optional in wr.defined_inputs("LoraModelLoader")):
        loader["bypass"] = False  # ComfyUI 0.33's extra input
    text = "a photo of a person on the beach"
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "lora_report_face.png"}},
        "3": {"class_type": "CrossInitEmbeddingInit", "inputs": {"clip": ["1", 1], "num_tokens": 2, "names": "", "source": "names"}},
        "4": {"class_type": "CrossInitPivotalLora", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "images": ["2", 0], "embedding": ["3", 0], "mode": "custom",
            "rank": 2, "alpha": 2.0, "learning_rate": 0.05, "steps": 3, "batch_size": 1, "token_learning_rate": 0.0,
            "seed": 0, "resolution": 64, "save_every": 1, "preview_every": 0}},
        "5": {"class_type": "LoraModelLoader", "inputs": loader},  # once per checkpoint (a list)
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                                                  "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["8", 0], "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "CrossInitPromptScore", "inputs": {"images": ["10", 0], "prompt": text,
                                                                "model": "clip-vit-base-patch32"}},
        "12": {"class_type": "CrossInitLoraCheckpointReport", "inputs": {"checkpoints": ["4", 4], "prompt": ["11", 1],
                                                                         "prompt_tolerance": 0.01}},
        "13": {"class_type": "CrossInitSaveLora", "inputs": {"lora": ["12", 3], "name": "lora_report_best", "overwrite": True}},
    }
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    data = json.loads(wr.node_output(executor, "12", 1))
    assert data["stage"] == "lora" and [c["step"] for c in data["checkpoints"]] == [1, 2, 3]
    prompts = [c["prompt"] for c in data["checkpoints"]]
    assert all(isinstance(v, float) for v in prompts) and len(set(prompts)) == 3  # each step's LoRA samples differently
    best = max(range(3), key=lambda i: (prompts[i], -i))  # no face anywhere: the best prompt score decides
    assert data["best_step"] == best + 1
    lora = wr.node_output(executor, "12", 3)
    assert lora.metadata["steps"] == str(best + 1)
    # each checkpoint's loss: the mean of its own steps' losses (the history the LoRA carries up to its step)
    assert len(lora.loss_history) == best + 1 and lora.loss_steps == list(range(1, best + 2))
    assert data["checkpoints"][best]["loss"] == pytest.approx(sum(loss for loss, _ in lora.loss_history) / (best + 1))
    assert wr.node_output(executor, "12", 4) is lora.embedding  # the token it was trained around
    loras_folder = Path(folder_paths.get_folder_paths("loras")[0])
    saved = load_file(str(loras_folder / "lora_report_best.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in lora.items())
    assert "<- best" in wr.node_output(executor, "12", 0)


# ---------------------------------------------------------------------------------------------
# Continuing a saved run


def test_a_saved_run_goes_on_toward_its_original_start_and_counts_every_step(core, tiny, tmp_path, caplog):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)  # typed names: recorded in the metadata
    assert emb.metadata["init_names"] == "typed" and emb.metadata["init_names_text"]
    first = _train(core, m, emb, 3)
    path = core.embeddings.embedding_io.save_embedding(first.embedding, tmp_path, "first")
    loaded = _load(core, path)
    assert loaded.init_vectors is None
    with caplog.at_level(logging.INFO, logger=core.embeddings.continuation.log.name):
        more = _train(core, m, loaded, 2)
    assert more.embedding.metadata["steps"] == "5" and more.embedding.metadata["continued_from_steps"] == "3"
    assert "source_file" not in more.embedding.metadata  # only how the start was made is carried over
    for key in emb.vectors:  # the regularizer's target is the original start, recomputed from the recorded names
        assert torch.equal(more.embedding.init_vectors[key], emb.vectors[key])
    assert any("the optimizer goes on from its state at step 3" in r.getMessage() for r in caplog.records)
    # training started from the file's vectors: the first step's regularizer is their distance from the start
    distance = float(torch.stack([(first.embedding.vectors[k] - emb.vectors[k]).norm(dim=1).mean() for k in emb.vectors]).mean())
    assert more.regs[0] == pytest.approx(distance, rel=1e-5)
    with_checkpoints = _train(core, m, loaded, 4, save_every=2)
    assert [c.metadata["steps"] for c in with_checkpoints.checkpoints] == ["5", "7"]


def test_a_file_without_its_start_pulls_toward_its_own_vectors_and_another_family_is_refused(core, tiny, tmp_path):
    m = tiny("sd1")
    foreign = core.embeddings.embedding.CrossInitEmbedding(
        vectors={"clip_l": torch.randn(2, 64, generator=torch.Generator().manual_seed(1))},
                                                metadata={"source_file": "a1111.pt", "peak_vram_mib": "9999", "note": "kept"})
    result = _train(core, m, foreign, 2)
    assert torch.equal(result.embedding.init_vectors["clip_l"], foreign.vectors["clip_l"])
    assert result.embedding.metadata["steps"] == "2" and result.embedding.metadata["note"] == "kept"
    assert "peak_vram_mib" not in result.embedding.metadata and "source_file" not in result.embedding.metadata
    sd2 = init_embedding(core, tiny("sd2").clip)
    saved = core.embeddings.embedding_io.save_embedding(_train(core, tiny("sd2"), sd2, 1).embedding, tmp_path, "sd2_file")
    with pytest.raises(core.common.errors.InvalidInputError, match=r"clip_h .* SD 2"):
        _train(core, m, _load(core, saved), 1)


def test_a_trainers_output_goes_on_in_the_same_graph_without_the_earlier_runs_figures(core, tiny):
    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    first = _train(core, m, emb, 3)
    first.embedding.metadata["peak_vram_mib"] = "1234"  # as a CUDA run records it
    more = _train(core, m, first.embedding, 2)  # Trainer -> Trainer (or the report's best -> Trainer)
    assert more.embedding.metadata["steps"] == "5" and more.embedding.metadata["continued_from_steps"] == "3"
    assert "peak_vram_mib" not in more.embedding.metadata
    for key in emb.vectors:  # still toward the original start, from the trained vectors
        assert torch.equal(more.embedding.init_vectors[key], emb.vectors[key])
    distance = float(torch.stack([(first.embedding.vectors[k] - emb.vectors[k]).norm(dim=1).mean() for k in emb.vectors]).mean())
    assert more.regs[0] == pytest.approx(distance, rel=1e-5)


def test_a_continued_run_draws_what_the_uninterrupted_run_would_have(core, tiny, tmp_path):
    m = tiny("sd1")
    first = _train(core, m, init_embedding(core, m.clip), 3)
    loaded = _load(core, core.embeddings.embedding_io.save_embedding(first.embedding, tmp_path, "first"))
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(m.model, m.clip, m.vae, face_images(2, 64), loaded, settings(core, steps=2, seed=4))
    assert run.previous_steps == 3
    calls = core.training.trainer.Callbacks(lambda *_a: None, tqdm(disable=True))
    trainer = core.training.trainer.Trainer(run, core.training.memory.MemorySettings().validated(), calls, 0.0)
    fresh = run.sampler()
    uninterrupted = [fresh.draw(run.settings.batch_size) for _ in range(4)]
    going_on = trainer.sampler.draw(run.settings.batch_size)
    assert torch.equal(going_on.noise, uninterrupted[3].noise) and not torch.equal(going_on.noise, uninterrupted[0].noise)
    assert going_on.templates == uninterrupted[3].templates


def test_only_a_cross_init_runs_step_count_is_trusted_and_the_checks_come_before_any_work(core, tiny, tmp_path, caplog):
    m = tiny("sd1")
    other = core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.randn(2, 64, generator=torch.Generator().manual_seed(2))},
                                              metadata={"steps": "500"})  # another trainer's count: its draws are not ours
    assert _train(core, m, other, 2).embedding.metadata["steps"] == "2"
    first = _train(core, m, init_embedding(core, m.clip), 1)
    loaded = _load(core, core.embeddings.embedding_io.save_embedding(first.embedding, tmp_path, "first"))
    huge = core.embeddings.embedding.CrossInitEmbedding(loaded.vectors, metadata={**loaded.metadata, "steps": "1000000000"})
    with pytest.raises(core.common.errors.InvalidInputError,
                       match=r"^embedding: first.safetensors says it was trained for 1000000000 steps"):
        _train(core, m, huge, 1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=core.embeddings.continuation.log.name), \
            pytest.raises(core.common.errors.InvalidInputError, match=r"^steps: "):
        _train(core, m, loaded, 0)
    assert not [r for r in caplog.records if r.name == core.embeddings.continuation.log.name]  # refused before the CLIP ran


def _with_clip_layer(clip, layer):
    skip = clip.clone()
    skip.clip_layer(layer)  # what CLIP Set Last Layer does
    return skip


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_six_steps_and_six_more_from_the_file_equal_twelve_bit_for_bit(core, tiny, kind, tmp_path, caplog):
    """The optimizer's state travels in the file's metadata (compact, versioned): 6 + 6 steps through a saved file equal
    12 steps exactly; the same file without that state goes on with a fresh optimizer (logged) and ends elsewhere."""
    m = tiny(kind)
    emb = init_embedding(core, m.clip)
    twelve = _train(core, m, emb, 12).embedding
    six = _train(core, m, emb, 6).embedding
    state = json.loads(six.metadata[core.embeddings.optimizer_state.METADATA_KEY])
    assert state["version"] == core.embeddings.optimizer_state.VERSION and state["step"] == 6 and set(state["moments"]) == set(emb.vectors)
    path = core.embeddings.embedding_io.save_embedding(six, tmp_path, f"six_{kind}")
    more = _train(core, m, _load(core, path), 6).embedding
    assert more.metadata["steps"] == "12" and json.loads(more.metadata[core.embeddings.optimizer_state.METADATA_KEY])["step"] == 12
    for key in emb.vectors:
        assert torch.equal(more.vectors[key], twelve.vectors[key]), key
    from safetensors.torch import load_file, save_file

    stateless = tmp_path / f"stateless_{kind}.safetensors"
    state_key = core.embeddings.optimizer_state.METADATA_KEY
    metadata = {k: v for k, v in _load(core, path).metadata.items() if k not in (state_key, "source_file")}
    save_file(load_file(str(path)), str(stateless), metadata=metadata)
    with caplog.at_level(logging.INFO, logger=core.embeddings.continuation.log.name):
        fresh = _train(core, m, _load(core, stateless), 6).embedding
    assert any("optimizer state starts fresh (the file carries none)" in r.getMessage() for r in caplog.records)
    assert fresh.metadata["steps"] == "12"
    assert not all(torch.equal(fresh.vectors[k], twelve.vectors[k]) for k in emb.vectors)


def test_six_and_six_steps_through_the_trainer_node_equal_twelve(pack, tiny, embeddings_dir):
    """Trainer -> Trainer in one graph, as the editor runs it: the first trainer's output carries its optimizer state."""
    wr.install_face_image("ckpt_face.png", 64)
    prompt = _training_prompt("exact_six_and_six", steps=6, save_every=0, overwrite=True)
    prompt["6"] = {"class_type": "CrossInitTrainer", "inputs": {**prompt["4"]["inputs"], "embedding": ["4", 0]}}
    prompt["7"] = {"class_type": "CrossInitTrainer", "inputs": {**prompt["4"]["inputs"], "steps": 12}}
    prompt["5"]["inputs"]["embedding"] = ["6", 0]
    prompt["8"] = {"class_type": "CrossInitSaveEmbedding", "inputs": {"embedding": ["7", 0], "name": "exact_twelve", "overwrite": True}}
    with wr.tiny_checkpoint_loader(tiny("sd1"), ["tiny.safetensors"]):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    going_on, twelve = wr.node_output(executor, "6", 0), wr.node_output(executor, "7", 0)
    assert going_on.metadata["steps"] == "12" and going_on.metadata["continued_from_steps"] == "6"
    assert torch.equal(going_on.vectors["clip_l"], twelve.vectors["clip_l"])


def test_a_continuation_with_another_clip_layer_is_refused_naming_both(core, tiny, tmp_path, caplog):
    """Trained with the default layer (last), continued behind CLIP Set Last Layer -2: refused before any work, naming
    both layers (the regularizer's start would move). -1 is the last layer too, and goes on."""
    m = tiny("sd1")
    first = _train(core, m, init_embedding(core, m.clip), 2).embedding
    assert first.metadata["clip_layer"] == "last"
    loaded = _load(core, core.embeddings.embedding_io.save_embedding(first, tmp_path, "layered"))
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^clip: layered.safetensors was trained on the text encoder's layer "
                                                             r"last .* the connected CLIP uses layer -2"):
        with torch.inference_mode():
            core.training.trainer.train(m.model, _with_clip_layer(m.clip, -2), m.vae, face_images(2, 64), loaded,
                                settings(core, steps=1, seed=4))
    with pytest.raises(core.common.errors.InvalidInputError, match=r"layer last .* layer -2"):  # in one graph too
        with torch.inference_mode():
            core.training.trainer.train(m.model, _with_clip_layer(m.clip, -2), m.vae, face_images(2, 64), first,
                                settings(core, steps=1, seed=4))
    with torch.inference_mode():
        same = core.training.trainer.train(m.model, _with_clip_layer(m.clip, -1), m.vae, face_images(2, 64), loaded,
                                   settings(core, steps=1, seed=4)).embedding
    assert same.metadata["steps"] == "3"
    other_family = core.embeddings.embedding.CrossInitEmbedding(loaded.vectors, metadata={**loaded.metadata, "base_model": "sd2-v"})
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^clip: layered.safetensors was trained for SD 2.x .* is SD 1.x"):
        _train(core, m, other_family, 1)
