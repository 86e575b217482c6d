"""Face preparation: detection on real photos, alignment math, model folders, errors, the node."""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from face_photos import (
    ASTRONAUT_EYES,
    ASTRONAUT_FACE,
    ASTRONAUT_NOSE,
    T1_DAVID,
    T1_LISA,
    T1_MATTHEW,
    TOM_FACE,
    as_image,
    astronaut,
    inside,
    insightface_image,
    iou,
)
from helpers import extra_model_folder


@pytest.fixture(scope="module")
def face(core: ModuleType) -> ModuleType:
    return importlib.import_module(core.__name__ + ".face")


def sub(face: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{face.__name__}.{name}")


def builtin_faces(face: ModuleType, rgb: np.ndarray) -> list:
    prepare = sub(face, "prepare")
    return prepare.find_faces(sub(face, "mtcnn").MTCNNFaceDetector(), rgb.astype(np.float32) / 255.0)


def distance(a: object, b: object) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# ---- the built-in MTCNN detector on real photos --------------------------------------------------------


def test_mtcnn_finds_the_astronaut_with_landmarks_on_her_eyes_and_nose(face):
    faces = builtin_faces(face, astronaut())
    assert len(faces) == 1
    found = faces[0]
    assert found.detector == "mtcnn" and found.score > 0.95
    assert iou(found.box, ASTRONAUT_FACE) > 0.6
    for point, hand in zip(found.landmarks[:2], ASTRONAUT_EYES, strict=True):
        assert distance(point, hand) < 3.0  # real landmarks: on the pupils
    assert distance(found.landmarks[2], ASTRONAUT_NOSE) < 3.0
    left_mouth, right_mouth = found.landmarks[3:]
    assert left_mouth[0] < ASTRONAUT_NOSE[0] < right_mouth[0]  # mouth corners either side of the nose, below it
    assert min(left_mouth[1], right_mouth[1]) > ASTRONAUT_NOSE[1] + 5


def test_mtcnn_weights_load_with_safetensors_and_a_broken_file_is_named(face, tmp_path):
    mtcnn = sub(face, "mtcnn")
    weights = mtcnn.load_weights()
    assert len(weights) == 50 and all(v.dtype == torch.float32 for v in weights.values())
    assert weights["onet.dense6_3.weight"].shape == (10, 256)  # the 5 landmarks (x then y)
    assert (mtcnn.WEIGHTS.parent / "NOTICE.md").is_file()
    broken = tmp_path / "mtcnn.safetensors"
    broken.write_bytes(mtcnn.WEIGHTS.read_bytes()[:1000])
    with pytest.raises(face.ModelFilesError, match=r"weights could not be read from .*mtcnn\.safetensors"):
        mtcnn.load_weights(broken)


def test_mtcnn_finds_three_known_faces_in_the_group_photo(face):
    group = insightface_image("t1.jpg")
    if group is None:
        pytest.skip("insightface's t1.jpg sample is not installed")
    faces = builtin_faces(face, group)
    assert len(faces) == 6  # everyone in the photo, nothing else
    for person in (T1_DAVID, T1_MATTHEW, T1_LISA):
        assert max(iou(f.box, person) for f in faces) > 0.5, person
    for found in faces:  # every landmark inside its own face box
        assert all(inside(tuple(p), found.box) for p in found.landmarks)
    rightmost = sub(face, "detection").select_face(faces, "rightmost", group.shape[1], group.shape[0])
    assert iou(rightmost.box, T1_LISA) > 0.5


def test_close_up_is_found_on_the_padded_retry(face):
    close_up = np.ascontiguousarray(astronaut()[84:172, 186:262])  # 76x88: the face fills the frame
    plain = sub(face, "mtcnn").MTCNNFaceDetector()
    assert all(plain.detect(close_up, attempt) == [] for attempt in range(plain.attempts))
    faces = builtin_faces(face, close_up)
    assert len(faces) == 1
    shifted_eyes = np.array(ASTRONAUT_EYES) - np.array([186, 84])
    assert np.abs(faces[0].landmarks[:2] - shifted_eyes).max() < 4.0


def test_tom_hanks_aligned_crop(face):
    tom = insightface_image("Tom_Hanks_54745.png")
    if tom is None:
        pytest.skip("insightface's Tom_Hanks_54745.png sample is not installed")
    faces = builtin_faces(face, tom)
    assert len(faces) == 1
    assert iou(faces[0].box, TOM_FACE) > 0.5
    # The photo is an ArcFace-aligned crop: the found eyes must land near the template's; nose and mouth
    # less so, as his head is turned (the nose tip sits ~6 px right of the template's).
    template = sub(face, "alignment").ARCFACE_TEMPLATE_112
    assert np.abs(faces[0].landmarks[:2] - template[:2]).max() < 4.0
    assert np.abs(faces[0].landmarks - template).max() < 8.0


def test_aligned_astronaut_crop_puts_her_eyes_on_the_template(face):
    result = face.prepare_faces(as_image(astronaut()), face.FacePrepOptions(detector="mtcnn", crop_size=256))
    assert result.images.shape == (1, 256, 256, 3) and result.masks.shape == (1, 256, 256)
    template = sub(face, "alignment").template_points(256, 0.25)
    moved = sub(face, "alignment").apply_transform(result.matrices[0], np.array((*ASTRONAUT_EYES, ASTRONAUT_NOSE)))
    # Her hand-measured pupils end up level, at the template's eye distance and place (the 5-point fit
    # spreads her face's own proportions over all points, so each lands within a few pixels, not exactly).
    (lx, ly), (rx, ry), nose = moved
    template_distance = float(np.linalg.norm(template[1] - template[0]))
    assert abs(ry - ly) < 2.0
    assert abs(math.hypot(rx - lx, ry - ly) / template_distance - 1.0) < 0.1
    assert distance(((lx + rx) / 2, (ly + ry) / 2), template[:2].mean(axis=0)) < 5.0
    assert distance(nose, template[2]) < 8.0
    # The crop really holds her face: its pixels at the template eyes are darker than the cheeks between them.
    crop = result.images[0].numpy().mean(-1)
    eyes = [crop[round(y), round(x)] for x, y in template[:2]]
    cheek = crop[round(template[2, 1]), round(template[0, 0])]
    assert max(eyes) < cheek


# ---- alignment math ---------------------------------------------------------------------------------

DOT_COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], dtype=np.uint8)


def test_template_scaling(face):
    alignment = sub(face, "alignment")
    assert np.allclose(alignment.template_points(112, 0.0), alignment.ARCFACE_TEMPLATE_112)
    assert np.allclose(alignment.template_points(512, 0.0), alignment.ARCFACE_TEMPLATE_112 * 512 / 112)
    eyes = alignment.template_points(512, 0.25)[:2]
    assert np.linalg.norm(eyes[1] - eyes[0]) == pytest.approx(35.2372 * 512 / 112 / 1.5, abs=0.01)
    assert eyes[:, 0].mean() == pytest.approx(256 + (55.9132 - 56) * 512 / 112 / 1.5, abs=0.01)


def test_dots_land_on_the_template_within_one_pixel(face):
    alignment = sub(face, "alignment")
    # The template moved by a known similarity: rotated 20 degrees, scaled 2.3x, shifted.
    angle, scale, shift = math.radians(20), 2.3, np.array([300.0, 200.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = alignment.ARCFACE_TEMPLATE_112 @ rot.T * scale + shift
    photo = np.full((700, 900, 3), 40, dtype=np.uint8)
    for (x, y), color in zip(points, DOT_COLORS, strict=True):
        _disc(photo, x, y, 6.0, color)
    measured = np.array([_centroid(photo, color) for color in DOT_COLORS])
    matrix = alignment.similarity_transform(measured, alignment.template_points(256, 0.25))
    crop, valid = alignment.warp_face(photo.astype(np.float32) / 255.0, matrix, 256)
    landed = np.array([_centroid((crop * 255).round().astype(np.uint8), color) for color in DOT_COLORS])
    assert np.abs(landed - alignment.template_points(256, 0.25)).max() < 1.0
    assert valid.min() == 1.0  # the whole crop lies inside the photo
    # The recovered matrix undoes the known similarity: its scale is 256/(112*1.5) / 2.3.
    assert math.sqrt(np.linalg.det(matrix[:, :2])) == pytest.approx(256 / (112 * 1.5) / scale, rel=0.01)


def _disc(image: np.ndarray, x: float, y: float, radius: float, color: np.ndarray) -> None:
    # Anti-aliased: edge pixels are blended by how much of them the disc covers (one-pixel ramp).
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    cover = np.clip(radius + 0.5 - np.hypot(xs - x, ys - y), 0.0, 1.0)[..., None]
    image[:] = (image * (1.0 - cover) + color * cover).round().astype(image.dtype)


def _centroid(image: np.ndarray, color: np.ndarray) -> tuple[float, float]:
    # Weighted by closeness to the dot colour, so anti-aliased and resampled edges count proportionally.
    dist = np.abs(image.astype(np.float32) - color.astype(np.float32)).sum(-1)
    weight = np.clip(1.0 - dist / 120.0, 0.0, None)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return float((xs * weight).sum() / weight.sum()), float((ys * weight).sum() / weight.sum())


def test_similarity_never_mirrors(face):
    alignment = sub(face, "alignment")
    template = alignment.ARCFACE_TEMPLATE_112
    mirrored = template * np.array([-1.0, 1.0]) + np.array([200.0, 0.0])
    matrix = alignment.similarity_transform(mirrored, template)
    assert np.linalg.det(matrix[:, :2]) > 0


# ---- insightface: folders, providers, detection --------------------------------------------------------


def _fake_pack(folder: Path, names: tuple[str, ...] = ("scrfd_10g_bnkps.onnx", "glintr100.onnx")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not a real onnx model")


def test_model_pack_found_in_any_registered_folder(face, tmp_path):
    folders = sub(face, "model_folders")
    first, second = tmp_path / "a", tmp_path / "b"
    _fake_pack(second / "models" / "buffalo_l", ("det_10g.onnx",))
    found = folders.search_model_pack("buffalo_l", [first, second])
    assert found.model_dir == second / "models" / "buffalo_l" and found.problem is None


def test_nested_pack_folder_is_explained(face, tmp_path):
    folders = sub(face, "model_folders")
    right = tmp_path / "models" / "antelopev2"
    _fake_pack(right / "antelopev2")
    found = folders.search_model_pack("antelopev2", [tmp_path])
    assert found.model_dir is None
    assert found.problem == (
        f"The insightface antelopev2 files are in the wrong folder: {right / 'antelopev2'} holds "
        f"glintr100.onnx, scrfd_10g_bnkps.onnx. Move these .onnx files to {right} (that folder must contain "
        "them directly, not inside another antelopev2 folder), then run the workflow again."
    )


def test_missing_pack_names_the_exact_folder(face, tmp_path):
    found = sub(face, "model_folders").search_model_pack("antelopev2", [tmp_path / "x", tmp_path / "y"])
    assert found.model_dir is None
    assert f"Searched: {tmp_path / 'x' / 'models' / 'antelopev2'}; {tmp_path / 'y' / 'models' / 'antelopev2'}" in (found.problem)
    assert f"directly in {tmp_path / 'x' / 'models' / 'antelopev2'}" in found.problem
    assert "scrfd_10g_bnkps.onnx" in found.problem and "extra_model_paths.yaml" in found.problem


def test_insightface_folder_key_keeps_extra_model_paths(face, tmp_path):
    import folder_paths

    # extra_model_paths.yaml is applied before custom nodes load, so its entry may already exist.
    with extra_model_folder("insightface", tmp_path, face.register_insightface_folder):
        paths = face.register_insightface_folder()
        default = str(Path(folder_paths.models_dir) / "insightface")
        assert paths == [str(tmp_path), default]
        assert face.register_insightface_folder() == paths  # idempotent
        roots = sub(face, "model_folders").insightface_roots()
        assert roots == [tmp_path, Path(default)]


def test_provider_choice_and_cpu_fallback(face, caplog):
    backend = sub(face, "insightface_backend")
    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    assert backend.choose_providers("CPU", [cpu]) == [cpu]
    assert backend.choose_providers("CUDA", [cuda, cpu]) == [cuda, cpu]
    with caplog.at_level(logging.WARNING):
        assert backend.choose_providers("CUDA", [cpu]) == [cpu]
    assert "not CUDAExecutionProvider; using CPU instead" in caplog.text
    assert "onnxruntime-gpu" in caplog.text
    assert backend.choose_providers("ROCm", [cpu]) == [cpu]
    assert cpu in backend.available_providers()  # the real onnxruntime of the test env


def test_broken_model_files_auto_falls_back_explicit_raises(face, tmp_path):
    choose = sub(face, "choose")
    _fake_pack(tmp_path / "models" / "antelopev2")
    assert choose.choose_detector("auto", "antelopev2", "CPU", [tmp_path]).name == "mtcnn"
    with pytest.raises(face.ModelFilesError, match="could not load a face detector from"):
        choose.choose_detector("insightface", "antelopev2", "CPU", [tmp_path])
    with pytest.raises(face.ModelFilesError, match="No insightface buffalo_l model files found"):
        choose.choose_detector("insightface", "buffalo_l", "CPU", [tmp_path])


def test_insightface_detection_on_the_astronaut(face):
    folders = sub(face, "model_folders")
    roots = folders.insightface_roots()
    found = [folders.search_model_pack(p, roots) for p in folders.MODEL_PACKS]
    model_dir = next((f.model_dir for f in found if f.model_dir is not None), None)
    if model_dir is None:
        pytest.skip(
            f"no insightface model files (antelopev2 or buffalo_l) under {', '.join(map(str, roots))}: "
            "only the real insightface detection call is skipped; folders, providers and alignment are tested"
        )
    backend = sub(face, "insightface_backend")
    detector = backend.InsightFaceDetector(model_dir, model_dir.parent.parent, ["CPUExecutionProvider"])
    faces = sub(face, "prepare").find_faces(detector, astronaut().astype(np.float32) / 255.0)
    assert len(faces) == 1 and iou(faces[0].box, ASTRONAUT_FACE) > 0.5
    assert np.abs(faces[0].landmarks[:2] - np.array(ASTRONAUT_EYES)).max() < 6


# ---- input checks and errors ----------------------------------------------------------------------------

BUILTIN = {"detector": "mtcnn", "crop_size": 128}


def _prepare(face: ModuleType, image: object, **options: object):
    return face.prepare_faces(image, face.FacePrepOptions(**{**BUILTIN, **options}))


def _two(second: torch.Tensor) -> list[torch.Tensor]:
    return [as_image(astronaut()), second]


@pytest.mark.parametrize(
    ("second", "words"),
    [
        (torch.rand(1, 50, 40, 3), ["`image`, image index 1", "40x50 px", "at least 64 px"]),
        (torch.full((1, 80, 80, 3), float("nan")), ["`image`, image index 1", "NaN", "6400 pixels"]),
        (torch.full((1, 80, 80, 3), 200.0), ["image index 1", "8-bit (0-255)", "divide the tensor by 255"]),
        (torch.full((1, 80, 80, 3), 4000.0), ["image index 1", "16-bit (0-65535)", "65535"]),
        (torch.full((1, 80, 80, 3), -0.8), ["image index 1", "outside 0..1", "[-1, 1]"]),
        (torch.rand(1, 80, 80, 5), ["image index 1", "5 channels"]),
    ],
)
def test_bad_images_are_refused_by_index(face, second, words):
    with pytest.raises(face.InvalidImageError) as info:
        _prepare(face, _two(second))
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value)


def test_empty_batch_is_an_error(face):
    with pytest.raises(face.InvalidImageError, match="`image` is an empty batch"):
        _prepare(face, torch.zeros(0, 64, 64, 3))


def test_no_face_error_and_skip(face):
    blank = torch.full((1, 120, 160, 3), 0.5)
    with pytest.raises(face.NoFaceError, match=r"input `image`, image index 1 \(160x120 px\)"):
        _prepare(face, _two(blank))
    result = _prepare(face, _two(blank), on_no_face="skip")
    assert result.kept == [0] and result.images.shape == (1, 128, 128, 3)
    assert result.preview.shape == (2, 512, 512, 3) and result.faces[1] is None
    # The skipped photo's preview carries a red frame around the letterboxed photo (160x120 -> 512x384).
    assert result.preview[1, 64 + 2, 256].tolist() == pytest.approx([230 / 255, 0.0, 0.0], abs=0.01)
    with pytest.raises(face.NoFaceError, match="No face found in any of the 2 images of input `image`"):
        _prepare(face, torch.cat([blank, blank]), on_no_face="skip")


def test_grayscale_rgba_and_small_overshoot_are_accepted(face):
    gray = torch.from_numpy(astronaut().mean(-1, keepdims=True).astype(np.float32) / 255.0)[None]
    rgba = torch.cat([as_image(astronaut()), torch.zeros(1, 512, 512, 1)], dim=-1)
    over = as_image(astronaut()) * 1.03
    for image in (gray, rgba, over):
        result = _prepare(face, image)
        assert result.images.shape == (1, 128, 128, 3)
        assert iou(result.faces[0].box, ASTRONAUT_FACE) > 0.5
        assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    assert torch.allclose(_prepare(face, gray).images[0, ..., 0], _prepare(face, gray).images[0, ..., 2])


def test_huge_photo_is_detected_on_a_downscaled_copy(face):
    from PIL import Image

    wide = np.random.default_rng(0).integers(60, 200, size=(1100, 8400, 3), dtype=np.uint8)  # > 8192 px side
    wide[38:1062, 6000:7024] = np.asarray(Image.fromarray(astronaut()).resize((1024, 1024), Image.BICUBIC))
    result = _prepare(face, as_image(wide))
    shifted = tuple(v * 2 + off for v, off in zip(ASTRONAUT_FACE, (6000, 38, 6000, 38), strict=True))
    assert iou(result.faces[0].box, shifted) > 0.5
    assert result.images.shape == (1, 128, 128, 3)


# ---- the node end to end -----------------------------------------------------------------------------------


def test_node_schema(pack):
    node = importlib.import_module(pack.__name__ + ".nodes.face_prep").CrossInitFacePrep
    schema = node.define_schema()
    assert schema.node_id == "CrossInitFacePrep" and schema.category == "training/cross_init"
    assert schema.description and schema.is_input_list
    assert [i.id for i in schema.inputs] == [
        "image",
        "detector",
        "model_pack",
        "provider",
        "crop_size",
        "margin",
        "face_select",
        "on_no_face",
    ]
    assert all(i.tooltip for i in schema.inputs)
    assert [o.id for o in schema.outputs] == ["images", "masks", "preview"]


def test_node_two_photos_of_different_sizes_make_one_batch(pack, face):
    group = insightface_image("t1.jpg")
    if group is None:
        pytest.skip("insightface's t1.jpg sample is not installed")
    node = importlib.import_module(pack.__name__ + ".nodes.face_prep").CrossInitFacePrep
    photos = [as_image(astronaut()), as_image(group)]
    options = {
        "detector": ["opencv"],  # the name of the earlier detector, as saved workflows hold it
        "model_pack": ["antelopev2"],
        "provider": ["CPU"],
        "crop_size": [256],
        "margin": [0.25],
        "face_select": ["rightmost"],
        "on_no_face": ["error"],
    }
    images, masks, preview = node.execute(image=photos, **options).result
    assert images.shape == (2, 256, 256, 3) and images.dtype == torch.float32
    assert masks.shape == (2, 256, 256) and preview.shape == (2, 512, 512, 3)
    template = sub(face, "alignment").template_points(256, 0.25)
    for mask in masks:
        for x, y in template:  # eyes, nose and mouth are inside the face mask
            assert mask[round(y), round(x)] == 1.0
        assert mask[0, 0] == 0.0 and mask[255, 255] == 0.0 and mask[5, 128] == 0.0
        assert 0.15 < float(mask.mean()) < 0.2  # the oval: pi*36*44 / 168^2 template units
    # The crops' face centre maps back inside the hand-measured face of each photo.
    result = face.prepare_faces(photos, face.FacePrepOptions(detector="mtcnn", crop_size=256, face_select="rightmost"))
    assert torch.equal(result.images, images)
    for matrix, box in zip(result.matrices, (ASTRONAUT_FACE, T1_LISA), strict=True):
        inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
        centre = inverse @ np.array([*template[:, :].mean(axis=0), 1.0])
        assert inside((centre[0], centre[1]), box)
    assert iou(result.faces[1].box, T1_LISA) > 0.5


def test_detector_options_and_old_saved_value_pass_the_hosts_validation(pack):
    """Workflows saved with the earlier `opencv` detector still queue (on hosts that check V3 combos too);
    an unknown name is refused when queued, naming the options."""
    import asyncio

    import execution

    node = importlib.import_module(pack.__name__ + ".nodes.face_prep").CrossInitFacePrep
    (detector,) = [i for i in node.define_schema().inputs if i.id == "detector"]
    assert list(detector.options) == ["auto", "insightface", "mtcnn"]

    def queue(value: str) -> tuple[bool, dict]:
        prompt = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1, "color": 0}},
            "2": {
                "class_type": "CrossInitFacePrep",
                "inputs": {
                    "image": ["1", 0], "detector": value, "model_pack": "antelopev2", "provider": "CPU", "crop_size": 128,
                    "margin": 0.25, "face_select": "largest", "on_no_face": "skip",
                },
            },
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}},
        }
        ok, _error, _outputs, node_errors = asyncio.run(execution.validate_prompt(f"detector-{value}", prompt, None))
        return ok, node_errors

    for value in ("auto", "mtcnn", "opencv"):
        ok, errors = queue(value)
        assert ok, (value, errors)
    ok, errors = queue("haar")
    assert not ok and "detector 'haar' is unknown; choose one of auto, insightface, mtcnn" in str(errors["2"])
