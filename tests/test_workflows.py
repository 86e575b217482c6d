"""The shipped workflows: UI and API files agree, validate against the node definitions, are up to date,
and run end to end on tiny SD1 (eps), SD2 (v) and SDXL models, including the `embedding:NAME` round trip."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import workflow_runner as wr
from helpers import fast_eval_prompt, save_tiny_clip

REPO = Path(__file__).resolve().parents[1]
STEMS = ("cross_init_fast", "cross_init_full", "cross_init_sdxl_fast", "cross_init_paper")  # training workflows
EVAL_STEM = "cross_init_eval"
CHECKPOINTS_STEM = "cross_init_checkpoints"
PIVOTAL_STEM = "cross_init_pivotal"
ALL_STEMS = (*STEMS, EVAL_STEM, CHECKPOINTS_STEM, PIVOTAL_STEM)
# the tiny host model family each workflow is validated and run with
KIND = {"cross_init_fast": "sd1", "cross_init_full": "sd2", "cross_init_sdxl_fast": "sdxl", "cross_init_paper": "sd2"}
PACK_NODES = {"CrossInitEmbeddingInit", "CrossInitLossSettings", "CrossInitTrainer", "CrossInitCLIPTextEncode", "CrossInitSaveEmbedding"}
STOCK_NODES = {"CheckpointLoaderSimple", "LoadImage", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
               "PreviewImage"}
OUTPUT_NODES = {"SaveImage", "PreviewImage", "CrossInitSaveEmbedding"}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def api_file(stem: str) -> dict:
    return read_json(REPO / "workflows" / "api" / f"{stem}.json")


def ui_file(stem: str) -> dict:
    return read_json(REPO / "workflows" / f"{stem}.json")


@pytest.fixture(scope="module")
def generator(pack):
    """scripts/make_ui_workflows.py as a module (ComfyUI is already booted by `pack`)."""
    spec = importlib.util.spec_from_file_location("make_ui_workflows", REPO / "scripts" / "make_ui_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def face_image(pack) -> Path:
    return wr.install_face_image("face.png")


def expected_pack_nodes(generator) -> set[str]:
    return PACK_NODES | ({generator.FACE_PREP_NODE} if generator.FACE_PREP_NODE else set())


# ---------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.parametrize("stem", ALL_STEMS)
def test_ui_file_converts_back_to_the_api_file(pack, stem):
    ui = ui_file(stem)
    assert ui["version"] == 0.4
    assert wr.link_problems(ui) == []
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"]) and ui["last_link_id"] == len(ui["links"])
    # exactly the same graph: class types, links (source node and slot per input), widget values, titles
    assert wr.ui_to_api(ui) == api_file(stem)


def _box(rect: list[float]) -> tuple[float, float, float, float]:
    return rect[0], rect[1], rect[0] + rect[2], rect[1] + rect[3]


def _overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("stem", ALL_STEMS)
def test_workflow_reads_at_the_zoom_it_opens_at_with_a_group_per_stage(generator, stem):
    """Groups name the stages, left to right, apart; every node sits in one group; no two nodes overlap; each node
    is wide enough for its title; the editor opens it at a zoom where labels read (extra.ds)."""
    ui, layout = ui_file(stem), generator.workflow_ui
    assert ui["extra"]["ds"]["scale"] >= 0.75 and ui["extra"]["ds"]["offset"] == [0, 0]
    groups = ui["groups"]
    titles = [g["title"] for g in groups]
    stages = {EVAL_STEM: generator.EVAL_STAGE_TITLES, CHECKPOINTS_STEM: generator.STAGE_TITLES,
              PIVOTAL_STEM: generator.PIVOTAL_STAGE_TITLES}.get(stem, generator.TRAIN_STAGE_TITLES)
    assert titles == list(stages.values())
    boxes = [_box(g["bounding"]) for g in groups]
    assert all(a[2] < b[0] for a, b in itertools.pairwise(boxes)), "groups overlap or are out of order"
    nodes = [n for n in ui["nodes"] if n["type"] != "Note"]
    for node in nodes:
        rect = _box([*node["pos"], *node["size"]])
        inside = [t for t, b in zip(titles, boxes, strict=True)
                  if b[0] <= rect[0] and rect[2] <= b[2] and b[1] <= rect[1] and rect[3] <= b[3]]
        assert len(inside) == 1, (node["id"], node["type"], inside)
        title = node.get("title") or wr.display_name(node["type"])
        assert node["size"][0] >= layout.TITLE_CHAR_PX * len(title) + layout.TITLE_EXTRA_PX, (node["id"], title)
    rects = [_box([*n["pos"], *n["size"]]) for n in ui["nodes"]]
    clashes = [(a, b) for i, a in enumerate(rects) for b in rects[i + 1:] if _overlap(a, b)]
    assert clashes == []


@pytest.mark.parametrize("stem", ALL_STEMS)
def test_no_deprecated_node_and_no_input_its_defaults_switch_off(pack, stem):
    """Every node exists on this host and is not deprecated here; a trainer gets masks only when the loss settings
    let them count (background_weight below 1)."""
    import nodes

    api = api_file(stem)
    for node in api.values():
        info = wr.node_class(node["class_type"])
        definition = info.GET_NODE_INFO_V1() if hasattr(info, "GET_NODE_INFO_V1") else {}
        display = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node["class_type"], definition.get("display_name", ""))
        assert not definition.get("deprecated") and not getattr(info, "DEPRECATED", False), node["class_type"]
        assert "DEPRECATED" not in str(display).upper(), node["class_type"]
    for trainer in wr.nodes_of(api, "CrossInitTrainer"):
        inputs = api[trainer]["inputs"]
        if "masks" in inputs:
            assert api[inputs["loss"][0]]["inputs"]["background_weight"] < 1.0


@pytest.mark.parametrize("stem", ALL_STEMS)
def test_no_widget_is_fed_by_a_link(pack, stem):
    """Newer frontends (1.5x) hide a widget whose input is linked: every link goes into a socket, and the UI file
    converts no widget into an input."""
    api = api_file(stem)
    fed = [(node_id, name) for node_id, node in api.items() for name, spec, _optional in wr.defined_inputs(node["class_type"])
           if wr.is_widget(spec) and isinstance(node["inputs"].get(name), list)]
    assert fed == []
    assert [(n["id"], i["name"]) for n in ui_file(stem)["nodes"] for i in n.get("inputs", []) if "widget" in i] == []


@pytest.mark.parametrize("stem", STEMS)
def test_node_types_and_input_names_exist(pack, generator, stem):
    api = api_file(stem)
    class_types = {node["class_type"] for node in api.values()}
    assert {t for t in class_types if t.startswith("CrossInit")} == expected_pack_nodes(generator)
    assert class_types - expected_pack_nodes(generator) == STOCK_NODES
    for node_id, node in api.items():
        defined = {name for name, _spec, _optional in wr.defined_inputs(node["class_type"])}
        assert set(node["inputs"]) <= defined, f"node {node_id} ({node['class_type']}): unknown inputs {set(node['inputs']) - defined}"
    (trainer,) = wr.nodes_of(api, "CrossInitTrainer")
    assert api[trainer]["inputs"]["mode"] == generator.WORKFLOWS[stem].mode
    assert sorted(api[n]["inputs"]["filename_prefix"] for n in wr.nodes_of(api, "SaveImage")) == ["cross_init/edit", "cross_init/portrait"]
    texts = sorted(api[n]["inputs"]["text"] for n in wr.nodes_of(api, "CrossInitCLIPTextEncode"))
    assert len(texts) == 2 and all("<face>" in t for t in texts)
    # the UI seed widgets carry the editor's extra control value: fixed for training, any for sampling
    for node in ui_file(stem)["nodes"]:
        if node["type"] in ("CrossInitTrainer", "KSampler"):
            widgets = dict(zip(wr.widget_layout(node["type"]), node["widgets_values"], strict=True))
            control = widgets[("seed", "control_after_generate")]
            assert control == "fixed" if node["type"] == "CrossInitTrainer" else control in ("fixed", "randomize")


@pytest.mark.parametrize("stem", STEMS)
def test_workflows_validate_with_comfyui(pack, tiny, face_image, stem):
    api = api_file(stem)
    ckpts = [api[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(api, "CheckpointLoaderSimple")]
    with wr.tiny_checkpoint_loader(tiny(KIND[stem]), ckpts):
        ok, error, outputs, node_errors = wr.validate(api)
        assert ok, (error, node_errors)
        assert node_errors == {}
        assert set(outputs) == {n for n, node in api.items() if node["class_type"] in OUTPUT_NODES}
        # ComfyUI 0.3.75 does not check V3 combo values (the pack's own combos): the runner does
        assert wr.widget_value_problems(api) == []
        broken = copy.deepcopy(api)
        (trainer,) = wr.override(broken, "CrossInitTrainer", mode="turbo")
        assert [p for p in wr.widget_value_problems(broken) if p.startswith(f"node {trainer} ") and "'turbo'" in p]
        # and the host does check ranges and files: bad values are reported on their nodes
        (init,) = wr.override(broken, "CrossInitEmbeddingInit", num_tokens=99)
        (photo,) = wr.override(broken, "LoadImage", image="no_such_photo.png")
        ok, _error, _outputs, node_errors = wr.validate(broken)
        assert not ok and {init, photo} <= set(node_errors)


def test_sdxl_workflow_is_set_up_for_sdxl(generator):
    """Same graph as the SD fast workflow; only the checkpoint and the 1024 px sizes differ."""
    sd, sdxl = api_file("cross_init_fast"), api_file("cross_init_sdxl_fast")
    assert sd.keys() == sdxl.keys()
    differences = {(n, name): (sd[n]["inputs"][name], sdxl[n]["inputs"][name])
                   for n in sd for name in sd[n]["inputs"] if sd[n]["inputs"][name] != sdxl[n]["inputs"].get(name)}
    (ckpt,) = wr.nodes_of(sdxl, "CheckpointLoaderSimple")
    (trainer,) = wr.nodes_of(sdxl, "CrossInitTrainer")
    (latent,) = wr.nodes_of(sdxl, "EmptyLatentImage")
    expected = {
        (ckpt, "ckpt_name"): ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"),
        (trainer, "resolution"): (512, 1024),
        (latent, "width"): (512, 1024),
        (latent, "height"): (512, 1024),
    }
    for prep in wr.nodes_of(sdxl, "CrossInitFacePrep"):
        expected[(prep, "crop_size")] = (512, 1024)
    assert differences == expected
    assert sdxl[trainer]["inputs"]["mode"] == "fast"
    assert "SDXL" in ui_file("cross_init_sdxl_fast")["nodes"][-1]["widgets_values"][0]


def test_generated_files_are_up_to_date(generator):
    files = generator.render_all()
    assert len(files) == 2 * len(ALL_STEMS)
    for path, text in files.items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is out of date: run scripts/make_ui_workflows.py"
    # one copy of each workflow: ComfyUI's template browser reads workflows/ itself
    assert not (REPO / "example_workflows").exists()


@pytest.mark.parametrize("stem", [*STEMS, CHECKPOINTS_STEM, PIVOTAL_STEM])
def test_trainer_fields_are_at_0_and_run_the_preset(core, stem):
    """No number shown that does not run: the preset's fields stay at 0 (= the preset's value)."""
    prompt = api_file(stem)
    (trainer,) = wr.nodes_of(prompt, "CrossInitTrainer")
    t = prompt[trainer]["inputs"]
    assert (t["steps"], t["batch_size"], t["learning_rate"]) == (0, 0, 0.0)
    preset = core.common.settings.PRESETS[t["mode"]]
    chosen = core.common.settings.resolve(t["mode"], t["steps"], t["batch_size"], t["learning_rate"], 0)
    assert (chosen.steps, chosen.batch_size, chosen.learning_rate) == (preset.steps, preset.batch_size, preset.learning_rate)


def test_every_workflow_has_its_template_thumbnail():
    """ComfyUI's template browser shows workflows/<name>.jpg beside <name>.json (scripts/make_thumbnails.py)."""
    from PIL import Image

    assert sorted(p.stem for p in (REPO / "workflows").glob("*.jpg")) == sorted(ALL_STEMS)
    for stem in ALL_STEMS:
        with Image.open(REPO / "workflows" / f"{stem}.jpg") as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.width == 512 and 64 <= thumbnail.height <= 512, stem


def test_check_flag_detects_drift(generator, tmp_path, monkeypatch):
    monkeypatch.setattr(generator, "API_DIR", tmp_path / "api")
    monkeypatch.setattr(generator, "UI_DIRS", (tmp_path / "workflows",))
    assert generator.main(["--check"]) == 1  # nothing written yet
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    edited = tmp_path / "workflows" / f"{STEMS[0]}.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace('"cross_init/edit"', '"cross_init/edited"'), encoding="utf-8")
    assert generator.main(["--check"]) == 1


def test_check_command_line():
    """The script as CI runs it: boots its own headless ComfyUI and finds the shipped files up to date."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_ui_workflows.py"), "--check"],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ui_files_are_the_same_on_every_host(generator):
    """Outputs that only some ComfyUI versions define (SaveImage/PreviewImage: IMAGE from 0.33) are not written,
    every other node lists exactly its definition's outputs, and a graph linking from an unwritten output is
    refused by name rather than written with a dangling link."""
    ui = generator.workflow_ui
    for stem in ALL_STEMS:
        for node in ui_file(stem)["nodes"]:
            if node["type"] in ui.HOST_DEPENDENT_OUTPUTS:
                assert node["outputs"] == [], (stem, node["id"])
            elif node["type"] != "Note":
                info = ui.node_info(node["type"])
                assert [(o["name"], o["type"]) for o in node["outputs"]] == [
                    (ui.plain(n), ui.plain(t)) for n, t in zip(info["output_name"], info["output"], strict=True)
                ], (stem, node["id"])
    graph = generator.Graph()
    photo = graph.add("LoadImage", {"image": "face.png"})
    preview = graph.add("PreviewImage", {"images": [photo, 0]})
    graph.add("PreviewImage", {"images": [preview, 0]})
    with pytest.raises(ValueError, match=r"node 3 \(PreviewImage\): input images links output 0 of node 2 \(PreviewImage\)"):
        ui.api_to_ui(graph.nodes)


# ---------------------------------------------------------------------------------------------
# End to end on tiny models


@pytest.mark.parametrize(
    ("stem", "kind", "widths"),
    [
        ("cross_init_fast", "sd1", {"clip_l": 64}),
        ("cross_init_full", "sd2", {"clip_h": 64}),
        ("cross_init_sdxl_fast", "sdxl", {"clip_l": 64, "clip_g": 96}),
        ("cross_init_paper", "sd2", {"clip_h": 64}),
    ],
)
def test_workflow_runs_end_to_end(pack, tiny, face_image, embeddings_dir, stem, kind, widths):
    from PIL import Image
    from safetensors import safe_open

    import nodes

    prompt = api_file(stem)
    name = f"wf_{stem}_{kind}"
    # speed overrides on the loaded dict only; the shipped files keep their presets
    (trainer,) = wr.override(prompt, "CrossInitTrainer", mode="custom", steps=2, batch_size=1, resolution=64)
    (saver,) = wr.override(prompt, "CrossInitSaveEmbedding", name=name, overwrite=True)
    wr.override(prompt, "KSampler", steps=1)
    wr.override(prompt, "EmptyLatentImage", width=64, height=64)
    if wr.nodes_of(prompt, "CrossInitFacePrep"):
        wr.override(prompt, "CrossInitFacePrep", crop_size=64)
    ckpts = [prompt[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(prompt, "CheckpointLoaderSimple")]
    with wr.tiny_checkpoint_loader(tiny(kind), ckpts):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    assert any(event == "execution_success" for event, _ in executor.status_messages)

    # the embedding file: one tensor per encoder, [tokens, width] (SDXL: clip_l and clip_g)
    path = embeddings_dir / f"{name}.safetensors"
    assert path.is_file()
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(widths)
        saved = {key: handle.get_tensor(key) for key in widths}
    trained = wr.node_output(executor, trainer, 0)
    for key, width in widths.items():
        assert list(saved[key].shape) == [2, width] and torch.isfinite(saved[key]).all()
        assert torch.equal(trained.vectors[key], saved[key])
    assert wr.node_output(executor, saver, 0) == str(path)

    # the renders and the loss curve
    for node_id in wr.nodes_of(prompt, "SaveImage"):
        (image,) = wr.saved_images(executor, node_id)
        folder, prefix = prompt[node_id]["inputs"]["filename_prefix"].split("/")
        assert image.is_file() and image.parent.name == folder and image.name.startswith(f"{prefix}_")
        with Image.open(image) as png:
            assert png.format == "PNG" and png.size == (64, 64)
    for node_id in wr.nodes_of(prompt, "PreviewImage"):
        assert all(p.is_file() for p in wr.saved_images(executor, node_id)) and wr.saved_images(executor, node_id)

    # embedding:NAME in a stock CLIPTextEncode == the pack's encoder with the trained embedding
    import tiny_models

    encoder = nodes.NODE_CLASS_MAPPINGS["CrossInitCLIPTextEncode"]
    with torch.inference_mode():
        clip = tiny_models.build_clip(kind, embedding_directory=str(embeddings_dir))
        (stock,) = nodes.CLIPTextEncode().encode(clip, f"a photo of embedding:{name} person, portrait")
        ours = encoder.execute(clip, trained, "a photo of <face> person, portrait", "<face>").result[0]
        (plain,) = nodes.CLIPTextEncode().encode(clip, "a photo of person, portrait")
    assert stock[0][0].shape == ours[0][0].shape == (1, 77, sum(widths.values()))
    torch.testing.assert_close(stock[0][0], ours[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stock[0][1]["pooled_output"], ours[0][1]["pooled_output"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(stock[0][0], plain[0][0], atol=1e-3)  # the file was really spliced in
    if kind == "sdxl":  # the pooled output (ADM input) comes from the learned clip_g vectors
        assert stock[0][1]["pooled_output"].shape == (1, widths["clip_g"])
        assert not torch.allclose(stock[0][1]["pooled_output"], plain[0][1]["pooled_output"], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The paper's workflow and the evaluation workflow


def paper_prompts() -> list[str]:
    text = (REPO / "cross_init_core" / "data" / "eval_prompts.txt").read_text(encoding="utf-8")
    return [line.replace("{}", "<face>") for line in text.splitlines() if line.strip()]


def test_paper_workflow_samples_as_the_paper():
    """SD 2.1-base, full preset, DPM-Solver++ (2M) 50 steps, CFG 7.5, no negative prompt, 512 px, the paper's prompts."""
    api = api_file("cross_init_paper")
    (ckpt,) = wr.nodes_of(api, "CheckpointLoaderSimple")
    assert api[ckpt]["inputs"]["ckpt_name"] == "v2-1_512-ema-pruned.safetensors"
    (trainer,) = wr.nodes_of(api, "CrossInitTrainer")
    assert api[trainer]["inputs"]["mode"] == "full" and api[trainer]["inputs"]["resolution"] == 512
    samplers = wr.nodes_of(api, "KSampler")
    assert len(samplers) == 2
    for node_id in samplers:
        inputs = api[node_id]["inputs"]
        assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"]) == (50, 7.5, "dpmpp_2m", "sgm_uniform")
        negative = api[inputs["negative"][0]]
        assert negative["class_type"] == "CLIPTextEncode" and negative["inputs"]["text"] == ""
        positive = api[inputs["positive"][0]]
        assert positive["class_type"] == "CrossInitCLIPTextEncode" and positive["inputs"]["text"] in paper_prompts()
    (latent,) = wr.nodes_of(api, "EmptyLatentImage")
    assert (api[latent]["inputs"]["width"], api[latent]["inputs"]["height"]) == (512, 512)
    (init,) = wr.nodes_of(api, "CrossInitEmbeddingInit")
    assert api[init]["inputs"]["name_list"] == "reference" and api[init]["inputs"]["names"] == ""


def test_sgm_uniform_gives_the_reference_schedulers_sigmas(pack):
    """The reference samples with diffusers' DPMSolverMultistepScheduler defaults: timesteps
    linspace(0, 999, 51) rounded, from 999 down, the last left out, then sigma 0. ComfyUI's sgm_uniform
    matches that to the rounding of the timesteps; `normal` and `karras` do not."""
    import comfy.model_sampling
    import comfy.samplers
    import numpy as np

    sampling = comfy.model_sampling.ModelSamplingDiscrete(None)  # SD's scaled-linear betas 0.00085..0.012
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    timesteps = np.linspace(0, 999, 51).round()[::-1][:-1].astype(int)
    expected = np.append(((1 - alphas_cumprod[timesteps]) / alphas_cumprod[timesteps]) ** 0.5, 0.0)
    got = {name: comfy.samplers.calculate_sigmas(sampling, name, 50).double().numpy() for name in ("sgm_uniform", "normal", "karras")}
    assert got["sgm_uniform"].shape == expected.shape
    np.testing.assert_allclose(got["sgm_uniform"], expected, rtol=0.02, atol=1e-6)
    for other in ("normal", "karras"):
        assert np.abs(got[other][:-1] / expected[:-1] - 1).max() > 0.1


@pytest.fixture(scope="module")
def eval_setup(pack, embeddings_dir):
    """An SD 2.x embedding file (random [2, 1024] clip_h vectors, for validation: the loader checks the real
    widths) and a tiny full CLIP in the documented models/clip_scoring/clip-vit-base-patch32/ layout."""
    import folder_paths
    from safetensors.torch import save_file

    vectors = torch.randn(2, 1024, generator=torch.Generator().manual_seed(7))
    save_file({"clip_h": vectors}, str(embeddings_dir / "eval_face.safetensors"))
    folder = Path(folder_paths.get_folder_paths("clip_scoring")[-1]) / "clip-vit-base-patch32"
    if not (folder / "config.json").is_file():
        save_tiny_clip(folder, seed=11)
    wr.install_face_image("face.png")
    return "eval_face.safetensors"


def test_eval_workflow_is_set_up_as_the_paper_evaluates():
    api = api_file(EVAL_STEM)
    (sampler,) = wr.nodes_of(api, "KSampler")
    inputs = api[sampler]["inputs"]
    assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"]) == (50, 7.5, "dpmpp_2m", "sgm_uniform")
    assert api[inputs["negative"][0]]["inputs"]["text"] == ""
    # the prompt is typed once, in a text node linked into the encoder's and the prompt score's labelled sockets (no
    # widget fed by a link: newer frontends hide those), so the score sees what the images were made from
    (encoder,) = wr.nodes_of(api, "CrossInitCLIPTextEncode")
    (scorer,) = wr.nodes_of(api, "CrossInitPromptScore")
    (typed,) = wr.nodes_of(api, "PrimitiveStringMultiline")
    assert api[encoder]["inputs"]["prompt"] == api[scorer]["inputs"]["prompts"] == [typed, 0]
    assert api[encoder]["inputs"]["text"] == api[scorer]["inputs"]["prompt"] == ""  # no second copy shown
    assert api[typed]["inputs"]["value"] in paper_prompts()
    (identity,) = wr.nodes_of(api, "CrossInitIdentityScore")
    decoded = api[identity]["inputs"]["images"]
    assert api[scorer]["inputs"]["images"] == decoded and api[decoded[0]]["class_type"] == "VAEDecode"
    assert api[api[identity]["inputs"]["reference"][0]]["class_type"] == "LoadImage"
    shown = {tuple(api[n]["inputs"]["source"]) for n in wr.nodes_of(api, "PreviewAny")}
    assert shown == {(identity, 1), (scorer, 1)}


def test_eval_workflow_validates_with_comfyui(pack, tiny, eval_setup):
    api = api_file(EVAL_STEM)
    wr.override(api, "CrossInitLoadEmbedding", name=eval_setup)
    with wr.tiny_checkpoint_loader(tiny("sd2"), [api[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(api, "CheckpointLoaderSimple")]):
        ok, error, _outputs, node_errors = wr.validate(api)
        assert ok and node_errors == {}, (error, node_errors)
        assert wr.widget_value_problems(api) == []
        broken = copy.deepcopy(api)
        (scorer,) = wr.override(broken, "CrossInitPromptScore", model="no-such-clip")
        _ok, _error, outputs, node_errors = wr.validate(broken)
        # the host refuses the score's branch (its report preview) with the folder named; the rest may still run
        assert scorer in node_errors and "clip_scoring" in str(node_errors[scorer])
        assert not [n for n in outputs if broken[n]["inputs"].get("source") == [scorer, 1]]


def test_eval_workflow_runs_end_to_end(pack, tiny, eval_setup, core):
    """Renders with the embedding and scores them: the reports cover every image, the prompt score equals the
    score of the decoded batch, and tiny-model noise has no face (counted, left out of the mean)."""
    prompt = fast_eval_prompt(batch=3)
    with wr.tiny_checkpoint_loader(tiny("sd2"), [prompt[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(prompt, "CheckpointLoaderSimple")]):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    outputs = executor.history_result["outputs"]
    (identity,) = wr.nodes_of(prompt, "CrossInitIdentityScore")
    (scorer,) = wr.nodes_of(prompt, "CrossInitPromptScore")
    reports = {tuple(prompt[n]["inputs"]["source"]): json.loads(outputs[n]["text"][0]) for n in wr.nodes_of(prompt, "PreviewAny")}
    id_report, pr_report = reports[(identity, 1)], reports[(scorer, 1)]
    assert id_report["backend"] == "dlib" and id_report["faces_found"] == 0 and id_report["mean"] is None
    assert [e["face"] for e in id_report["images"]] == [False] * 3
    (decode,) = wr.nodes_of(prompt, "VAEDecode")
    images = wr.node_output(executor, decode, 0)
    assert tuple(images.shape) == (3, 64, 64, 3)
    (typed,) = wr.nodes_of(prompt, "PrimitiveStringMultiline")
    direct = core.scoring.score_prompt(images, prompt[typed]["inputs"]["value"], "clip-vit-base-patch32")
    assert pr_report["prompt"] == "a photo of a person"
    expected = [e["score"] for e in json.loads(direct.report_json())["images"]]
    assert [e["score"] for e in pr_report["images"]] == pytest.approx(expected, abs=1e-6)
    assert wr.node_output(executor, scorer, 0) == pytest.approx(direct.mean, abs=1e-6)
    (saver,) = wr.nodes_of(prompt, "SaveImage")
    assert len(wr.saved_images(executor, saver)) == 3
    # the embedding really conditions the images: without it (plain CLIPTextEncode of the same words) they differ
    plain = copy.deepcopy(prompt)
    (encoder,) = wr.nodes_of(plain, "CrossInitCLIPTextEncode")
    clip_link = plain[encoder]["inputs"]["clip"]
    plain[encoder] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_link, "text": "a photo of a person"}, "_meta": {"title": "x"}}
    with wr.tiny_checkpoint_loader(tiny("sd2"), [prompt[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(prompt, "CheckpointLoaderSimple")]):
        other = wr.execute(plain)
    assert other.success, wr.failure(other)
    assert not torch.allclose(wr.node_output(other, decode, 0), images, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The checkpoints workflow: train, score every checkpoint, report, save the best


def test_checkpoints_workflow_is_set_up_to_pick_the_best_step(generator):
    api = api_file(CHECKPOINTS_STEM)
    (trainer,) = wr.nodes_of(api, "CrossInitTrainer")
    assert api[trainer]["inputs"]["mode"] == "full" and api[trainer]["inputs"]["save_every"] == 80
    checkpoints = [trainer, 2]
    encoders = wr.nodes_of(api, "CrossInitCLIPTextEncode")
    assert [api[n]["inputs"]["embedding"] for n in encoders] == [checkpoints] * 3  # each prompt, each checkpoint
    # each prompt typed once: a text node into its encoder's socket and, through Sample Batch, the prompt score's
    typed = [api[n]["inputs"]["prompt"] for n in encoders]
    texts = [api[t[0]]["inputs"]["value"] for t in typed]
    assert [api[t[0]]["class_type"] for t in typed] == ["PrimitiveStringMultiline"] * 3
    assert all(api[n]["inputs"]["text"] == "" for n in encoders)
    assert texts == list(generator.CHECKPOINT_PROMPTS) and set(texts) <= set(paper_prompts())
    assert texts[0] == "a photo of a <face> person"  # a plain prompt, then two edited ones
    (identity,) = wr.nodes_of(api, "CrossInitIdentityScore")
    (scorer,) = wr.nodes_of(api, "CrossInitPromptScore")
    (batch_node,) = wr.nodes_of(api, "CrossInitSampleBatch")
    batch = api[batch_node]["inputs"]
    assert api[scorer]["inputs"]["prompts"] == [batch_node, 1] and api[scorer]["inputs"]["prompt"] == ""
    assert [batch[f"prompt_{i}"] for i in (1, 2, 3)] == typed  # the batch's prompts, in order, one per image
    samplers = [api[api[batch[f"image_{i}"][0]]["inputs"]["samples"][0]]["inputs"]["positive"][0] for i in (1, 2, 3)]
    assert samplers == encoders  # the batch holds prompt 1, 2, 3 in that order
    assert not wr.nodes_of(api, "ImageBatch")  # deprecated in ComfyUI 0.33
    assert api[identity]["inputs"]["reference"] == api[trainer]["inputs"]["images"]  # the photos trained on
    assert api[identity]["inputs"]["images"] == api[scorer]["inputs"]["images"] == [batch_node, 0]
    (report,) = wr.nodes_of(api, "CrossInitCheckpointReport")
    assert api[report]["inputs"]["checkpoints"] == checkpoints
    assert (api[report]["inputs"]["identity"], api[report]["inputs"]["prompt"]) == ([identity, 1], [scorer, 1])
    (saver,) = wr.nodes_of(api, "CrossInitSaveEmbedding")  # the name typed once; the best saved as NAME-best
    saved = api[saver]["inputs"]
    assert (saved["name"], saved["embedding"], saved["best"]) == ("my_face", checkpoints, [report, 3])


def test_checkpoints_workflow_runs_end_to_end(pack, tiny, eval_setup, embeddings_dir, core):
    """One queue on tiny models: checkpoints every 2 steps, three samples each, scored (identity against the photos
    trained on, the prompt score line by line), the report, every checkpoint and the best one saved."""
    from safetensors import safe_open

    prompt = api_file(CHECKPOINTS_STEM)
    (trainer,) = wr.override(prompt, "CrossInitTrainer", mode="custom", steps=4, batch_size=1, resolution=64, save_every=2,
                             preview_every=0)
    wr.override(prompt, "CrossInitFacePrep", crop_size=160)  # references large enough for dlib's face finder
    wr.override(prompt, "KSampler", steps=1)
    wr.override(prompt, "EmptyLatentImage", width=64, height=64)
    wr.override(prompt, "CrossInitIdentityScore", backend="dlib")
    wr.override(prompt, "CrossInitSaveEmbedding", name="wf_ckpt")
    with wr.tiny_checkpoint_loader(tiny("sd1"), [prompt[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(prompt, "CheckpointLoaderSimple")]):
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    assert wr.node_output(executor, trainer, 2).metadata["steps"] == "2"  # the checkpoints list, first item
    assert sorted(p.name for p in embeddings_dir.glob("wf_ckpt*")) == [
        "wf_ckpt-best.safetensors", "wf_ckpt-step0002.safetensors", "wf_ckpt-step0004.safetensors", "wf_ckpt.safetensors"]
    (report,) = wr.nodes_of(prompt, "CrossInitCheckpointReport")
    data = json.loads(wr.node_output(executor, report, 1))
    assert [c["step"] for c in data["checkpoints"]] == [2, 4] and data["identity"]["backend"] == "dlib"
    assert all(c["faces"] == "0/3" and c["identity"] is None for c in data["checkpoints"])  # tiny-model noise: no faces
    prompts = [c["prompt"] for c in data["checkpoints"]]
    assert all(isinstance(v, float) for v in prompts)
    assert data["best_step"] == data["checkpoints"][max(range(2), key=lambda i: (prompts[i], -i))]["step"]  # no identity: prompt
    best_file = embeddings_dir / f"wf_ckpt-step{data['best_step']:04d}.safetensors"
    with safe_open(str(embeddings_dir / "wf_ckpt-best.safetensors"), framework="pt") as a, safe_open(str(best_file), framework="pt") as b:
        assert torch.equal(a.get_tensor("clip_l"), b.get_tensor("clip_l")) and a.metadata()["steps"] == str(data["best_step"])
    plot = wr.node_output(executor, report, 2)
    assert plot.shape[0] == 1 and plot.shape[-1] == 3
    assert "<- best" in wr.node_output(executor, report, 0)
    # the prompt score saw each sample with its own prompt, one line per image (the first checkpoint's report)
    (scorer,) = wr.nodes_of(prompt, "CrossInitPromptScore")
    first = json.loads(wr.node_output(executor, scorer, 1))
    lines = ["a photo of a person", "a person on the beach", "cubism painting of a person"]
    assert first["prompt"] == lines and [e["prompt"] for e in first["images"]] == lines
    assert first["mean"] == pytest.approx(prompts[0], abs=1e-6)


def test_notes_and_readme_say_run_and_give_the_editors_recipe():
    """Both frontends label the button Run; the checkpoints Note and the README give the editor's going-on recipe."""
    for stem in ALL_STEMS:
        (note,) = [n for n in ui_file(stem)["nodes"] if n["type"] == "Note"]
        text = note["widgets_values"][0]
        assert "Run" in text and "Queue" not in text, stem
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "**Queue**" not in readme and "Press **Run**" in readme
    assert "Load Image Dataset from Folder" in readme  # several photos, in the Quick start
    note = next(n for n in ui_file(CHECKPOINTS_STEM)["nodes"] if n["type"] == "Note")["widgets_values"][0]
    for text in (note, readme):
        assert "Load Embedding" in text and "custom" in text and "steps to add" in text and "overwrite" in text
    assert "pip install dlib-bin face-recognition-models" in note and "models/clip_scoring/" in note


# ---------------------------------------------------------------------------------------------
# The pivotal workflow: the token, a LoRA around it, both sampled side by side


@pytest.fixture
def loras_dir(pack) -> Path:
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("loras")[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pivotal_pairs(api: dict) -> dict[str, dict[str, str]]:
    """prompt text -> {"token" | "lora": the KSampler}, read from the links (each sampler's positive encoder and model)."""
    (stage,) = wr.nodes_of(api, "CrossInitPivotalLora")
    pairs: dict[str, dict[str, str]] = {}
    for sampler in wr.nodes_of(api, "KSampler"):
        inputs = api[sampler]["inputs"]
        text = api[inputs["positive"][0]]["inputs"]["text"]
        which = "lora" if inputs["model"] == [stage, 1] else "token"
        assert which not in pairs.setdefault(text, {}), (text, which)
        pairs[text][which] = sampler
    return pairs


def test_pivotal_workflow_compares_the_token_alone_with_token_and_lora(generator, core):
    api = api_file(PIVOTAL_STEM)
    (ckpt,) = wr.nodes_of(api, "CheckpointLoaderSimple")
    (trainer,) = wr.nodes_of(api, "CrossInitTrainer")
    (stage,) = wr.nodes_of(api, "CrossInitPivotalLora")
    assert api[ckpt]["inputs"]["ckpt_name"] == generator.CHECKPOINT and api[trainer]["inputs"]["mode"] == "fast"
    assert api[api[trainer]["inputs"]["images"][0]]["class_type"] == "CrossInitFacePrep"
    # the LoRA stage: the host's models, the photos the token was trained on, the trainer's token as the pivot
    lora = api[stage]["inputs"]
    assert (lora["model"], lora["clip"], lora["vae"]) == ([ckpt, 0], [ckpt, 1], [ckpt, 2])
    assert lora["images"] == api[trainer]["inputs"]["images"] and lora["embedding"] == [trainer, 0]
    assert lora["mode"] == "fast" and lora["token_learning_rate"] == 0.0 and lora["resolution"] == 512
    fast = core.lora.settings.PRESETS["fast"]  # the custom-mode fields show the numbers the fast preset runs
    assert (lora["rank"], lora["alpha"], lora["learning_rate"], lora["steps"], lora["batch_size"]) == (
        fast.rank, fast.alpha, fast.learning_rate, fast.steps, fast.batch_size)
    # two prompts of the paper's list, a plain one and an edit, each sampled with the host model and the stage's
    pairs = pivotal_pairs(api)
    assert list(pairs) == ["a photo of a <face> person", "cubism painting of a <face> person"]
    assert set(pairs) <= set(paper_prompts()) and all(set(p) == {"token", "lora"} for p in pairs.values())
    samplers = [api[s]["inputs"] for p in pairs.values() for s in p.values()]
    assert [s["model"] for s in samplers] == [[ckpt, 0], [stage, 1]] * 2
    for pair in pairs.values():  # the model is the only difference within a pair
        token, with_lora = (dict(api[pair[k]]["inputs"]) for k in ("token", "lora"))
        assert {k: v for k, v in token.items() if k != "model"} == {k: v for k, v in with_lora.items() if k != "model"}
    assert {s["seed"] for s in samplers} == {generator.SAMPLER_SEED}
    assert len({json.dumps(s["negative"]) for s in samplers}) == len({json.dumps(s["latent_image"]) for s in samplers}) == 1
    encoders = wr.nodes_of(api, "CrossInitCLIPTextEncode")
    assert len(encoders) == 2 and all(api[e]["inputs"]["embedding"] == [trainer, 0] for e in encoders)
    # each pair stitched left (token alone) to right (token + LoRA) and saved as one picture per prompt
    saved = {}
    for saver in wr.nodes_of(api, "SaveImage"):
        stitch = api[api[saver]["inputs"]["images"][0]]
        assert stitch["class_type"] == "ImageStitch" and stitch["inputs"]["direction"] == "right"
        assert stitch["inputs"]["match_image_size"] is False  # no resize of one side only: the pixels as sampled
        left, right = (api[api[stitch["inputs"][k][0]]["inputs"]["samples"][0]] for k in ("image1", "image2"))
        saved[api[saver]["inputs"]["filename_prefix"]] = (left["inputs"]["model"], right["inputs"]["model"],
                                                          api[left["inputs"]["positive"][0]]["inputs"]["text"])
    assert saved == {"cross_init_pivotal/plain": ([ckpt, 0], [stage, 1], "a photo of a <face> person"),
                     "cross_init_pivotal/edit": ([ckpt, 0], [stage, 1], "cubism painting of a <face> person")}
    # one save: the LoRA with the token bundled, and the token's copy in models/embeddings under the same name
    assert not wr.nodes_of(api, "CrossInitSaveEmbedding")
    (save,) = wr.nodes_of(api, "CrossInitSaveLora")
    assert api[save]["inputs"]["lora"] == [stage, 0] and api[save]["inputs"]["bundle_token"] is True
    assert api[save]["inputs"]["name"] == generator.PIVOTAL_NAME != generator.EMBEDDING_NAME
    # the editor keeps the training seeds and the pairs' seed fixed run after run (randomize would split a pair)
    controls = {n["type"]: set() for n in ui_file(PIVOTAL_STEM)["nodes"]}
    for node in ui_file(PIVOTAL_STEM)["nodes"]:
        if node["type"] in ("KSampler", "CrossInitTrainer", "CrossInitPivotalLora"):
            widgets = dict(zip(wr.widget_layout(node["type"]), node["widgets_values"], strict=True))
            controls[node["type"]].add(widgets[("seed", "control_after_generate")])
    assert {k: v for k, v in controls.items() if v} == {t: {"fixed"} for t in ("KSampler", "CrossInitTrainer", "CrossInitPivotalLora")}
    note = next(n for n in ui_file(PIVOTAL_STEM)["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "not measured" in note and f"embedding:{generator.PIVOTAL_NAME}" in note and "all four" in note


def test_pivotal_workflow_runs_end_to_end(pack, tiny, face_image, embeddings_dir, loras_dir):
    """The shipped graph on tiny SD1 models: the token and the LoRA train, the LoRA file (token bundled) and the
    token's copy are written, and each saved picture is the token-alone sample beside the token + LoRA one."""
    from PIL import Image
    from safetensors import safe_open

    prompt = api_file(PIVOTAL_STEM)
    name = "wf_pivotal"
    (trainer,) = wr.override(prompt, "CrossInitTrainer", mode="custom", steps=2, batch_size=1, resolution=64, preview_every=0)
    (stage,) = wr.override(prompt, "CrossInitPivotalLora", mode="custom", rank=2, alpha=2.0, learning_rate=0.05, steps=2,
                           batch_size=1, resolution=64, preview_every=0)
    (save,) = wr.override(prompt, "CrossInitSaveLora", name=name, overwrite=True)
    wr.override(prompt, "KSampler", steps=1)
    wr.override(prompt, "EmptyLatentImage", width=64, height=64)
    wr.override(prompt, "CrossInitFacePrep", crop_size=64)
    ckpts = [prompt[n]["inputs"]["ckpt_name"] for n in wr.nodes_of(prompt, "CheckpointLoaderSimple")]
    with wr.tiny_checkpoint_loader(tiny("sd1"), ckpts):
        ok, error, _outputs, node_errors = wr.validate(prompt)
        assert ok and node_errors == {} and wr.widget_value_problems(prompt) == [], (error, node_errors)
        executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)

    token = wr.node_output(executor, trainer, 0)
    lora = wr.node_output(executor, stage, 0)
    assert lora.metadata["lora_rank"] == "2" and len(lora) == 3 * 56  # down, up, alpha of every attention projection
    assert wr.node_output(executor, stage, 2) is token  # token_learning_rate 0: the pivot stays as it is
    lora_file, token_file = loras_dir / f"{name}.safetensors", embeddings_dir / f"{name}.safetensors"
    assert wr.node_output(executor, save, 0) == str(lora_file)
    with safe_open(str(lora_file), framework="pt") as handle:
        keys = set(handle.keys())
        assert keys == {*lora, f"bundle_emb.{name}.string_to_param.*"}
        assert all(torch.equal(handle.get_tensor(k), v) for k, v in lora.items())
        assert torch.equal(handle.get_tensor(f"bundle_emb.{name}.string_to_param.*"), token.vectors["clip_l"])
    with safe_open(str(token_file), framework="pt") as handle:
        assert list(handle.keys()) == ["clip_l"] and torch.equal(handle.get_tensor("clip_l"), token.vectors["clip_l"])

    pairs = pivotal_pairs(prompt)
    decoded = {sampler: next(d for d in wr.nodes_of(prompt, "VAEDecode") if prompt[d]["inputs"]["samples"] == [sampler, 0])
               for pair in pairs.values() for sampler in pair.values()}
    for prefix, pair in zip(("plain", "edit"), pairs.values(), strict=True):
        alone, with_lora = (wr.node_output(executor, decoded[pair[k]], 0) for k in ("token", "lora"))
        assert alone.shape == with_lora.shape == (1, 64, 64, 3)
        assert (alone - with_lora).abs().max() > 1e-3  # the LoRA changes the picture; seed and conditioning do not
        (saver,) = [n for n in wr.nodes_of(prompt, "SaveImage") if prompt[n]["inputs"]["filename_prefix"].endswith(f"/{prefix}")]
        stitched = wr.node_output(executor, prompt[saver]["inputs"]["images"][0], 0)
        assert torch.equal(stitched, torch.cat([alone, with_lora], dim=2))  # left alone, right with the LoRA
        (image,) = wr.saved_images(executor, saver)
        assert image.parent.name == "cross_init_pivotal" and image.name.startswith(f"{prefix}_")
        with Image.open(image) as png:
            assert png.size == (128, 64)
    for preview in wr.nodes_of(prompt, "PreviewImage"):  # the two loss curves and the detected faces
        assert [p for p in wr.saved_images(executor, preview) if p.is_file()]
