"""`train --ray` on a real local Ray cluster: two CPU actors, each with a real ComfyUI child (main.py on loopback), as
on a cluster node. Ray is installed in the newest lane (tests/requirements-newest.txt); the oldest lane checks that
--ray without Ray is refused with the install line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from comfy_servers import REPO, TINY_CKPT, TINY_LOADER, comfyui_folder, make_base

NEWEST_LANE = os.environ.get("LANE") == "newest"


@pytest.fixture(scope="module")
def ray_installed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if NEWEST_LANE:
            pytest.fail("ray is a requirement of the newest test lane (tests/requirements-newest.txt)")
        pytest.skip("ray is installed in the newest test lane only; this lane checks --ray without it")


def _runner(argv: list[str], block_ray: bool = False) -> list[str]:
    if not block_ray:
        return [sys.executable, "-m", "cross_init_core", "train", *argv]
    code = ("import sys; sys.modules['ray'] = None; from cross_init_core.client import main; "
            f"sys.exit(main(['train', *{argv!r}]))")
    return [sys.executable, "-c", code]


def _photos(folder: Path) -> Path:
    """Three people with a face (the astronaut photo, whole) and one whose photo shows none (a cup of coffee)."""
    from PIL import Image
    from skimage import data

    for name in ("ray_ann", "ray_bob", "ray_cyd"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(data.astronaut()).save(folder / name / "face.png")
    (folder / "ray_cup").mkdir()
    Image.fromarray(data.coffee()).save(folder / "ray_cup" / "cup.png")
    return folder


def _tiny_workflow_with_face_prep(path: Path) -> Path:
    workflow = json.loads((REPO / "workflows" / "api" / "cross_init_fast.json").read_text(encoding="utf-8"))
    for node in workflow.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = TINY_LOADER
    path.write_text(json.dumps(workflow), encoding="utf-8")
    return path


def test_ray_missing_exits_2_with_the_install_line(tmp_path):
    photo = tmp_path / "me.png"
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(photo)
    argv = ["--checkpoint", TINY_CKPT, "--images", str(photo), "--name", "ray_none", "--out", str(tmp_path / "out"),
            "--ray", "local", "--ray-gpus-per-job", "0", "--comfyui", str(tmp_path)]
    result = subprocess.run(_runner(argv, block_ray=True), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--ray needs the ray package" in result.stderr and "pip install ray" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def _read_until(process: subprocess.Popen, pattern: str, seen: list[str], timeout: float = 600) -> bool:
    """Reads the runner's stderr (into `seen`) until a line matches `pattern`; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            return False
        seen.append(line)
        if re.search(pattern, line):
            return True
    return False


def _actor_processes() -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if cmdline.startswith("ray::ComfyWorker.run_job"):
            found.append(process.pid)
    return found


def test_four_people_on_two_actors_one_killed_mid_job_every_file_arrives_once(ray_installed, tmp_path):
    """Two CPU actors; one actor's worker process is SIGKILLed while it trains: Ray restarts it, its job goes back to
    the queue and runs again. Every person with a face gets exactly one whole NAME.safetensors; the person whose photo
    has no face fails alone (not retried); the log names the restart; exit 1 (one failed)."""
    comfyui = comfyui_folder(tmp_path)
    base = make_base(tmp_path / "base", {TINY_CKPT: None})
    faces, out = _photos(tmp_path / "faces"), tmp_path / "out"
    workflow = _tiny_workflow_with_face_prep(tmp_path / "tiny_face_prep.json")
    argv = ["--checkpoint", TINY_CKPT, "--workflow", str(workflow), "--folder", str(faces), "--out", str(out),
            "--comfyui", str(comfyui), "--base-directory", str(base), "--ray", "local", "--ray-gpus-per-job", "0",
            "--ray-actors", "2", "--steps", "30", "--batch-size", "1", "--resolution", "64", "--no-progress",
            "--summary-json", str(tmp_path / "summary.json")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_runner(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    killed: int | None = None
    try:
        if _read_until(process, r"ray_(ann|bob|cyd): 1 photo\(s\) on ray actor", seen):
            for _ in range(100):  # the task's worker names itself once it runs the call
                actors = _actor_processes()
                if actors:
                    killed = actors[0]
                    os.kill(killed, signal.SIGKILL)
                    break
                time.sleep(0.05)
        stdout, rest = process.communicate(timeout=900)
        seen.append(rest)
    finally:
        if process.poll() is None:
            process.kill()
    err = "".join(seen)
    assert killed is not None, err
    assert process.returncode == 1, err + stdout
    assert re.search(r"ray actor \d died under ray_\w+ \(\w+\); Ray restarts it", err), err
    assert "goes back to the queue" in err and "(attempt 2)" in err
    rows = {row["name"]: row for row in json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))}
    statuses = {n: rows[n]["status"] for n in rows}
    assert statuses == {"ray_ann": "ok", "ray_bob": "ok", "ray_cyd": "ok", "ray_cup": "failed"}, (rows, err[-3000:])
    assert "face" in rows["ray_cup"]["message"].lower()
    assert sorted(p.name for p in out.iterdir()) == ["ray_ann.safetensors", "ray_bob.safetensors", "ray_cyd.safetensors"]
    from safetensors import safe_open

    for name in ("ray_ann", "ray_bob", "ray_cyd"):
        with safe_open(str(out / f"{name}.safetensors"), framework="pt") as handle:
            assert list(handle.get_tensor("clip_l").shape) == [2, 64] and handle.metadata()["steps"] == "30"
    # the actors removed their runs' files from the node's ComfyUI once fetched
    assert not list((base / "models" / "embeddings").glob("ray_*.safetensors"))


def test_a_job_past_its_time_limit_has_its_actor_restarted_and_runs_again(ray_installed, tmp_path):
    """--job-timeout: the actor running a job too long is killed and restarted by Ray, the job runs again as attempt 2;
    Ctrl-C then stops the runner (exit 130) with nothing written."""
    comfyui = comfyui_folder(tmp_path)
    base = make_base(tmp_path / "base", {TINY_CKPT: None})
    faces, out = _photos(tmp_path / "faces"), tmp_path / "out"
    workflow = _tiny_workflow_with_face_prep(tmp_path / "tiny_face_prep.json")
    argv = ["--checkpoint", TINY_CKPT, "--workflow", str(workflow), "--images", str(faces / "ray_ann" / "face.png"),
            "--name", "ray_slow", "--out", str(out), "--comfyui", str(comfyui), "--base-directory", str(base), "--ray", "local",
            "--ray-gpus-per-job", "0", "--steps", "5000", "--batch-size", "1", "--resolution", "64", "--job-timeout", "5",
            "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(_runner(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: list[str] = []
    try:
        _read_until(process, r"\(attempt 2\)", seen)
        process.send_signal(signal.SIGINT)
        _stdout, rest = process.communicate(timeout=120)
        seen.append(rest)
    finally:
        if process.poll() is None:
            process.kill()
    err = "".join(seen)
    assert "ray_slow: past --job-timeout (5 s) on ray actor 0; the actor is killed and Ray restarts it" in err, err
    assert "ray actor 0 is back (restarted by Ray)" in err and "(attempt 2)" in err, err
    assert process.returncode == 130, err
    assert not out.exists() or not list(out.iterdir())
