"""`python -m cross_init_core eval`: bad input exits 2 before any work, the paper's prompts, the graph it runs
per prompt, and the table and contact sheet it writes from the score nodes' real reports."""

from __future__ import annotations

import copy
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import workflow_runner as wr
from helpers import fast_eval_prompt, save_tiny_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ev(pack):
    """The eval command as `python -m cross_init_core eval` imports it (the pack folder on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    import cross_init_core.client.eval.command as module

    return module


@pytest.fixture(scope="module")
def plan(ev):
    import cross_init_core.client.eval.plan as module

    return module


@pytest.fixture(scope="module")
def graph(ev):
    import cross_init_core.client.eval.graph as module

    return module


@pytest.fixture(scope="module")
def evaluation(ev):
    import cross_init_core.client.eval.results as module

    return module


@pytest.fixture()
def face(tmp_path: Path) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path / "me.png"
    Image.fromarray(data.astronaut()).crop(wr.ASTRONAUT_HEAD).save(path)
    return path


def run(ev, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ev.main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, a message naming the input, nothing written


def test_bad_inputs_exit_2_before_any_work(ev, face, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    base = ["eval", "--checkpoint", "v2-1_512-ema-pruned.safetensors", "--embedding", "my_face", "--faces", str(face),
            "--output", str(out)]
    no_placeholder = tmp_path / "prompts.txt"
    no_placeholder.write_text("a {} person on the beach\n\na person in the rain\n", encoding="utf-8")
    broken_photo = tmp_path / "broken.jpg"
    broken_photo.write_bytes(b"not a jpeg")
    cases = {
        "missing face photo": (["--faces", str(tmp_path / "nobody.png")], "nobody.png: file not found"),
        "unreadable face photo": (["--faces", str(broken_photo)], "broken.jpg: not a readable image"),
        "prompt without the person": (["--prompts", str(no_placeholder)], "line 3 has no person marks"),
        "missing prompts file": (["--prompts", str(tmp_path / "none.txt")], "none.txt: no such file"),
        "missing checkpoint file": (["--checkpoint", str(tmp_path / "gone.safetensors")], "gone.safetensors: no such file"),
        "embedding given as a missing path": (["--embedding", "./faces/me.safetensors"],
                                              "--embedding ./faces/me.safetensors: no such file"),
        "N below 1": (["--per-prompt", "0"], "--per-prompt: 0 is out of range"),
        "N not a number": (["--per-prompt", "many"], "'many' is not a whole number"),
        "negative seed": (["--seed", "-1"], "--seed: -1 is out of range"),
        "both prompt-score options": (["--clip-model", "x", "--no-prompt-score"], "not allowed with argument"),
        "local-server options with --server": (["--server", "http://127.0.0.1:9", "--cpu"], "--cpu are for the local ComfyUI"),
        # port 9 (discard) has no ComfyUI
        "a server that does not answer": (["--server", "http://127.0.0.1:9"], "http://127.0.0.1:9: not answering"),
    }
    for what, (extra, message) in cases.items():
        code, stdout, stderr = run(ev, base + extra)
        assert code == 2, (what, stderr)
        assert message in stderr, (what, stderr)
        assert stdout == "" and not out.exists(), what
    # several problems are reported together
    code, _stdout, stderr = run(ev, [*base, "--faces", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--prompts", str(no_placeholder)])
    assert code == 2 and "a.png: file not found" in stderr and "b.png: file not found" in stderr and "line 3" in stderr
    # an earlier run's results are kept unless --overwrite
    out.mkdir()
    (out / "scores.json").write_text("{}", encoding="utf-8")
    code, _stdout, stderr = run(ev, base)
    assert code == 2 and "holds the results of an earlier run" in stderr and "--overwrite" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["scores.json"]


def test_help_names_every_option(ev):
    code, stdout, _stderr = run(ev, ["eval", "--help"])
    assert code == 0
    for option in ("--checkpoint", "--embedding", "--faces", "--prompts", "--per-prompt", "--seed", "--no-prompt-score",
                   "--clip-model", "--identity-backend", "--server", "--lora", "--lora-strength", "EMBEDDING+lora_LORA",
                   "exit codes", "130 stopped with Ctrl-C"):
        assert option in stdout


# ---------------------------------------------------------------------------------------------
# Prompts


def test_paper_prompts_are_the_reference_file(evaluation):
    lines = (REPO / "cross_init_core" / "data" / "eval_prompts.txt").read_text(encoding="utf-8").splitlines()
    reference = (Path(__file__).resolve().parents[2] / "shared" / "data" / "reference" / "eval_prompts.txt")
    if reference.is_file():  # the shipped copy is unchanged
        assert reference.read_bytes() == (REPO / "cross_init_core" / "data" / "eval_prompts.txt").read_bytes()
    prompts = evaluation.read_prompts("paper")
    assert len(prompts) == 20 == len([line for line in lines if line.strip()])
    assert prompts == [line.replace("{}", "<face>") for line in lines if line.strip()]
    assert all(p.count("<face>") == 1 for p in prompts)
    assert evaluation.scored_prompt(prompts[6]) == "a person on the beach"


def test_prompt_files_accept_both_marks_and_comments(evaluation, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n a {} person   reading \n\n<face> in the snow\n", encoding="utf-8")
    assert evaluation.read_prompts(str(path)) == ["a <face> person   reading", "<face> in the snow"]
    from cross_init_core.common.errors import InvalidInputError

    for text, fault in (("a {} and <face>\n", "2 person marks"), ("# only a comment\n", "holds no prompts")):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidInputError, match=fault):
            evaluation.read_prompts(str(path))


def test_comparison_folders_are_distinct(evaluation):
    assert evaluation.name_folders(["me-step0080.safetensors", "me.safetensors"]) == \
        {"me-step0080.safetensors": "me-step0080", "me.safetensors": "me"}
    assert evaluation.name_folders(["me.pt", "me.safetensors", "a/x.safetensors", "b/x.safetensors"]) == \
        {"me.pt": "me.pt", "me.safetensors": "me.safetensors", "a/x.safetensors": "a_x.safetensors", "b/x.safetensors": "b_x.safetensors"}


def test_model_and_embedding_choice(plan):
    assert plan.match_embedding("my_face", ["a.pt", "my_face.safetensors"]) == "my_face.safetensors"
    assert plan.match_embedding("my_face.pt", ["my_face.pt", "my_face.safetensors"]) == "my_face.pt"
    assert plan.match_embedding("other", ["my_face.safetensors"]) is None
    assert plan.choose_clip_model(None, ["a", "clip-vit-base-patch32"], "(none)") == ("clip-vit-base-patch32", None)
    assert plan.choose_clip_model(None, ["only-one"], "(none)") == ("only-one", None)
    model, problem = plan.choose_clip_model(None, ["(none)"], "(none)")
    assert model is None and "clip_scoring" in problem and "--no-prompt-score" in problem
    model, problem = plan.choose_clip_model(None, ["a", "b"], "(none)")
    assert model is None and "--clip-model" in problem
    model, problem = plan.choose_clip_model("c", ["a"], "(none)")
    assert model is None and "--clip-model c" in problem and "found: a" in problem


# ---------------------------------------------------------------------------------------------
# The graph per prompt, run in the real host, and the table built from its reports


def shipped_workflow() -> dict:
    return json.loads((REPO / "workflows" / "api" / "cross_init_eval.json").read_text(encoding="utf-8"))


def test_graph_per_prompt(graph):
    workflow = shipped_workflow()
    settings = graph.EvalGraph(ckpt_name="sd21.safetensors", embedding="me.safetensors", references=["cli/a.png", "cli/b.png"],
                                per_prompt=5, seed=100, backend="dlib", clip_model="tiny-clip", steps=3, resolution=256,
                                prefix="cross_init_eval/me_x")
    prompt = graph.build_prompt(workflow, settings, "a <face> person on the beach", 7)
    assert workflow == shipped_workflow()  # not edited in place
    node = {n["class_type"]: n["inputs"] for n in prompt.values() if n["class_type"] != "PreviewAny"}
    assert node["CheckpointLoaderSimple"]["ckpt_name"] == "sd21.safetensors"
    assert node["CrossInitLoadEmbedding"]["name"] == "me.safetensors"
    # the prompt is typed once, in the text node both read through their sockets: the command fills that node
    (typed,) = wr.nodes_of(prompt, "PrimitiveStringMultiline")
    assert node["PrimitiveStringMultiline"]["value"] == "a <face> person on the beach"
    assert node["CrossInitCLIPTextEncode"]["prompt"] == node["CrossInitPromptScore"]["prompts"] == [typed, 0]
    assert node["EmptyLatentImage"] == {**node["EmptyLatentImage"], "batch_size": 5, "width": 256, "height": 256}
    assert (node["KSampler"]["seed"], node["KSampler"]["steps"], node["KSampler"]["cfg"]) == (107, 3, 7.5)
    assert node["SaveImage"]["filename_prefix"] == "cross_init_eval/me_x/p07"
    assert node["CrossInitIdentityScore"]["backend"] == "dlib" and node["CrossInitPromptScore"]["model"] == "tiny-clip"
    # two reference photos: one image list from the pack's Load Photos, in place of the LoadImage the identity score
    # reads (no ImageBatch, which would crop the second to the first one's shape)
    (photos,) = wr.nodes_of(prompt, "CrossInitLoadPhotos")
    assert node["CrossInitIdentityScore"]["reference"] == [photos, 0]
    assert prompt[photos]["inputs"]["files"] == "cli/a.png\ncli/b.png"
    assert not wr.nodes_of(prompt, "ImageBatch") and not wr.nodes_of(prompt, "LoadImage")
    # without the prompt score its node and its report preview are gone, the rest is unchanged
    settings.clip_model = None
    bare = graph.build_prompt(workflow, settings, "a <face> person", 0)
    assert not wr.nodes_of(bare, "CrossInitPromptScore") and len(wr.nodes_of(bare, "PreviewAny")) == 1
    assert len(bare) == len(prompt) - 2
    # the probe scores the reference photos against themselves and nothing else
    probe = graph.probe_prompt(workflow, ["cli/a.png"], "auto")
    assert {n["class_type"] for n in probe.values()} == {"CrossInitLoadPhotos", "CrossInitIdentityScore", "PreviewAny"}
    # the family check: the checkpoint's CLIP encodes the first prompt with the embedding, and nothing is sampled
    family = graph.family_prompt(workflow, settings, "a <face> person")
    assert {n["class_type"] for n in family.values()} == {"CheckpointLoaderSimple", "CrossInitLoadEmbedding", "PrimitiveStringMultiline",
                                                          "CrossInitCLIPTextEncode", "PreviewAny"}
    (encoder,) = wr.nodes_of(family, "CrossInitCLIPTextEncode")
    assert family[graph.FAMILY_PROBE]["inputs"]["source"] == [encoder, 0]


def test_table_and_contact_sheet_from_real_reports(graph, evaluation, pack, tiny, tmp_path):
    """Two prompts through the eval graph in the host; their /history-shaped outputs feed the table."""
    import folder_paths
    from PIL import Image

    folder = Path(folder_paths.get_folder_paths("clip_scoring")[-1]) / "clip-vit-base-patch32"
    if not (folder / "config.json").is_file():
        save_tiny_clip(folder, seed=11)
    wr.install_face_image("face.png")
    workflow = fast_eval_prompt(batch=2)
    settings = graph.EvalGraph(ckpt_name=workflow["1"]["inputs"]["ckpt_name"], embedding="", references=["face.png"],
                                per_prompt=2, seed=3, backend="dlib", clip_model="clip-vit-base-patch32", steps=1, resolution=64,
                                prefix="cross_init_eval/table_test")
    texts = ["a photo of a <face> person", "cubism painting of a <face> person"]
    table = evaluation.EvalTable(identity={}, prompt_model="clip-vit-base-patch32")
    rows, reports = [], []
    for index, text in enumerate(texts):
        prompt = graph.build_prompt(workflow, settings, text, index)
        with wr.tiny_checkpoint_loader(tiny("sd2"), [settings.ckpt_name]):
            executor = wr.execute(prompt)
        assert executor.success, wr.failure(executor)
        outcome = graph.read_outcome(prompt, executor.history_result["outputs"])
        assert len(outcome.images) == 2 and outcome.identity is not None and outcome.prompt is not None
        files = [f"images/p{index:02d}_i{j:02d}.png" for j in range(2)]
        row = evaluation.add_prompt_result(table, index, text, files, outcome.identity, outcome.prompt)
        reports.append(outcome)
        (saver,) = wr.nodes_of(prompt, "SaveImage")
        rows.append([Image.open(p).convert("RGB") for p in wr.saved_images(executor, saver)])
        assert outcome.prompt["prompt"] == evaluation.scored_prompt(text)
        assert row.prompt_mean == pytest.approx(outcome.prompt["mean"], abs=1e-9)
        assert row.faces_found == outcome.identity["faces_found"] == 0 and row.identity_mean is None
    csv_path, json_path = evaluation.write_table(tmp_path, table, {"seed": 3})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any ordinary file write gets under this process's umask, not a private temp file's 0600
    assert {csv_path.stat().st_mode & 0o777, json_path.stat().st_mode & 0o777} == {plain.stat().st_mode & 0o777}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    lines = list(csv.reader(csv_path.read_text(encoding="utf-8").splitlines()))
    assert lines[0] == [*evaluation.CSV_COLUMNS, *evaluation.MEANING_COLUMNS] and [r[0] for r in lines[1:]] == ["0", "1", "overall"]
    # every row says what its numbers are: dlib distances (lower is better, same person at 0.6), CLIP's model
    assert all(r[6:] == ["dlib", "euclidean", "lower", "0.600000", "clip-vit-base-patch32"] for r in lines[1:]), lines
    all_scores = [e["score"] for o in reports for e in o.prompt["images"]]
    assert float(lines[-1][5]) == pytest.approx(sum(all_scores) / 4, abs=1e-6)
    assert lines[-1][3] == "0" and lines[-1][4] == ""  # no face anywhere: counted, no identity mean
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["identity"]["backend"] == "dlib" and data["identity"]["higher_is_better"] is False
    assert data["identity"]["better"] == "lower" and data["identity"]["face_choice"] == "best match"
    assert data["meaning"] == {"identity_backend": "dlib", "identity_metric": "euclidean", "identity_better": "lower",
                               "identity_threshold": 0.6, "prompt_model": "clip-vit-base-patch32", "prompt_metric": "cosine",
                               "prompt_better": "higher"}
    assert data["overall"]["images"] == 4 and data["overall"]["identity_mean"] is None
    assert [i["prompt_score"] for i in data["images"]] == pytest.approx(all_scores, abs=1e-9)
    assert data["prompts"][1]["scored_prompt"] == "cubism painting of a person"
    sheet = evaluation.contact_sheet(rows, table)
    assert sheet.size == (evaluation.MARGIN + 2 * (evaluation.CELL + evaluation.MARGIN),
                          evaluation.MARGIN + 2 * (evaluation.CAPTION + evaluation.CELL + 16 + evaluation.MARGIN))
    # every image is framed red: no face was found in tiny-model noise
    left, top = evaluation.MARGIN, evaluation.MARGIN + evaluation.CAPTION
    assert sheet.getpixel((left - 1, top + evaluation.CELL // 2)) == (220, 40, 40)
    text = evaluation.format_table(table)
    assert "0/2" in text and "dlib" in text and f"{sum(all_scores) / 4:.4f}" in text
    assert "identity (lower is better)" in text and "clip-vit-base-patch32 (higher is better)" in text


def test_table_pools_identity_over_images_with_a_face(evaluation):
    """Synthetic reports in the node's format: the overall identity is the mean over every image with a face."""
    table = evaluation.EvalTable(identity={}, prompt_model=None)
    meta = {"backend": "insightface", "metric": "cosine", "higher_is_better": True, "threshold": 0.28}
    first = {**meta, "images": [{"index": 0, "face": True, "score": 0.5, "match": True},
                                {"index": 1, "face": False, "score": None, "match": None}]}
    second = {**meta, "images": [{"index": 0, "face": True, "score": 0.2, "match": False},
                                 {"index": 1, "face": True, "score": 0.3, "match": True}]}
    evaluation.add_prompt_result(table, 0, "a <face>", ["a", "b"], first, None)
    evaluation.add_prompt_result(table, 1, "b <face>", ["c", "d"], second, None)
    overall = table.overall()
    assert overall["faces_found"] == 3 and overall["identity_mean"] == pytest.approx((0.5 + 0.2 + 0.3) / 3)
    assert [r.identity_mean for r in table.prompts] == pytest.approx([0.5, 0.25])
    assert overall["prompt_mean"] is None
    other = copy.deepcopy(second)
    other["backend"] = "dlib"
    with pytest.raises(ValueError, match="earlier prompts"):
        evaluation.add_prompt_result(table, 2, "c <face>", ["e", "f"], other, None)
    with pytest.raises(ValueError, match="covers 2 images, 3 were made"):
        evaluation.add_prompt_result(table, 2, "c <face>", ["e", "f", "g"], second, None)


def test_comparison_tables_carry_meaning_faces_and_errors(evaluation, tmp_path):
    """comparison.csv/json and the terminal table: per embedding its faces found, means and error; every row says
    which backend, metric, direction and threshold the identity is in and which CLIP scored the prompt."""
    meta = {"backend": "dlib", "metric": "euclidean", "higher_is_better": False, "threshold": 0.6, "face_choice": "best match"}
    good = evaluation.EvalTable(identity={}, prompt_model="clip-vit-base-patch32")
    for index, scores in enumerate(([0.35, None], [0.7, 0.4])):
        report = {**meta, "images": [{"index": i, "face": s is not None, "score": s, "match": s is not None and s < 0.6,
                                      "faces": 0 if s is None else 2, "face_used": None if s is None else 1}
                                     for i, s in enumerate(scores)]}
        prompt = {"images": [{"index": 0, "score": 0.3}, {"index": 1, "score": 0.2}]}
        evaluation.add_prompt_result(good, index, f"p{index} <face>", ["a", "b"], report, prompt)
    broken = evaluation.EvalTable(identity={}, prompt_model="clip-vit-base-patch32", error="prompt 0 (p0 <face>): boom")
    tables = {"good.safetensors": good, "broken.safetensors": broken}
    folders = evaluation.name_folders(list(tables))
    csv_path, json_path = evaluation.write_comparison(tmp_path, tables, folders, {"complete": False})
    lines = list(csv.reader(csv_path.read_text(encoding="utf-8").splitlines()))
    assert lines[0] == ["prompt_index", "prompt",
                        "good.safetensors:faces_found", "good.safetensors:identity_mean", "good.safetensors:prompt_mean",
                        "good.safetensors:error",
                        "broken.safetensors:faces_found", "broken.safetensors:identity_mean", "broken.safetensors:prompt_mean",
                        "broken.safetensors:error", *evaluation.MEANING_COLUMNS]
    assert lines[1][2:6] == ["1", "0.350000", "0.250000", ""] and lines[2][2:4] == ["2", "0.550000"]
    assert lines[3][0] == "overall" and lines[3][2:4] == ["3", f"{(0.35 + 0.7 + 0.4) / 3:.6f}"]
    assert lines[3][9] == "prompt 0 (p0 <face>): boom"
    assert all(row[10:] == ["dlib", "euclidean", "lower", "0.600000", "clip-vit-base-patch32"] for row in lines[1:])
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["meaning"]["identity_better"] == "lower" and data["meaning"]["prompt_model"] == "clip-vit-base-patch32"
    assert data["embeddings"]["broken.safetensors"]["error"].endswith("boom")
    assert data["embeddings"]["good.safetensors"]["overall"]["faces_found"] == 3
    image = good.images[2]
    assert (image.faces, image.face_used) == (2, 1)
    text = evaluation.format_comparison(tables, folders)
    assert "good id (lower better)" in text and "good faces" in text
    assert "euclidean (lower is better, same person at threshold 0.6" in text and "broken: prompt 0 (p0 <face>): boom" in text


def test_scored_prompt_leaves_no_fragments(evaluation):
    cases = {
        "a photo of <face> person": "a photo of person",  # the paper's protocol, unchanged
        "<face>'s portrait": "the person's portrait",
        "a close-up of <face>\u2019s face, smiling": "a close-up of the person's face, smiling",
        "<face>, smiling on the beach": "smiling on the beach",
        "a painting (<face>) in oil": "a painting in oil",
        "a photo of <face> person as an astronaut <face> ": "a photo of person as an astronaut",
    }
    assert {prompt: evaluation.scored_prompt(prompt) for prompt in cases} == cases


# ---------------------------------------------------------------------------------------------
# Token-only and token + LoRA side by side (--lora)


def test_lora_arguments_are_checked_before_any_work(ev, face, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--checkpoint", "sd15.safetensors", "--embedding", "my_face", "--faces", str(face),
            "--output", str(tmp_path / "out")]
    cases = {
        "a LoRA given as a missing path": (["--lora", "./loras/me.safetensors"], "--lora ./loras/me.safetensors: no such file"),
        "strength 0 (the token-only run)": (["--lora", "me", "--lora-strength", "0"], "0 is out of range"),
        "strength out of the node's range": (["--lora", "me", "--lora-strength", "11"], "11 is out of range"),
        "strength not a number": (["--lora", "me", "--lora-strength", "x"], "'x' is not a number"),
        "strength without a LoRA": (["--lora-strength", "0.5"], "--lora-strength needs --lora"),
    }
    for what, (extra, message) in cases.items():
        code, stdout, stderr = run(ev, base + extra)
        assert code == 2, (what, stderr)
        assert message in stderr, (what, stderr)
        assert stdout == "" and not (tmp_path / "out").exists(), what


def test_lora_runs_are_the_token_runs_with_the_lora_on_the_model(graph, plan):
    """Each embedding's token-only run, then one per LoRA, in folders of their own; a LoRA run's graph is the token-only
    graph (same seed, prompt, sampler, encoder and CLIP) with the pack's LoRA loader between the checkpoint's MODEL
    and the sampler."""
    from cross_init_core.client.eval.run import eval_runs

    runs = eval_runs(["me.safetensors", "me-step0080.safetensors"], ["me.safetensors"])
    assert [(r.key, r.folder, r.lora) for r in runs] == [
        ("me.safetensors", "me", None),
        ("me.safetensors + LoRA me.safetensors", "me+lora_me", "me.safetensors"),
        ("me-step0080.safetensors", "me-step0080", None),
        ("me-step0080.safetensors + LoRA me.safetensors", "me-step0080+lora_me", "me.safetensors")]
    assert plan.match_embeddings(["me", "me-step*"], ["me.safetensors", "me-step0002.safetensors", "me.pt"],
                                 plan.LORA_SUFFIXES) == (["me.safetensors", "me-step0002.safetensors"], [])
    assert plan.match_embedding("me", ["me.pt"], plan.LORA_SUFFIXES) is None  # pickles are no LoRA files here
    workflow = shipped_workflow()
    settings = graph.EvalGraph(ckpt_name="sd15.safetensors", embedding="me.safetensors", references=["cli/a.png"],
                                per_prompt=2, seed=5, clip_model="tiny-clip", steps=3)
    token_only = graph.build_prompt(workflow, settings, "a <face> person", 4)
    settings.lora, settings.lora_strength = "me.safetensors", 0.75
    with_lora = graph.build_prompt(workflow, settings, "a <face> person", 4)
    assert set(with_lora) - set(token_only) == {graph.LORA_NODE}
    (ckpt,) = wr.nodes_of(token_only, "CheckpointLoaderSimple")
    (sampler,) = wr.nodes_of(token_only, "KSampler")
    (encoder,) = wr.nodes_of(token_only, "CrossInitCLIPTextEncode")
    assert with_lora[graph.LORA_NODE]["class_type"] == "CrossInitLoadLoraToken"
    assert with_lora[graph.LORA_NODE]["inputs"] == {"model": [ckpt, 0], "clip": [ckpt, 1], "lora_name": "me.safetensors",
                                                    "strength": 0.75, "token": ""}
    assert with_lora[sampler]["inputs"] == {**token_only[sampler]["inputs"], "model": [graph.LORA_NODE, 0]}
    assert with_lora[sampler]["inputs"]["seed"] == token_only[sampler]["inputs"]["seed"] == 9
    for node_id, node in token_only.items():  # everything else alike: the token from the embedding, the CLIP unchanged
        if node_id != sampler:
            assert with_lora[node_id] == node, node_id
    assert with_lora[encoder]["inputs"]["clip"] == [ckpt, 1]
    # the LoRA check loads the checkpoint and the LoRA, and samples nothing
    probe = graph.lora_prompt(workflow, settings)
    assert {n["class_type"] for n in probe.values()} == {"CheckpointLoaderSimple", "CrossInitLoadLoraToken", "PreviewAny"}


def _lora_file(core, model, token, loras: Path, name: str, seed: int) -> None:
    """A LoRA for `model` made by the pack's own LoRA code (its attention targets, its kohya layout, Save LoRA's
    writer with the token bundled), with nonzero `up` so that it changes what the model samples."""
    targets = core.host.lora_targets(model)
    down, up = core.lora.weights.initial_weights(targets, rank=4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    up = {k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in up.items()}
    lora = core.lora.weights.LoraModel(core.lora.weights.to_state_dict(down, up, 4.0),
                                       {"steps": "1", "base_model": "sd1-eps"}, embedding=token)
    core.lora.files.save_pivotal([(lora, token, name)], loras, None)


@pytest.fixture(scope="module")
def lora_server(pack, core, tiny, tmp_path_factory):
    """A real ComfyUI server with the small real-architecture SD 1.5 checkpoint, an embedding for it, a LoRA for it and
    one for the tiny SD 1 models (same block names, other widths)."""
    import comfy.sd
    from comfy_servers import REAL_CKPT, TestServer, checkpoint_cache, comfyui_folder, make_base, small_checkpoint

    scratch = tmp_path_factory.mktemp("eval_lora")
    checkpoint = small_checkpoint(checkpoint_cache())
    base = make_base(scratch / "base", {REAL_CKPT: checkpoint})
    vectors = {"clip_l": torch.randn(2, 768, generator=torch.Generator().manual_seed(5))}
    token = core.embeddings.embedding.CrossInitEmbedding(vectors=vectors)
    core.embeddings.embedding_io.save_embedding(token, base / "models" / "embeddings", "cli_lora_face")
    loras = base / "models" / "loras"
    loras.mkdir(parents=True)
    model = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=False)[0]
    _lora_file(core, model, token, loras, "cli_lora", seed=1)
    del model
    _lora_file(core, tiny("sd1").model, token, loras, "cli_lora_tiny", seed=2)
    server = TestServer(comfyui_folder(scratch), base).start()
    try:
        yield server.wait()
    finally:
        server.stop()


def test_lora_run_beside_the_token_run_with_the_same_seeds_and_prompts(ev, lora_server, face, tmp_path):
    """`eval --lora` on a real server: the token-only and token + LoRA runs of one embedding, with the same prompts and
    seeds, both in comparison.csv with numbers; the LoRA changes the images. A LoRA the server lacks, and one made for
    other widths, exit 2 naming it before any image."""
    from comfy_servers import REAL_CKPT
    from PIL import Image

    photo = face
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {} person\n", encoding="utf-8")
    out = tmp_path / "cmp"
    argv = ["eval", "--server", lora_server.url, "--checkpoint", REAL_CKPT, "--embedding", "cli_lora_face", "--faces",
            str(photo), "--prompts", str(prompts), "--per-prompt", "1", "--steps", "2", "--resolution", "64",
            "--identity-backend", "dlib", "--no-prompt-score", "--output", str(out), "--no-progress"]
    code, stdout, stderr = run(ev, [*argv, "--lora", "cli_lora", "--lora-strength", "0.8"])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["cli_lora_face", "cli_lora_face+lora_cli_lora", "comparison.csv",
                                                     "comparison.json"]
    with open(out / "comparison.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    lora_key = "cli_lora_face.safetensors + LoRA cli_lora.safetensors"
    assert table[0][2:10] == [f"{key}:{what}" for key in ("cli_lora_face.safetensors", lora_key)
                              for what in ("faces_found", "identity_mean", "prompt_mean", "error")]
    assert [row[0] for row in table[1:]] == ["0", "overall"]
    for row in table[1:]:  # both runs have numbers: faces found (0 or 1 of 1), no error
        assert row[2] in ("0", "1") and row[6] in ("0", "1") and row[5] == row[9] == ""
        assert row[-5:-1] == ["dlib", "euclidean", "lower", "0.600000"]
    data = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert data["run"]["loras"] == ["cli_lora.safetensors"] and data["run"]["lora_strength"] == 0.8
    entries = data["embeddings"]
    assert (entries[lora_key]["embedding"], entries[lora_key]["lora"], entries[lora_key]["lora_strength"]) == (
        "cli_lora_face.safetensors", "cli_lora.safetensors", 0.8)
    assert entries["cli_lora_face.safetensors"]["lora"] is None
    assert entries[lora_key]["overall"]["images"] == entries["cli_lora_face.safetensors"]["overall"]["images"] == 1
    # paired: the same prompt, seed and sampler; the LoRA changed the picture
    runs = [json.loads((out / folder / "scores.json").read_text(encoding="utf-8")) for folder in
            ("cli_lora_face", "cli_lora_face+lora_cli_lora")]
    assert [r["run"]["lora"] for r in runs] == [None, "cli_lora.safetensors"]
    assert runs[0]["run"]["seed"] == runs[1]["run"]["seed"] and runs[0]["run"]["sampler"] == runs[1]["run"]["sampler"]
    assert [p["prompt"] for p in runs[0]["prompts"]] == [p["prompt"] for p in runs[1]["prompts"]]
    token_image, lora_image = (np.asarray(Image.open(out / folder / "images" / "p00_i00.png"), dtype=np.float32)
                               for folder in ("cli_lora_face", "cli_lora_face+lora_cli_lora"))
    assert token_image.shape == lora_image.shape == (64, 64, 3)
    assert np.abs(token_image - lora_image).mean() > 1.0  # of 255
    assert "cli_lora_face+lora_cli_lora id" in stdout

    refused = tmp_path / "refused"
    bad = [str(refused) if v == str(out) else v for v in argv]
    code, stdout, stderr = run(ev, [*bad, "--lora", "no_such_lora"])
    assert code == 2 and "--lora no_such_lora: not in the server's loras folders" in stderr, stderr
    assert "cli_lora.safetensors" in stderr and "ComfyUI/models/loras" in stderr  # what it has, and what to do
    code, stdout, stderr = run(ev, [*bad, "--lora", "cli_lora_tiny"])
    assert code == 2, stderr
    assert f"--lora cli_lora_tiny.safetensors: cannot be used with checkpoint {REAL_CKPT}" in stderr, stderr
    assert "for another model family" in stderr  # the pack's loader: its modules match or fit no layer here
    assert stdout == "" and not refused.exists()
