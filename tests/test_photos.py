"""Photos reach the scores and face prep whole and upright: a landscape + portrait pair is not cropped to one shape
(the stock ImageBatch would), and a phone's JPEG stored sideways with EXIF Orientation=6 is turned upright on every
path that reads a photo file (the pack's Load Photos node, the runner's and eval's uploads)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import workflow_runner as wr
from face_photos import ASTRONAUT_FACE, astronaut, iou
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PORTRAIT_LEFT = 120  # the portrait below is the astronaut's columns 120..400, whole height


@pytest.fixture(scope="module")
def client_common(pack):
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    import cross_init_core.client.common as module

    return module


def landscape() -> np.ndarray:
    """The astronaut's face in the middle of a wide photo (1112 x 300)."""
    band = astronaut()[20:320]
    return np.ascontiguousarray(np.pad(band, ((0, 0), (300, 300), (0, 0)), constant_values=128))


def portrait_face_at_top() -> np.ndarray:
    """A tall narrow photo (150 x 472) whose face is near its top: a center crop to a landscape shape cuts it off."""
    return np.ascontiguousarray(astronaut()[40:512, 150:300])


def upright_portrait() -> np.ndarray:
    return np.ascontiguousarray(astronaut()[:, PORTRAIT_LEFT:400])  # 280 x 512


def phone_jpeg(path: Path) -> Path:
    """upright_portrait() stored sideways, as a phone writes it: pixels turned a quarter left, EXIF Orientation=6
    (turn a quarter right to show)."""
    stored = Image.fromarray(np.rot90(upright_portrait(), k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)
    return path


def install(name: str, rgb_or_path: np.ndarray | Path) -> str:
    import folder_paths

    path = Path(folder_paths.get_input_directory()) / "photo_tests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rgb_or_path, Path):
        path.write_bytes(rgb_or_path.read_bytes())
    else:
        Image.fromarray(rgb_or_path).save(path)
    return f"photo_tests/{name}"


def identity_report(reference: list, images: list) -> dict:
    """The identity score (dlib) of `images` against `reference`, its report shown by node "2"."""
    return {
        "1": {"class_type": "CrossInitIdentityScore", "inputs": {"reference": reference, "images": images, "backend": "dlib"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}},
    }


def run_report(prompt: dict) -> dict:
    executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    return json.loads(executor.history_result["outputs"]["2"]["text"][0])


def test_reference_photos_of_two_shapes_are_each_scored_whole(pack):
    """Landscape first, then a portrait with the face near its top, as eval's reference photos: both are scored at
    their own sizes (eval's graph uses Load Photos); the stock ImageBatch crops the portrait's face away."""
    pair = [install("landscape.png", landscape()), install("portrait.png", portrait_face_at_top())]
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    import cross_init_core.client.eval.graph as graph

    workflow = json.loads((REPO / "workflows" / "api" / "cross_init_eval.json").read_text(encoding="utf-8"))
    probe = graph.probe_prompt(workflow, pair, "dlib")
    executor = wr.execute(probe)
    assert executor.success, wr.failure(executor)
    # one report per photo (the probe scores each against both): each has its face, matching
    reports = [json.loads(text) for text in executor.history_result["outputs"]["probe_report"]["text"]]
    assert len(reports) == 2 and all(r["faces_found"] == 1 and r["images"][0]["match"] for r in reports), reports
    # each box is in its own photo's pixels: the portrait's face is near its top
    assert reports[1]["images"][0]["box"][1] < 150 and reports[1]["images"][0]["box"][2] <= 150
    # what 0.2.0 ran: LoadImage + the stock ImageBatch, which crops the portrait to the landscape's shape
    batched = {
        "10": {"class_type": "LoadImage", "inputs": {"image": pair[0]}},
        "11": {"class_type": "LoadImage", "inputs": {"image": pair[1]}},
        "12": {"class_type": "ImageBatch", "inputs": {"image1": ["10", 0], "image2": ["11", 0]}},
        **identity_report(["12", 0], ["12", 0]),
    }
    executor = wr.execute(batched)
    assert not executor.success and "image index 1 (of 2" in wr.failure(executor) and "no face" in wr.failure(executor)


def test_training_photos_of_two_shapes_reach_face_prep_whole(pack):
    """The runner's graph for the shipped workflows: Load Photos -> Face Prep; both photos give a crop."""
    pair = [install("landscape.png", landscape()), install("portrait.png", portrait_face_at_top())]
    prompt = {
        "1": {"class_type": "CrossInitLoadPhotos", "inputs": {"files": "\n".join(pair)}},
        "2": {"class_type": "CrossInitFacePrep", "inputs": {
            "image": ["1", 0], "detector": "mtcnn", "model_pack": "antelopev2", "provider": "CPU", "crop_size": 128,
            "margin": 0.25, "face_select": "largest", "on_no_face": "error"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    assert len(wr.saved_images(executor, "3")) == 2  # one aligned crop per photo


def test_phone_jpeg_with_exif_orientation_is_loaded_upright_with_its_face_where_it_is(pack, tmp_path):
    stored = phone_jpeg(tmp_path / "phone.jpg")
    with Image.open(stored) as raw:
        assert raw.size == (512, 280)  # stored sideways
    name = install("phone.jpg", stored)
    report = run_report({"5": {"class_type": "CrossInitLoadPhotos", "inputs": {"files": name}},
                         **identity_report(["5", 0], ["5", 0])})
    (entry,) = report["images"]
    x0, y0, x1, y1 = ASTRONAUT_FACE
    expected = (x0 - PORTRAIT_LEFT, y0, x1 - PORTRAIT_LEFT, y1)
    assert entry["face"] and iou(tuple(entry["box"]), expected) > 0.5, (entry, expected)


def test_load_photos_names_a_missing_file(pack):
    prompt = {"5": {"class_type": "CrossInitLoadPhotos", "inputs": {"files": "photo_tests/landscape.png\n\nno_such.png\n"}},
              **identity_report(["5", 0], ["5", 0])}
    install("landscape.png", landscape())
    executor = wr.execute(prompt)
    assert not executor.success
    assert "Input `files`, file 2 of 2 ('no_such.png'): no such file in ComfyUI's input folder" in wr.failure(executor)


def test_client_uploads_phone_photos_upright(client_common, tmp_path):
    """What the runner and eval upload: the upright pixels as a PNG for a turned photo, the file itself otherwise."""
    stored = phone_jpeg(tmp_path / "phone.jpg")
    data, suffix = client_common.upright_photo(stored)
    assert suffix == ".png"
    with Image.open(io.BytesIO(data)) as sent:
        pixels = np.asarray(sent.convert("RGB")).astype(np.int16)
    assert pixels.shape == upright_portrait().shape
    assert np.abs(pixels - upright_portrait()).mean() < 6  # the same photo (JPEG noise only), upright
    assert client_common.photo_size(stored) == (280, 512)
    plain = tmp_path / "plain.png"
    Image.fromarray(landscape()).save(plain)
    assert client_common.upright_photo(plain) == (plain.read_bytes(), ".png")
    assert client_common.photo_size(plain) == (1112, 300)
