"""The headless batch runner (`python -m cross_init_core train`) end to end on tiny SD1 models.

The CLI runs in-process on the host the `pack` fixture booted (its boot is idempotent); tiny models come
in through `checkpoint_loader_override`, the same swap of CheckpointLoaderSimple the workflow tests use.
The checkpoint name is still checked for real, so the tests put an empty placeholder file in ComfyUI's
checkpoints folder.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--batch-size", "1", "--resolution", "64"]
CKPT = "tiny_cli.safetensors"
ASTRONAUT_HEAD = (144, 43, 304, 203)


@pytest.fixture(scope="module")
def cli(pack):
    """cross_init_core.cli imported as `python -m cross_init_core` imports it (the pack folder on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    import cross_init_core.cli as module

    return module


@pytest.fixture(scope="module")
def checkpoint(pack) -> str:
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("checkpoints")[0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CKPT).write_bytes(b"")  # only its name is used: the override supplies the models
    return CKPT


@pytest.fixture(scope="module")
def override(tiny):
    models = tiny("sd1")
    calls: list[str] = []

    def load(ckpt_name: str):
        calls.append(ckpt_name)
        return models.model, models.clip, models.vae

    load.calls = calls  # type: ignore[attr-defined]
    return load


def face_photo(path: Path, size: int) -> Path:
    from PIL import Image
    from skimage import data

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).crop(ASTRONAUT_HEAD).resize((size, size), Image.LANCZOS).save(path)
    return path


def run(cli, argv, override=None):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, checkpoint_loader_override=override, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def read_embedding(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def test_help_documents_every_option_without_booting(cli):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "cross_init_core", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "ComfyUI booted" not in result.stderr and seconds < 60
    options = {s for action in cli.build_parser()._actions for s in action.option_strings}
    assert {"--comfyui", "--checkpoint", "--images", "--name", "--mode", "--seed", "--steps", "--batch-size", "--resolution",
            "--folder", "--overwrite", "--samples"} <= options
    text = " ".join(result.stdout.split())
    assert [o for o in sorted(options) if o not in text] == []
    assert "exit codes" in text and "embedding:NAME" in text


def test_train_images_end_to_end(cli, checkpoint, override, embeddings_dir, tmp_path):
    photos = [face_photo(tmp_path / "one.png", 96), face_photo(tmp_path / "two.jpg", 80)]  # different sizes
    code, out, err = run(cli, ["train", "--checkpoint", checkpoint, "--images", *map(str, photos), "--name", "cli_one",
                               "--seed", "3", *FAST], override)
    assert code == 0, err
    path = embeddings_dir / "cli_one.safetensors"
    tensors, metadata = read_embedding(path)
    assert list(tensors) == ["clip_l"] and list(tensors["clip_l"].shape) == [2, 64] and torch.isfinite(tensors["clip_l"]).all()
    assert metadata["mode"] == "custom" and metadata["steps"] == "2" and metadata["batch_size"] == "1"
    assert metadata["resolution"] == "64" and metadata["seed"] == "3"
    assert float(metadata["learning_rate"]) == cli.PRESETS["fast"].learning_rate  # the preset's other values
    assert override.calls and set(override.calls) == {checkpoint}
    # the summary: name, images, steps, seconds, final loss, file, status
    header, _rule, row, total = out.strip().splitlines()
    assert header.split()[:4] == ["name", "images", "steps", "seconds"] and "final loss" in header
    cells = row.split()
    assert cells[:3] == ["cli_one", "2", "2"] and float(cells[4]) > 0 and cells[5] == str(path) and cells[6] == "ok"
    assert total == "1 written, 0 failed, 0 skipped"
    assert "2/2" in err  # the progress bar was fed by ComfyUI's progress hook
    # the staged copies in ComfyUI's input folder are gone
    import folder_paths

    assert not (Path(folder_paths.get_input_directory()) / "cross_init_cli").exists()


def test_folder_mode_one_embedding_per_subfolder(cli, checkpoint, override, embeddings_dir, tmp_path):
    face_photo(tmp_path / "faces" / "cli_anna" / "a.png", 96)
    face_photo(tmp_path / "faces" / "cli_bob" / "b1.png", 64)
    face_photo(tmp_path / "faces" / "cli_bob" / "b2.webp", 72)
    (tmp_path / "faces" / "cli_bob" / "notes.txt").write_text("not a photo")
    summary = tmp_path / "summary.json"
    code, out, err = run(cli, ["train", "--checkpoint", checkpoint, "--folder", str(tmp_path / "faces"), *FAST,
                               "--no-progress", "--summary-json", str(summary)], override)
    assert code == 0, err
    for name in ("cli_anna", "cli_bob"):
        tensors, _ = read_embedding(embeddings_dir / f"{name}.safetensors")
        assert list(tensors["clip_l"].shape) == [2, 64]
    assert "2 written, 0 failed" in out and "cli_anna" in out and "cli_bob" in out
    import json

    rows = {r["name"]: r for r in json.loads(summary.read_text())}
    assert rows["cli_anna"]["images"] == 1 and rows["cli_bob"]["images"] == 2
    assert all(r["status"] == "ok" and r["steps"] == 2 for r in rows.values())

    # a second pass resumes: existing names are skipped, not retrained
    code, out, err = run(cli, ["train", "--checkpoint", checkpoint, "--folder", str(tmp_path / "faces"), *FAST, "--skip-existing"],
                         override)
    assert code == 0, err
    assert "0 written, 0 failed, 2 skipped" in out


def test_missing_checkpoint_is_refused(cli, override, tmp_path):
    photo = face_photo(tmp_path / "p.png", 64)
    code, out, err = run(cli, ["train", "--checkpoint", "no_such_model.safetensors", "--images", str(photo), "--name", "cli_x", *FAST],
                         override)
    assert code == 2 and out == ""
    assert "no_such_model.safetensors" in err and "not found" in err


def test_existing_name_is_refused_and_untouched(cli, checkpoint, override, embeddings_dir, tmp_path):
    existing = embeddings_dir / "cli_taken.safetensors"
    existing.write_bytes(b"precious bytes")
    photo = face_photo(tmp_path / "p.png", 64)
    argv = ["train", "--checkpoint", checkpoint, "--images", str(photo), "--name", "cli_taken", *FAST]
    code, out, err = run(cli, argv, override)
    assert code == 2 and "already exists" in err and "--overwrite" in err and out == ""
    assert existing.read_bytes() == b"precious bytes"
    code, out, err = run(cli, [*argv, "--overwrite", "--no-progress"], override)
    assert code == 0, err
    assert list(read_embedding(existing)[0]) == ["clip_l"]


@pytest.mark.parametrize("argv", [
    ["--images", "{photo}", "--name", "a b"],
    ["--images", "{photo}", "--name", "../escape"],
    ["--images", "{missing}", "--name", "cli_m"],
    ["--images", "{photo}"],
    ["--images", "{photo}", "--name", "cli_r", "--resolution", "100"],
    ["--folder", "{empty}"],
])
def test_bad_inputs_exit_2(cli, checkpoint, override, tmp_path, argv):
    photo = face_photo(tmp_path / "p.png", 64)
    (tmp_path / "empty").mkdir()
    values = {"photo": str(photo), "missing": str(tmp_path / "missing.png"), "empty": str(tmp_path / "empty")}
    argv = ["train", "--checkpoint", checkpoint, *(a.format(**values) for a in argv)]
    code, out, err = run(cli, argv, override)
    assert code == 2 and out == ""
    assert err.strip()


def test_training_failure_is_reported_and_exits_1(cli, checkpoint, tmp_path):
    def broken(ckpt_name: str):
        raise RuntimeError("the checkpoint is corrupt (test)")

    photo = face_photo(tmp_path / "p.png", 64)
    code, out, err = run(cli, ["train", "--checkpoint", checkpoint, "--images", str(photo), "--name", "cli_broken", *FAST], broken)
    assert code == 1
    assert "cli_broken" in out and "failed" in out and "the checkpoint is corrupt (test)" in out + err


def test_workflow_with_face_prep(cli, checkpoint, override, embeddings_dir, tmp_path):
    """A graph with CrossInitFacePrep between LoadImage and the trainer (as the shipped one may get): photos of
    different sizes reach face prep as one image list through the stock folder loader."""
    import json

    workflow = json.loads((REPO / "workflows" / "api" / "cross_init_fast.json").read_text(encoding="utf-8"))
    if not any(n["class_type"] == "CrossInitFacePrep" for n in workflow.values()):
        (loader,) = [k for k, n in workflow.items() if n["class_type"] == "LoadImage"]
        (trainer,) = [k for k, n in workflow.items() if n["class_type"] == "CrossInitTrainer"]
        workflow["90"] = {"class_type": "CrossInitFacePrep", "inputs": {
            "image": [loader, 0], "detector": "mtcnn", "model_pack": "antelopev2", "provider": "CPU", "crop_size": 512,
            "margin": 0.6, "face_select": "largest", "on_no_face": "error"}}
        workflow[trainer]["inputs"].update(images=["90", 0], masks=["90", 1])
    path = tmp_path / "with_prep.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    photos = [face_photo(tmp_path / "big.png", 200), face_photo(tmp_path / "small.png", 160)]
    code, out, err = run(cli, ["train", "--checkpoint", checkpoint, "--images", *map(str, photos), "--name", "cli_prep",
                               "--workflow", str(path), "--detector", "opencv", *FAST], override)  # earlier name, still accepted
    assert code == 0, err + out
    tensors, metadata = read_embedding(embeddings_dir / "cli_prep.safetensors")
    assert list(tensors["clip_l"].shape) == [2, 64] and metadata["resolution"] == "64"
