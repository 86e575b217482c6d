"""The batch runner (`python -m cross_init_core train`) end to end against real ComfyUI servers.

The runner runs as its own process, as users run it, and talks to ComfyUI servers that these tests start
with ComfyUI's main.py on loopback (tests/comfy_servers.py). The farm tests train the tiny SD1 models
through a test-only loader node installed only in the test servers (workflow = the shipped one with that
loader instead of CheckpointLoaderSimple); the local-mode test trains a small real-architecture SD 1.5
checkpoint through the stock CheckpointLoaderSimple.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from comfy_servers import REAL_CKPT, REPO, TINY_CKPT, TINY_LOADER, TestServer, answers, comfyui_folder, make_base, post_json

FAST = ["--steps", "2", "--batch-size", "1", "--resolution", "64"]
ASTRONAUT_HEAD = (144, 43, 304, 203)


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runner")


@pytest.fixture(scope="module")
def comfyui(scratch) -> Path:
    return comfyui_folder(scratch)


@pytest.fixture(scope="module")
def servers(comfyui, scratch):
    """Servers a and b (with the tiny checkpoint) and c (without it: the spare, killed by one test)."""
    made = {name: TestServer(comfyui, make_base(scratch / f"server_{name}", {TINY_CKPT: None} if name != "c" else {}))
            for name in ("a", "b", "c")}
    try:
        for server in made.values():
            server.start()  # all three boot side by side
        for server in made.values():
            server.wait()
        yield made
    finally:
        for server in made.values():
            server.stop()


def workflow_without_face_prep(loader: str) -> dict:
    """The shipped fast workflow with the photos going straight to the trainer, and `loader` as checkpoint loader.

    Face preparation has its own tests; here it would tie the runner's tests to a face detector being
    usable in the environment (OpenCV's bundled cascades, insightface's model files).
    """
    workflow = json.loads((REPO / "workflows" / "api" / "cross_init_fast.json").read_text(encoding="utf-8"))
    (prep,) = [k for k, n in workflow.items() if n["class_type"] == "CrossInitFacePrep"]
    (photos,) = [k for k, n in workflow.items() if n["class_type"] == "LoadImage"]
    for node_id in [k for k, n in workflow.items() if any(v == [prep, 2] for v in n["inputs"].values())]:
        del workflow[node_id]  # the face-prep preview
    del workflow[prep]
    for node in workflow.values():
        if node["class_type"] == "CrossInitTrainer":
            node["inputs"]["images"] = [photos, 0]
            node["inputs"].pop("masks", None)
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = loader
    return workflow


@pytest.fixture(scope="module")
def tiny_workflow(scratch) -> Path:
    """Trains the tiny models of the test-only loader node."""
    path = scratch / "tiny_workflow.json"
    path.write_text(json.dumps(workflow_without_face_prep(TINY_LOADER)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stock_workflow(scratch) -> Path:
    """Loads the checkpoint with the stock CheckpointLoaderSimple."""
    path = scratch / "stock_workflow.json"
    path.write_text(json.dumps(workflow_without_face_prep("CheckpointLoaderSimple")), encoding="utf-8")
    return path


def face_photo(path: Path, size: int) -> Path:
    from PIL import Image
    from skimage import data

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).crop(ASTRONAUT_HEAD).resize((size, size), Image.LANCZOS).save(path)
    return path


def runner_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "cross_init_core", "train", *argv]


def run_cli(argv: list[str], timeout: float = 300) -> tuple[int, str, str]:
    result = subprocess.run(runner_command(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def read_embedding(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def summary(out: str) -> dict[str, list[str]]:
    rows = out.strip().splitlines()[2:-1]
    return {row.split()[0]: row.split() for row in rows}


def run_name(saved: str) -> str:
    """The job name of a file a remote run saved (NAME-RUNID, RUNID 8 hex digits); other names as they are."""
    match = re.fullmatch(r"(.+)-[0-9a-f]{8}", saved)
    return match.group(1) if match else saved


def farm_args(workflow: Path, out: Path, *urls: str) -> list[str]:
    return ["--checkpoint", TINY_CKPT, "--workflow", str(workflow), "--out", str(out), *[a for u in urls for a in ("--server", u)]]


def direct_training_prompt(workflow_path: Path, server: TestServer, photo: Path, name: str, steps: int, seed: int = 0) -> dict:
    """The tiny training graph queued by hand, as the editor does: the photo in the server's input/, LoadImage,
    custom mode at 64 px, the save node writing NAME (overwrite on)."""
    workflow = json.loads(workflow_path.read_text(encoding="utf-8"))
    (input_dir := server.base / "input").mkdir(exist_ok=True)
    (input_dir / f"direct_{name}.png").write_bytes(photo.read_bytes())
    keep = {TINY_LOADER, "LoadImage", "CrossInitEmbeddingInit", "CrossInitLossSettings", "CrossInitTrainer", "CrossInitSaveEmbedding"}
    prompt = {k: v for k, v in workflow.items() if v["class_type"] in keep}
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = f"direct_{name}.png"
        elif node["class_type"] == TINY_LOADER:
            inputs["ckpt_name"] = TINY_CKPT
        elif node["class_type"] == "CrossInitTrainer":
            inputs.update(mode="custom", steps=steps, batch_size=1, learning_rate=0.02, resolution=64, seed=seed)
        elif node["class_type"] == "CrossInitSaveEmbedding":
            inputs.update(name=name, overwrite=True)
    return prompt


def wait_for_line(process: subprocess.Popen, pattern: str, timeout: float, seen: list[str]) -> str:
    """Reads the runner's stderr until a line matches `pattern` (collecting every line into `seen`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


class BreakingProxy:
    """A loopback HTTP and websocket proxy in front of a real ComfyUI server that passes everything through, except
    that the bytes of every `/view` download whose file name matches `corrupt` arrive with one bit flipped: a
    transfer that breaks, which the runner's size and SHA-256 check catches."""

    def __init__(self, upstream: str, corrupt: str, subfolder: str | None = None) -> None:
        self.upstream = upstream
        self.corrupt = re.compile(corrupt)
        self.subfolder = subfolder  # only downloads from this subfolder of output/ (None: any)
        self.url = ""
        self.corrupted: list[str] = []

    async def _handle(self, request):
        import aiohttp
        from aiohttp import web

        if request.path == "/ws":
            theirs = web.WebSocketResponse(max_msg_size=0)
            await theirs.prepare(request)
            async with self.session.ws_connect(self.upstream + request.path_qs, max_msg_size=0) as ours:
                async def pump(source, sink) -> None:
                    async for message in source:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            await sink.send_str(message.data)
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            await sink.send_bytes(message.data)

                tasks = [asyncio.ensure_future(pump(ours, theirs)), asyncio.ensure_future(pump(theirs, ours))]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:
                    task.cancel()
            await theirs.close()
            return theirs
        headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
        async with self.session.request(request.method, self.upstream + request.path_qs, data=await request.read(),
                                        headers=headers) as answer:
            body, status = await answer.read(), answer.status
            kind = answer.headers.get("Content-Type")
        name = request.query.get("filename", "")
        wanted = self.subfolder is None or request.query.get("subfolder") == self.subfolder
        if request.path == "/view" and status == 200 and self.corrupt.fullmatch(name) and wanted:
            self.corrupted.append(name)
            body = body[:-1] + bytes([body[-1] ^ 1])
        return web.Response(status=status, body=body, headers={"Content-Type": kind} if kind else None)

    def __enter__(self) -> BreakingProxy:
        import threading

        import aiohttp
        from aiohttp import web

        self.loop = asyncio.new_event_loop()

        async def start() -> None:
            self.session = aiohttp.ClientSession()
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

        self.loop.run_until_complete(start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


# ---------------------------------------------------------------------------------------------
# No server needed


def test_help_documents_every_option_without_starting_comfyui():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cross_init_core", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 60
    assert "aiohttp" not in result.stderr  # the HTTP client loads only for a run
    sys.path.append(str(REPO))
    from cross_init_core.client.train.command import build_parser

    options = {s for action in build_parser()._actions for s in action.option_strings}
    assert {"--comfyui", "--checkpoint", "--images", "--name", "--mode", "--seed", "--steps", "--batch-size", "--resolution",
            "--folder", "--overwrite", "--samples", "--server", "--out", "--skip-existing", "--summary-json"} <= options
    text = " ".join(result.stdout.split())
    assert [o for o in sorted(options) if o not in text] == []
    assert "exit codes" in text and "embedding:NAME" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_tqdm_bar_on_a_terminal_and_plain_lines_in_a_log():
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    from cross_init_core.client.progress import ProgressBar

    def feed(bar: ProgressBar, nodes: tuple[tuple[str, int], ...]) -> None:
        for node, total in nodes:
            for value in range(total + 1):
                bar.hook(value, total, node)
        bar.finish()

    terminal = _Terminal()
    feed(ProgressBar(terminal, "[1/2] me"), (("prep", 3), ("trainer", 25)))
    text = terminal.getvalue()
    assert "[1/2] me: 100%|" in text and "| 3/3 [" in text and "| 25/25 [" in text  # tqdm's bar, one per node
    assert text.count("\n") == 2 and text.count("\r") > 2  # redrawn in place; each bar ends its own line

    log = io.StringIO()
    feed(ProgressBar(log, "[1/2] me @ gpu1"), (("trainer", 25),))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 11  # a line every 10 %, 0 % to 100 %
    assert [line.split(" | ")[1].split()[0] for line in lines[::5]] == ["0/25", "13/25", "25/25"]
    assert all(line.startswith("[1/2] me @ gpu1 | ") for line in lines)

    several = _Terminal()  # jobs side by side on several servers: lines, never redrawn bars that would interleave
    feed(ProgressBar(several, "me", redraw=False), (("trainer", 4),))
    assert several.getvalue().count("\n") == 5 and "\r" not in several.getvalue()

    for quiet in (_Terminal(), io.StringIO()):  # --no-progress / --quiet
        feed(ProgressBar(quiet, "me", enabled=False), (("trainer", 4),))
        assert quiet.getvalue() == ""


@pytest.mark.parametrize("argv", [
    ["--images", "{photo}", "--name", "a b"],
    ["--images", "{photo}", "--name", "../escape"],
    ["--images", "{missing}", "--name", "cli_m"],
    ["--images", "{broken}", "--name", "cli_broken_photo"],
    ["--images", "{photo}"],
    ["--images", "{photo}", "--name", "cli_r", "--resolution", "100"],
    ["--folder", "{empty}"],
    ["--images", "{photo}", "--name", "cli_taken"],
])
def test_bad_inputs_exit_2_before_contacting_any_server(tmp_path, argv):
    photo = face_photo(tmp_path / "p.png", 64)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cli_taken.safetensors").write_bytes(b"precious bytes")
    values = {"photo": photo, "missing": tmp_path / "missing.png", "empty": tmp_path / "empty", "broken": tmp_path / "broken.png"}
    # port 9 (discard) has no ComfyUI: any attempt to reach it would show up as a "not answering" error
    argv = ["--checkpoint", TINY_CKPT, "--server", "http://127.0.0.1:9", "--out", str(out),
            *(a.format(**{k: str(v) for k, v in values.items()}) for a in argv)]
    code, stdout, stderr = run_cli(argv, timeout=120)
    assert code == 2 and stdout == "", stderr
    assert stderr.strip() and "not answering" not in stderr
    assert (out / "cli_taken.safetensors").read_bytes() == b"precious bytes" and files_in(out) == ["cli_taken.safetensors"]
    if "cli_broken_photo" in argv:
        assert "broken.png" in stderr and "not a readable image" in stderr


def test_a_workflow_file_that_is_not_an_api_graph_exits_2_naming_it(tmp_path):
    photo = face_photo(tmp_path / "p.png", 64)
    out = tmp_path / "out"
    out.mkdir()
    workflow = tmp_path / "wf.json"
    for content, reason in ((b"[1, 2]", "not an API-format workflow"), (b"{oops", "Expecting property name")):
        workflow.write_bytes(content)
        code, stdout, stderr = run_cli(["--checkpoint", TINY_CKPT, "--server", "http://127.0.0.1:9", "--out", str(out),
                                        "--images", str(photo), "--name", "cli_wf", "--workflow", str(workflow)], timeout=120)
        assert code == 2 and stdout == "", stderr
        assert f"workflow {workflow}: cannot be read" in stderr and reason in stderr, stderr
        assert "Traceback" not in stderr and "not answering" not in stderr
        assert files_in(out) == []


def test_an_out_or_summary_path_that_cannot_be_written_exits_2_before_any_work(tmp_path):
    """--out in place of a file (or below one) and --summary-json that is a folder or in a missing one are refused
    before any server is asked, rather than after the training, when the files would be written."""
    photo = face_photo(tmp_path / "p.png", 64)
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"precious bytes")
    out = tmp_path / "out"
    cases = [
        (["--out", str(a_file)], f"--out {a_file}: exists and is not a folder"),
        (["--out", str(a_file / "sub")], f"--out {a_file / 'sub'}: cannot be made: {a_file} is a file"),
        (["--out", str(out), "--summary-json", str(tmp_path)], f"--summary-json {tmp_path}: is a folder"),
        (["--out", str(out), "--summary-json", str(tmp_path / "none" / "s.json")],
         f"--summary-json {tmp_path / 'none' / 's.json'}: the folder {tmp_path / 'none'} does not exist"),
    ]
    for extra, message in cases:
        # port 9 (discard) has no ComfyUI: any attempt to reach it would show up as a "not answering" error
        code, stdout, stderr = run_cli(["--checkpoint", TINY_CKPT, "--server", "http://127.0.0.1:9", "--images", str(photo),
                                        "--name", "cli_paths", *extra], timeout=120)
        assert code == 2 and stdout == "", (extra, stderr)
        assert message in stderr and "not answering" not in stderr and "Traceback" not in stderr, (extra, stderr)
    assert a_file.read_bytes() == b"precious bytes" and files_in(tmp_path) == ["a_file", "p.png"]


def test_the_files_a_run_writes_are_known_before_any_work(tmp_path):
    """Which files a job writes (NAME, its checkpoints; --resume's count going on), which are taken, which names
    would be too long once a remote run adds its id, and how the photos reach the graph: whole, as one image list
    for face prep; as a batch of one shape where a workflow has no face prep (photos of two shapes refused first)."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    from PIL import Image

    from cross_init_core.client.prompt_graph import PHOTO_LOADER, load_workflow
    from cross_init_core.client.train import graph, jobs

    job = jobs.Job(name="anna", images=[], source="--images")
    assert jobs.Outputs(320, 80).names(job) == ["anna-step0080", "anna-step0160", "anna-step0240", "anna-step0320", "anna"]
    assert jobs.Outputs(25, 80).names(job) == ["anna"] and jobs.Outputs(25).names(job) == ["anna"]
    (tmp_path / "anna.safetensors").write_bytes(b"x")
    assert jobs.resume_sources([job], tmp_path) == [] and job.resume_steps == 0  # no count: from 0
    assert re.fullmatch(r"anna-original-[0-9a-f]{8}", job.keep_as)  # kept under a name of this run's
    job.resume_steps, job.keep_as, job.resume_data = 320, "anna-step0320", b"x"
    assert jobs.Outputs(160, 80, resume=True).names(job) == ["anna-step0320", "anna-step0400", "anna-step0480", "anna"]
    assert jobs.clash_problems([job], tmp_path, jobs.Outputs(160, 80, resume=True), False, False) == []  # NAME: continued
    problems = jobs.clash_problems([job], tmp_path, jobs.Outputs(160, 80), False, False)
    assert len(problems) == 1 and "anna.safetensors already exists" in problems[0]  # elsewhere NAME is never replaced
    (tmp_path / "anna-step0480.safetensors").write_bytes(b"x")
    assert "anna-step0480.safetensors already exists" in jobs.clash_problems([job], tmp_path, jobs.Outputs(160, 80, True), False,
                                                                               False)[0]
    (tmp_path / "anna-step0480.safetensors").unlink()
    (tmp_path / "anna-step0320.safetensors").write_bytes(b"x")  # the continued file, kept there already: no clash
    assert jobs.clash_problems([job], tmp_path, jobs.Outputs(160, 80, resume=True), False, False) == []
    (tmp_path / "anna-step0320.safetensors").write_bytes(b"another file")
    assert "anna-step0320.safetensors already exists" in jobs.clash_problems([job], tmp_path, jobs.Outputs(160, 80, True), False,
                                                                               False)[0]
    # the server's save node gets NAME-RUNID and refuses a name with no room for any checkpoint (-step200000): 80 fit
    assert jobs.long_name_problems([jobs.Job(name="n" * 80, images=[], source="x")], jobs.Outputs(320, 80)) == []
    assert "too long" in jobs.long_name_problems([jobs.Job(name="n" * 81, images=[], source="x")], jobs.Outputs(25))[0]
    workflow = load_workflow(REPO / "workflows" / "api" / "cross_init_fast.json")
    settings = graph.TrainGraph(ckpt_name="x.safetensors", name="anna")
    prompt = graph.build_prompt(workflow, settings, ["f/a.png", "f/b.bmp"])
    (photos,) = [k for k, n in prompt.items() if n["class_type"] == PHOTO_LOADER]
    assert prompt[photos]["inputs"]["files"] == "f/a.png\nf/b.bmp"  # every suffix, each photo whole
    (prep,) = [n for n in prompt.values() if n["class_type"] == "CrossInitFacePrep"]
    assert prep["inputs"]["image"] == [photos, 0]
    assert not [n for n in prompt.values() if n["class_type"] in ("ImageBatch", "LoadImage")]
    # a workflow whose trainer reads the photos directly: a batch, which needs one shape
    bare = {k: copy.deepcopy(v) for k, v in workflow.items() if v["class_type"] != "CrossInitFacePrep"}
    trainer = next(v for v in bare.values() if v["class_type"] == "CrossInitTrainer")
    loader = next(k for k, v in bare.items() if v["class_type"] == "LoadImage")
    trainer["inputs"]["images"] = [loader, 0]
    trainer["inputs"].pop("masks", None)
    bare = {k: v for k, v in bare.items() if not any(isinstance(x, list) and x[0] == "3" for x in v["inputs"].values())}
    assert not graph.photos_stay_whole(bare) and graph.photos_stay_whole(workflow)
    batched = graph.build_prompt(bare, settings, ["f/a.png", "f/b.png"])
    assert [n["class_type"] for n in batched.values()].count("ImageBatch") == 1
    Image.new("RGB", (640, 480)).save(tmp_path / "wide.png")
    Image.new("RGB", (480, 640)).save(tmp_path / "tall.png")
    Image.new("RGB", (320, 240)).save(tmp_path / "wide2.png")  # another size, the same shape: ImageBatch only resizes
    mixed = jobs.Job(name="mixed", images=[tmp_path / "wide.png", tmp_path / "tall.png"], source="--images")
    same = jobs.Job(name="same", images=[tmp_path / "wide.png", tmp_path / "wide2.png"], source="faces/same")
    (problem,) = jobs.same_shape_problems([mixed, same], "bare.json")
    assert problem.startswith("--images: photos of different shapes (wide.png 640x480, tall.png 480x640)") and "bare.json" in problem


def _client_modules():
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    from cross_init_core.client.train import farm, jobs
    from cross_init_core.common import atomic_files

    return atomic_files, farm, jobs


def test_files_reach_a_folder_all_or_none_and_a_failed_replacement_puts_back_what_was_replaced(tmp_path):
    """write_all: two files replaced, then the third cannot be (a folder squats on its name): the first two get their
    old bytes back, a new file written before is removed, and no temp file is left."""
    atomic_files, _farm, _jobs = _client_modules()
    (tmp_path / "a.safetensors").write_bytes(b"old a")
    (tmp_path / "b.safetensors").write_bytes(b"old b")
    (tmp_path / "c.safetensors").mkdir()
    files = [("new.safetensors", b"new", False), ("a.safetensors", b"A", True), ("b.safetensors", b"B", True),
             ("c.safetensors", b"C", True)]
    with pytest.raises(OSError):
        atomic_files.write_all(tmp_path, files)
    assert (tmp_path / "a.safetensors").read_bytes() == b"old a" and (tmp_path / "b.safetensors").read_bytes() == b"old b"
    assert files_in(tmp_path) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    with pytest.raises(FileExistsError):  # a name that may not be replaced, taken meanwhile: nothing changes either
        atomic_files.write_all(tmp_path, [("b.safetensors", b"B", True), ("a.safetensors", b"A", False)])
    assert (tmp_path / "b.safetensors").read_bytes() == b"old b" and files_in(tmp_path) == ["a.safetensors", "b.safetensors",
                                                                                             "c.safetensors"]
    written = atomic_files.write_all(tmp_path, [("a.safetensors", b"A", True), ("d.safetensors", b"D", False)])
    assert [p.name for p in written] == ["a.safetensors", "d.safetensors"] and (tmp_path / "a.safetensors").read_bytes() == b"A"


def test_a_late_save_of_a_dead_attempt_never_becomes_name_and_is_removed_from_the_local_comfyui(tmp_path):
    """Every server saves under NAME-RUNID (never NAME): an attempt given up for dead that still finishes writes only its
    own run's names, and once the local ComfyUI has stopped the runner removes every run's files there, the late
    ones too; the user's own files stay."""
    _atomic, farm, jobs = _client_modules()
    job = jobs.Job(name="anna", images=[], source="--images")
    job.run_ids = ["0badc0de", "00c0ffee"]  # attempt 1 given up for dead, attempt 2 done
    assert {farm.saved_name(job, run_id) for run_id in job.run_ids} == {"anna-0badc0de", "anna-00c0ffee"}
    embeddings, output = tmp_path / "models" / "embeddings", tmp_path / "output"
    loras, copies, lora_copies = tmp_path / "models" / "loras", output / "cross_init_embeddings", output / "cross_init_loras"
    ours = [embeddings / "anna-0badc0de.safetensors", embeddings / "anna-0badc0de-step0001.safetensors",  # the late save
            embeddings / "anna-00c0ffee.safetensors", copies / "anna-0badc0de.safetensors", copies / "anna-00c0ffee.safetensors",
            loras / "anna-00c0ffee.safetensors", lora_copies / "anna-00c0ffee.safetensors",
            # copies whose name was taken in output/ (atomic_files.write_new's NAME-xxxxxxxx)
            copies / "anna-00c0ffee-1a2b3c4d.safetensors", lora_copies / "anna-00c0ffee-step0004-99aa00ff.safetensors"]
    theirs = [embeddings / "anna.safetensors", embeddings / "anna-deadbeef.safetensors", embeddings / "anna-0badc0de-x.pt",
              copies / "anna.safetensors", copies / "anna-00c0ffee-mine.safetensors", loras / "anna.safetensors",
              embeddings / "anna-00c0ffee-1a2b3c4d.safetensors"]  # only a copy in output/ gets a random suffix
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(path.name.encode())
    farm.remove_run_files([job], embeddings, output)
    assert not [p for p in ours if p.exists()] and all(p.read_bytes() == p.name.encode() for p in theirs)


# ---------------------------------------------------------------------------------------------
# The local ComfyUI (no --server): started, used and stopped by the runner


def test_one_person_on_the_local_comfyui_with_a_real_checkpoint(pack, comfyui, stock_workflow, tmp_path):
    """Default mode: the runner starts main.py of --comfyui on loopback with --base-directory, trains through
    the stock CheckpointLoaderSimple, writes into that ComfyUI's embeddings folder and stops the server."""
    from comfy_servers import checkpoint_cache, small_checkpoint

    # the pack is not installed in this base directory: the runner must load it from where it is
    base = make_base(tmp_path / "base", {REAL_CKPT: small_checkpoint(checkpoint_cache())}, nodes=False)
    photos = [face_photo(tmp_path / "one.png", 96), face_photo(tmp_path / "two.jpg", 80)]
    summary_json = tmp_path / "summary.json"
    code, out, err = run_cli(["--comfyui", str(comfyui), "--base-directory", str(base), "--cpu", "--checkpoint", REAL_CKPT,
                              "--workflow", str(stock_workflow), "--images", *map(str, photos), "--name", "cli_local", "--seed", "3", *FAST,
                              "--summary-json", str(summary_json)], timeout=600)
    assert code == 0, err
    path = base / "models" / "embeddings" / "cli_local.safetensors"
    tensors, metadata = read_embedding(path)
    assert list(tensors) == ["clip_l"] and list(tensors["clip_l"].shape) == [2, 768] and torch.isfinite(tensors["clip_l"]).all()
    assert metadata["mode"] == "custom" and metadata["steps"] == "2" and metadata["seed"] == "3" and metadata["resolution"] == "64"
    assert files_in(path.parent) == ["cli_local.safetensors"]  # no temp file left beside it
    row = summary(out)["cli_local"]
    assert row[1:3] == ["2", "2"] and float(row[3]) > 0 and float(row[4]) > 0 and row[6] == "local" and row[7] == str(path)
    assert row[5] == "-" and "peak_vram_mib" not in metadata  # no GPU here: no peak VRAM to report
    (entry,) = json.loads(summary_json.read_text())
    assert entry["server"] == "local" and entry["status"] == "ok" and entry["steps"] == 2 and entry["peak_vram_mib"] is None
    port = re.search(r"on http://127\.0\.0\.1:(\d+)", err).group(1)
    assert not answers(f"http://127.0.0.1:{port}")  # the child server was stopped
    assert "2/2" in err  # progress from the server's websocket


# ---------------------------------------------------------------------------------------------
# Servers


def test_folder_over_two_servers_each_person_trained_once(servers, tiny_workflow, tmp_path):
    a, b = servers["a"], servers["b"]
    face_photo(tmp_path / "faces" / "cli_anna" / "a.png", 96)
    face_photo(tmp_path / "faces" / "cli_bob" / "b1.png", 64)
    face_photo(tmp_path / "faces" / "cli_bob" / "b2.webp", 72)
    face_photo(tmp_path / "faces" / "cli_carol.png", 80)
    face_photo(tmp_path / "faces" / "cli_dan.png", 88)
    out = tmp_path / "out"
    summary_json = tmp_path / "summary.json"
    code, stdout, err = run_cli([*farm_args(tiny_workflow, out, a.url, b.url), "--folder", str(tmp_path / "faces"), *FAST,
                                 "--no-progress", "--summary-json", str(summary_json)])
    assert code == 0, err
    names = ["cli_anna", "cli_bob", "cli_carol", "cli_dan"]
    assert files_in(out) == [f"{n}.safetensors" for n in names]
    for name in names:
        assert list(read_embedding(out / f"{name}.safetensors")[0]["clip_l"].shape) == [2, 64]
    trained = [run_name(n) for n in a.saved_names() + b.saved_names() if run_name(n) in names]
    assert sorted(trained) == names  # each exactly once, over both servers
    rows = {r["name"]: r for r in json.loads(summary_json.read_text())}
    assert {r["server"] for r in rows.values()} == {a.url, b.url}  # both servers worked
    assert rows["cli_bob"]["images"] == 2 and all(r["status"] == "ok" and r["seconds"] > 0 for r in rows.values())
    assert "4 written, 0 failed, 0 skipped" in stdout

    # the file that came back is the file the server saved (as NAME-RUNID, a new file there), byte for byte
    server_of = {n: (a if rows[n]["server"] == a.url else b) for n in names}
    for name in names:
        (saved,) = [p for p in (server_of[name].base / "models" / "embeddings").iterdir() if run_name(p.stem) == name]
        assert saved.read_bytes() == (out / f"{name}.safetensors").read_bytes()

    # a second pass resumes: nothing is queued again
    code, stdout, err = run_cli([*farm_args(tiny_workflow, out, a.url, b.url), "--folder", str(tmp_path / "faces"), *FAST,
                                 "--skip-existing"])
    assert code == 0, err
    assert "0 written, 0 failed, 4 skipped" in stdout
    assert sorted(run_name(n) for n in a.saved_names() + b.saved_names() if run_name(n) in names) == names


def test_result_equals_the_workflow_queued_directly(servers, tiny_workflow, tmp_path):
    """The same graph queued by hand (as the editor does: photo in input/, LoadImage, same seed) gives the
    same vectors as the runner."""
    a = servers["a"]
    photo = face_photo(tmp_path / "me.png", 96)
    out = tmp_path / "out"
    code, _, err = run_cli([*farm_args(tiny_workflow, out, a.url), "--images", str(photo), "--name", "cli_same", "--seed", "11",
                            *FAST, "--no-progress"])
    assert code == 0, err

    prompt = direct_training_prompt(tiny_workflow, a, photo, "cli_same_direct", steps=2, seed=11)
    prompt_id = post_json(a.url + "/prompt", {"prompt": prompt})["prompt_id"]
    deadline = time.monotonic() + 180
    while prompt_id not in a.history() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert a.history()[prompt_id]["status"]["status_str"] == "success"
    direct, direct_meta = read_embedding(a.base / "models" / "embeddings" / "cli_same_direct.safetensors")
    ours, our_meta = read_embedding(out / "cli_same.safetensors")
    assert torch.equal(direct["clip_l"], ours["clip_l"])
    assert {k: v for k, v in direct_meta.items() if k != "name"} == {k: v for k, v in our_meta.items() if k != "name"}


def test_failed_job_is_not_retried_and_exits_1(servers, tiny_workflow, tmp_path):
    """A node that fails on the server (here the loader, on a file that is not a checkpoint) fails the job:
    reported with the node's message, run exactly once, never retried on the other server."""
    a, b = servers["a"], servers["b"]
    for server in (a, b):
        (server.base / "models" / "checkpoints" / "cli_broken.safetensors").write_bytes(b"not a checkpoint")
    face_photo(tmp_path / "faces" / "cli_f1.png", 96)
    face_photo(tmp_path / "faces" / "cli_f2.png", 80)
    out = tmp_path / "out"
    argv = [*farm_args(tiny_workflow, out, a.url, b.url), "--folder", str(tmp_path / "faces"), *FAST, "--no-progress"]
    argv[argv.index(TINY_CKPT)] = "cli_broken.safetensors"
    code, stdout, err = run_cli(argv)
    assert code == 1, err
    rows = summary(stdout)
    assert rows["cli_f1"][8] == rows["cli_f2"][8] == "failed:" and "0 written, 2 failed, 0 skipped" in stdout
    assert "is not a checkpoint the test loader accepts" in stdout and TINY_LOADER in stdout
    assert "goes back to the queue" not in err and files_in(out) == []
    for name in ("cli_f1", "cli_f2"):
        runs = [entry for s in (a, b) for entry in s.history().values()
                if any(run_name(str(n.get("inputs", {}).get("name"))) == name for n in entry["prompt"][2].values())]
        assert len(runs) == 1 and runs[0]["status"]["status_str"] == "error"


def test_checkpoint_missing_on_one_server_exits_2_before_any_work(servers, tiny_workflow, tmp_path):
    a, c = servers["a"], servers["c"]
    history_before = len(a.history())
    photo = face_photo(tmp_path / "p.png", 64)
    out = tmp_path / "out"
    code, stdout, err = run_cli([*farm_args(tiny_workflow, out, a.url, c.url), "--images", str(photo), "--name", "cli_nockpt",
                                 *FAST])
    assert code == 2 and stdout == ""
    assert c.url in err and TINY_CKPT in err and a.url not in err.replace(c.url, "")
    assert len(a.history()) == history_before and not out.exists()
    assert not (a.base / "input" / "cross_init_cli").exists() or not any(
        "cli_nockpt" in p.name for p in (a.base / "input" / "cross_init_cli").iterdir())


def test_server_killed_mid_job_the_job_finishes_elsewhere(servers, tiny_workflow, tmp_path):
    a, c = servers["a"], servers["c"]
    (c.base / "models" / "checkpoints" / TINY_CKPT).write_bytes(b"")  # now c can take jobs
    face_photo(tmp_path / "faces" / "cli_k1.png", 96)
    face_photo(tmp_path / "faces" / "cli_k2.png", 80)
    out = tmp_path / "out"
    argv = [*farm_args(tiny_workflow, out, c.url, a.url), "--folder", str(tmp_path / "faces"),
            "--steps", "12", "--batch-size", "1", "--resolution", "64"]
    process = subprocess.Popen(runner_command(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        line = wait_for_line(process, rf"\] (cli_k\d) @ {re.escape(c.url)} \|", 240, seen)  # c reports training progress
        victim = re.search(r"(cli_k\d) @", line).group(1)
        c.kill()
        stdout, rest = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    err = "".join(seen) + rest
    assert process.returncode == 0, err
    assert files_in(out) == ["cli_k1.safetensors", "cli_k2.safetensors"]  # both whole, no temp files
    rows = summary(stdout)
    assert rows[victim][6] == a.url and rows[victim][-1] == "ok"
    assert "goes back to the queue" in err
    for name in ("cli_k1", "cli_k2"):
        tensors, metadata = read_embedding(out / f"{name}.safetensors")
        assert metadata["steps"] == "12" and torch.isfinite(tensors["clip_l"]).all()
    # nothing half-written on the killed server either
    assert [p for p in files_in(c.base / "models" / "embeddings") if p.endswith(".tmp")] == []


def test_ctrl_c_stops_the_local_server_and_leaves_nothing_half_written(comfyui, tiny_workflow, tmp_path):
    import psutil

    base = make_base(tmp_path / "base", {TINY_CKPT: None})
    photo = face_photo(tmp_path / "p.png", 96)
    out = tmp_path / "out"
    argv = ["--comfyui", str(comfyui), "--base-directory", str(base), "--cpu", "--checkpoint", TINY_CKPT,
            "--workflow", str(tiny_workflow), "--out", str(out), "--images", str(photo), "--name", "cli_ctrl_c",
            "--steps", "400", "--batch-size", "1", "--resolution", "64"]
    process = subprocess.Popen(runner_command(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        port = re.search(r":(\d+) \.\.\.", wait_for_line(process, r"starting ComfyUI .* on http://127\.0\.0\.1:\d+", 120, seen)).group(1)
        wait_for_line(process, r"cli_ctrl_c \|", 300, seen)  # training is under way
        children = [p for p in psutil.process_iter(["cmdline"]) if "--port" in (p.info["cmdline"] or [])
                    and port in p.info["cmdline"]]
        assert children, "the child server was not found"
        os.kill(process.pid, signal.SIGINT)
        _stdout, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert not answers(f"http://127.0.0.1:{port}")
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
    assert files_in(out) == []
    assert files_in(base / "models" / "embeddings") == []


# ---------------------------------------------------------------------------------------------
# The evaluation command on the same client


def test_eval_command_generates_scores_and_writes_its_tables(core, comfyui, tmp_path):
    """`python -m cross_init_core eval` on the local ComfyUI (started and stopped by the command) with the
    shipped eval workflow and a small real-architecture SD 1.5 checkpoint: every prompt's images come back,
    the identity report covers each image (random weights draw no faces: counted, never averaged), and the
    CSV/JSON tables and the contact sheet are written. An embedding the server lacks stops before any work."""
    import csv

    from comfy_servers import checkpoint_cache, small_checkpoint

    base = make_base(tmp_path / "base", {REAL_CKPT: small_checkpoint(checkpoint_cache())}, nodes=False)
    vectors = {"clip_l": torch.randn(2, 768, generator=torch.Generator().manual_seed(5))}
    core.embeddings.embedding_io.save_embedding(core.embeddings.embedding.CrossInitEmbedding(vectors=vectors),
                                                base / "models" / "embeddings", "cli_eval_face")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na photo of a {} person\na {} person on the beach\n", encoding="utf-8")
    photo = face_photo(tmp_path / "me.png", 160)
    out = tmp_path / "eval"
    argv = ["eval", "--comfyui", str(comfyui), "--base-directory", str(base), "--cpu", "--checkpoint", REAL_CKPT,
            "--embedding", "cli_eval_face", "--faces", str(photo), "--prompts", str(prompts), "--per-prompt", "2", "--steps", "2",
            "--resolution", "64", "--identity-backend", "dlib", "--no-prompt-score", "--output", str(out)]
    result = subprocess.run([sys.executable, "-m", "cross_init_core", *argv], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(p.name for p in (out / "images").iterdir()) == ["p00_i00.png", "p00_i01.png", "p01_i00.png", "p01_i01.png"]
    text = (out / "scores.json").read_text(encoding="utf-8")
    assert "a photo of a" in text and "on the beach" in text and '"dlib"' in text
    with open(out / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) >= 3  # a header, a row per prompt and the overall row
    assert (out / "contact_sheet.jpg").stat().st_size > 0
    port = re.search(r"on http://127\.0\.0\.1:(\d+)", result.stderr).group(1)
    assert not answers(f"http://127.0.0.1:{port}")  # the child server was stopped
    # several embeddings (a pattern): each evaluated alike, one folder each, and a side-by-side table
    core.embeddings.embedding_io.save_embedding(core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": 2 * vectors["clip_l"]}),
                                     base / "models" / "embeddings", "cli_eval_face-step0002")
    both = tmp_path / "both"
    several = [("cli_eval_face*" if v == "cli_eval_face" else str(both) if v == str(out) else v) for v in argv]
    result = subprocess.run([sys.executable, "-m", "cross_init_core", *several], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(p.name for p in both.iterdir()) == ["cli_eval_face", "cli_eval_face-step0002", "comparison.csv",
                                                      "comparison.json"]
    with open(both / "comparison.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0][2:] == [f"{name}.safetensors:{what}" for name in ("cli_eval_face-step0002", "cli_eval_face")
                            for what in ("faces_found", "identity_mean", "prompt_mean", "error")] + [
        "identity_backend", "identity_metric", "identity_better", "identity_threshold", "prompt_model"]
    assert all(row[-5:-1] == ["dlib", "euclidean", "lower", "0.600000"] for row in table[1:])
    assert [row[0] for row in table[1:]] == ["0", "1", "overall"]
    for folder in ("cli_eval_face", "cli_eval_face-step0002"):
        assert len(list((both / folder / "images").iterdir())) == 4 and (both / folder / "scores.json").is_file()
    assert "cli_eval_face-step0002 id" in result.stdout  # the side-by-side table on the terminal
    bad_argv = [("no_such_face" if v == "cli_eval_face" else v) for v in argv] + ["--overwrite"]
    bad = subprocess.run([sys.executable, "-m", "cross_init_core", *bad_argv], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--embedding no_such_face" in bad.stderr, bad.stderr
    assert sorted(p.name for p in (out / "images").iterdir())[-1] == "p01_i01.png"  # nothing generated by the refused run
    # --overwrite with fewer images per prompt: the old ones are gone, not left beside the new ones
    fewer = [("1" if v == "2" and argv[i - 1] == "--per-prompt" else v) for i, v in enumerate(argv)] + ["--overwrite"]
    result = subprocess.run([sys.executable, "-m", "cross_init_core", *fewer], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(p.name for p in (out / "images").iterdir()) == ["p00_i00.png", "p01_i00.png"]
    assert "identity (lower is better)" in result.stdout


def test_eval_checks_every_embedding_first_then_runs_on_past_a_failed_one(comfyui, tmp_path):
    """Before any prompt, every embedding is checked against the checkpoint (an SDXL file for an SD 1.5 checkpoint, a
    file that is no embedding): exit 2 naming each, nothing written. An embedding that passes but fails while its
    prompts run (vectors so large the images come out NaN, which the identity score refuses) is reported in its row,
    and the embeddings after it still run; the comparison names each embedding by the folder its results are in
    (cli_cmp.pt and cli_cmp.safetensors share a stem, so their folders are their whole names) and the failed one, with
    no prompt finished, gets no folder. A single embedding with no prompt finished leaves no scores.json either,
    which would refuse a rerun without --overwrite."""
    from comfy_servers import checkpoint_cache, small_checkpoint
    from safetensors.torch import save_file

    base = make_base(tmp_path / "base", {REAL_CKPT: small_checkpoint(checkpoint_cache())}, nodes=False)
    embeddings = base / "models" / "embeddings"
    embeddings.mkdir(parents=True)
    vectors = {"clip_l": torch.randn(2, 768, generator=torch.Generator().manual_seed(5))}
    torch.save(vectors, embeddings / "cli_cmp.pt")
    save_file(vectors, str(embeddings / "cli_cmp.safetensors"))
    save_file({"clip_l": vectors["clip_l"], "clip_g": torch.randn(2, 1280)}, str(embeddings / "cli_cmp_sdxl.safetensors"))
    (embeddings / "cli_cmp_broken.pt").write_bytes(b"not an embedding")
    save_file({"clip_l": vectors["clip_l"] * 1e30}, str(embeddings / "cli_cmp_huge.safetensors"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {} person\n", encoding="utf-8")
    photo = face_photo(tmp_path / "me.png", 160)
    argv = [sys.executable, "-m", "cross_init_core", "eval", "--comfyui", str(comfyui), "--base-directory", str(base), "--cpu",
            "--checkpoint", REAL_CKPT, "--faces", str(photo), "--prompts", str(prompts), "--per-prompt", "1", "--steps", "1",
            "--resolution", "64", "--identity-backend", "dlib", "--no-prompt-score"]
    both = tmp_path / "both"
    result = subprocess.run([*argv, "--embedding", "cli_cmp.pt", "cli_cmp_sdxl.safetensors", "cli_cmp_broken.pt", "--output",
                             str(both)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr + result.stdout
    assert "--embedding cli_cmp_sdxl.safetensors: does not fit checkpoint" in result.stderr, result.stderr
    assert "--embedding cli_cmp_broken.pt: does not fit checkpoint" in result.stderr
    assert "--embedding cli_cmp.pt:" not in result.stderr and not both.exists()

    result = subprocess.run([*argv, "--embedding", "cli_cmp.pt", "cli_cmp_huge.safetensors", "cli_cmp.safetensors", "--output",
                             str(both)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr + result.stdout
    assert files_in(both) == ["cli_cmp.pt", "cli_cmp.safetensors", "comparison.csv", "comparison.json"]
    assert (both / "cli_cmp.pt" / "scores.json").is_file() and (both / "cli_cmp.safetensors" / "scores.json").is_file()
    data = json.loads((both / "comparison.json").read_text(encoding="utf-8"))
    assert {name: entry["folder"] for name, entry in data["embeddings"].items()} == {
        "cli_cmp.pt": "cli_cmp.pt", "cli_cmp_huge.safetensors": "cli_cmp_huge", "cli_cmp.safetensors": "cli_cmp.safetensors"}
    assert data["embeddings"]["cli_cmp_huge.safetensors"]["error"].startswith("prompt 0 (a photo of a <face> person)")
    assert data["embeddings"]["cli_cmp.pt"]["error"] is None and data["run"]["complete"] is False
    assert data["meaning"]["identity_backend"] == "dlib" and data["meaning"]["identity_better"] == "lower"
    assert "cli_cmp.pt id (lower better)" in result.stdout and "cli_cmp_huge: prompt 0" in result.stdout

    single = tmp_path / "single"
    result = subprocess.run([*argv, "--embedding", "cli_cmp_huge.safetensors", "--output", str(single)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr + result.stdout
    assert "cli_cmp_huge.safetensors" in result.stderr and files_in(single) == []


# ---------------------------------------------------------------------------------------------
# The farm never touches what is not its own


def test_a_remote_servers_own_files_are_never_replaced(servers, tiny_workflow, tmp_path):
    """A file of the job's name already on the server (someone else's embedding, an earlier copy under output/)
    stays byte for byte, --overwrite or not: the run writes a new job-unique file there, and --out gets NAME."""
    a = servers["a"]
    theirs = a.base / "models" / "embeddings" / "cli_theirs.safetensors"
    their_copy = a.base / "output" / "cross_init_embeddings" / "cli_theirs.safetensors"
    for path, content in ((theirs, b"someone else's embedding"), (their_copy, b"an earlier copy")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    photo = face_photo(tmp_path / "me.png", 96)
    out = tmp_path / "out"
    code, _stdout, err = run_cli([*farm_args(tiny_workflow, out, a.url), "--images", str(photo), "--name", "cli_theirs",
                                  "--overwrite", *FAST, "--no-progress"])
    assert code == 0, err
    assert theirs.read_bytes() == b"someone else's embedding" and their_copy.read_bytes() == b"an earlier copy"
    ours = (out / "cli_theirs.safetensors").read_bytes()
    assert list(read_embedding(out / "cli_theirs.safetensors")[0]["clip_l"].shape) == [2, 64]
    new = [p for p in theirs.parent.iterdir() if re.fullmatch(r"cli_theirs-[0-9a-f]{8}\.safetensors", p.name)]
    copies = [p for p in their_copy.parent.iterdir() if p != their_copy and p.name.startswith("cli_theirs-")]
    assert len(new) == 1 and new[0].read_bytes() == ours  # the run's own file, new, job-unique
    assert len(copies) == 1 and copies[0].read_bytes() == ours


def test_a_prompt_that_vanishes_from_the_queue_is_noticed_and_run_again(servers, tiny_workflow, tmp_path):
    """Another client deletes the runner's prompt from the server's queue: the runner notices (in neither the
    queue nor the history) within seconds, and runs the job again as a second attempt."""
    b = servers["b"]
    photo = face_photo(tmp_path / "me.png", 96)
    # keep the server busy, so the runner's prompt waits in the queue where another client can delete it
    busy = direct_training_prompt(tiny_workflow, b, photo, "cli_busy", steps=20)
    busy_id = post_json(b.url + "/prompt", {"prompt": busy})["prompt_id"]
    out = tmp_path / "out"
    argv = [*farm_args(tiny_workflow, out, b.url), "--images", str(photo), "--name", "cli_vanish", *FAST, "--no-progress"]
    process = subprocess.Popen(runner_command(argv), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deleted = b.delete_pending(besides={busy_id}, timeout=120)
        stdout, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert deleted is not None
    assert "in neither its queue nor its history" in err and "goes back to the queue" in err and "(attempt 2)" in err
    assert list(read_embedding(out / "cli_vanish.safetensors")[0]["clip_l"].shape) == [2, 64]
    assert "1 written, 0 failed, 0 skipped" in stdout


# ---------------------------------------------------------------------------------------------
# Checkpoints and continuing a run from a terminal


def test_save_every_brings_the_checkpoints_back_and_resume_goes_on(servers, tiny_workflow, tmp_path):
    a = servers["a"]
    photo = face_photo(tmp_path / "me.png", 96)
    out = tmp_path / "out"
    base = [*farm_args(tiny_workflow, out, a.url), "--images", str(photo), "--name", "cli_ckpt", "--batch-size", "1",
            "--resolution", "64", "--no-progress"]
    code, stdout, err = run_cli([*base, "--steps", "4", "--save-every", "2"])
    assert code == 0, err
    assert files_in(out) == ["cli_ckpt-step0002.safetensors", "cli_ckpt-step0004.safetensors", "cli_ckpt.safetensors"]
    files = {name: read_embedding(out / name) for name in files_in(out)}
    assert [files[n][1]["steps"] for n in files_in(out)] == ["2", "4", "4"]
    assert torch.equal(files["cli_ckpt-step0004.safetensors"][0]["clip_l"], files["cli_ckpt.safetensors"][0]["clip_l"])
    assert not torch.equal(files["cli_ckpt-step0002.safetensors"][0]["clip_l"], files["cli_ckpt.safetensors"][0]["clip_l"])
    assert summary(stdout)["cli_ckpt"][2] == "4"

    # NAME exists: --skip-existing skips it; a taken checkpoint name of another job stops the run before any work
    code, _stdout, err = run_cli([*base, "--steps", "4", "--save-every", "2", "--skip-existing"])
    assert code == 0 and "0 written, 0 failed, 1 skipped" in _stdout
    (out / "cli_ckpt_third-step0002.safetensors").write_bytes(b"precious")
    code, _stdout, err = run_cli([*base[:base.index("--name") + 1], "cli_ckpt_third", *base[base.index("--name") + 2:],
                                  "--steps", "4", "--save-every", "2"])
    assert code == 2 and "cli_ckpt_third-step0002.safetensors already exists" in err
    assert (out / "cli_ckpt_third-step0002.safetensors").read_bytes() == b"precious"


def test_a_download_that_breaks_leaves_every_file_in_out_as_it_was(servers, tiny_workflow, tmp_path):
    """The checkpoints come back before NAME: when NAME's download breaks (here on every attempt), the job fails and
    no file in --out is replaced, not even the checkpoints that came back whole, so --out never holds a set
    mixed from two runs."""
    a = servers["a"]
    photo = face_photo(tmp_path / "me.png", 96)
    out = tmp_path / "out"
    out.mkdir()
    before = {"cli_half-step0001.safetensors": b"an earlier run, step 1", "cli_half-step0002.safetensors": b"an earlier run, step 2",
              "cli_half.safetensors": b"an earlier run"}
    for name, data in before.items():
        (out / name).write_bytes(data)
    with BreakingProxy(a.url, corrupt=r"cli_half-[0-9a-f]{8}\.safetensors") as proxy:
        code, stdout, err = run_cli([*farm_args(tiny_workflow, out, proxy.url), "--images", str(photo), "--name", "cli_half",
                                     "--steps", "2", "--save-every", "1", "--batch-size", "1", "--resolution", "64",
                                     "--overwrite", "--no-progress"])
    assert code == 1, err
    assert len(proxy.corrupted) == 3  # NAME broke on each attempt, after its checkpoints had come back whole
    assert "does not match what the save node wrote" in stdout and "0 written, 1 failed, 0 skipped" in stdout
    assert {name: (out / name).read_bytes() for name in files_in(out)} == before  # no temp file left either


def test_resume_continues_the_file_in_out_on_the_local_comfyui(pack, comfyui, stock_workflow, tmp_path):
    """--resume with the stock loader and the small real-architecture SD 1.5 (real 768-wide CLIP-L, which the
    loaded file must match): two more steps of the file in --out, the count goes on, the continued file is kept."""
    from comfy_servers import checkpoint_cache, small_checkpoint

    base = make_base(tmp_path / "base", {REAL_CKPT: small_checkpoint(checkpoint_cache())}, nodes=False)
    photo = face_photo(tmp_path / "me.png", 96)
    argv = ["--comfyui", str(comfyui), "--base-directory", str(base), "--cpu", "--checkpoint", REAL_CKPT, "--workflow",
            str(stock_workflow), "--images", str(photo), "--name", "cli_resume", *FAST, "--no-progress"]
    code, _stdout, err = run_cli(argv, timeout=600)
    assert code == 0, err
    out = base / "models" / "embeddings"
    first = (out / "cli_resume.safetensors").read_bytes()
    code, stdout, err = run_cli([*argv, "--resume"], timeout=600)
    assert code == 0, err
    tensors, metadata = read_embedding(out / "cli_resume.safetensors")
    assert metadata["steps"] == "4" and metadata["continued_from_steps"] == "2" and metadata["init_names"] == "reference"
    assert (out / "cli_resume-step0002.safetensors").read_bytes() == first  # the file it continued, kept
    assert not torch.equal(tensors["clip_l"], read_embedding(out / "cli_resume-step0002.safetensors")[0]["clip_l"])
    assert summary(stdout)["cli_resume"][2] == "4"
    assert files_in(out) == ["cli_resume-step0002.safetensors", "cli_resume.safetensors"]
    # the optimizer went on from the state the file carries: 2 + 2 steps equal 4 steps, bit for bit
    code, _stdout, err = run_cli([*argv[:argv.index("--name") + 1], "cli_four", *argv[argv.index("--name") + 2:argv.index("2")],
                                  "4", *argv[argv.index("2") + 1:]], timeout=600)
    assert code == 0, err
    assert torch.equal(tensors["clip_l"], read_embedding(out / "cli_four.safetensors")[0]["clip_l"])
    # every run saved under its own NAME-RUNID on the server; those copies were removed when it stopped
    assert files_in(out) == ["cli_four.safetensors", "cli_resume-step0002.safetensors", "cli_resume.safetensors"]
    assert not [p for p in (base / "output").rglob("*.safetensors")]
    code, _stdout, err = run_cli([*argv[:argv.index("--name") + 1], "cli_nothing_yet", *argv[argv.index("--name") + 2:],
                                  "--resume"], timeout=600)
    assert code == 2 and "--resume needs" in err and "cli_nothing_yet.safetensors" in err


def _mirror(comfyui: Path, folder: Path) -> Path:
    """A ComfyUI folder at `folder` that main.py runs from: main.py copied (its folder is where it imports from), every
    other entry linked."""
    folder.mkdir(parents=True)
    for entry in comfyui.iterdir():
        if entry.name == "main.py":
            (folder / entry.name).write_bytes(entry.read_bytes())
        elif entry.name != "extra_model_paths.yaml":
            (folder / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return folder


def _foreign_file(path: Path, metadata: dict[str, str], seed: int) -> bytes:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": torch.randn(2, 768, generator=torch.Generator().manual_seed(seed)) * 0.02}, str(path), metadata=metadata)
    return path.read_bytes()


def test_resume_writes_exactly_the_files_it_planned_and_never_replaces_one(pack, comfyui, stock_workflow, tmp_path):
    """Three files to continue: a Cross-Init run's (its count trusted: kept as NAME-step0002, checkpoints 3 and 4),
    another trainer's claiming steps=2 (not trusted: kept as NAME-original-RUNID, checkpoints 1 and 2) and one with
    no count. What the runner plans before any work is exactly what the server's trainer writes. The review's case
    (another trainer's file, NAME-step0001 already there) is refused before any work, naming the file."""
    from comfy_servers import checkpoint_cache, small_checkpoint

    _atomic, _farm, jobs = _client_modules()
    # folders with spaces and non-ASCII letters, as a Windows user's "C:\Users\Zoë\ComfyUI portable" has them
    spaced = tmp_path / "Zoë's Cömfy UI"
    comfyui = _mirror(comfyui, spaced / "ComfyUI")
    base = make_base(spaced / "bäse dir", {REAL_CKPT: small_checkpoint(checkpoint_cache())}, nodes=False)
    out, faces = spaced / "out folder", spaced / "faces"
    originals = {
        "trusted": _foreign_file(out / "trusted.safetensors", {"method": "cross_initialization", "steps": "2"}, 1),
        "untrusted": _foreign_file(out / "untrusted.safetensors", {"steps": "2", "format": "another trainer"}, 2),
        "nocount": _foreign_file(out / "nocount.safetensors", {"method": "cross_initialization"}, 3),
    }
    for name in originals:
        face_photo(faces / name / "me.png", 96)
    common = ["--comfyui", str(comfyui), "--base-directory", str(base), "--cpu", "--checkpoint", REAL_CKPT, "--workflow",
              str(stock_workflow), "--out", str(out), *FAST, "--save-every", "1", "--resume", "--no-progress"]

    victim = tmp_path / "victim"
    original = _foreign_file(victim / "victim.safetensors", {"steps": "2"}, 4)
    (victim / "victim-step0001.safetensors").write_bytes(b"precious")
    code, _stdout, err = run_cli([*common[:common.index("--out") + 1], str(victim), *common[common.index("--out") + 2:],
                                  "--images", str(faces / "trusted" / "me.png"), "--name", "victim"])
    assert code == 2 and "victim-step0001.safetensors already exists" in err, err
    assert (victim / "victim-step0001.safetensors").read_bytes() == b"precious" and files_in(victim) == [
        "victim-step0001.safetensors", "victim.safetensors"]
    assert (victim / "victim.safetensors").read_bytes() == original

    plan = {}
    for name in originals:
        job = jobs.Job(name=name, images=[], source=name)
        assert jobs.resume_sources([job], out) == []
        plan[name] = jobs.Outputs(2, 1, resume=True).names(job)
    code, _stdout, err = run_cli([*common, "--folder", str(faces)])
    assert code == 0, err
    written = files_in(out)
    anonymous = [re.sub(r"-original-[0-9a-f]{8}", "-original-RUNID", n) for n in written]
    planned = sorted(f"{re.sub(r'-original-[0-9a-f]{8}', '-original-RUNID', n)}.safetensors" for names in plan.values() for n in names)
    assert sorted(anonymous) == planned
    assert plan["trusted"] == ["trusted-step0002", "trusted-step0003", "trusted-step0004", "trusted"]
    assert plan["untrusted"][1:] == ["untrusted-step0001", "untrusted-step0002", "untrusted"]
    assert plan["nocount"][1:] == ["nocount-step0001", "nocount-step0002", "nocount"]
    for name, data in originals.items():  # each continued file kept, byte for byte
        (kept,) = [n for n in written if n.startswith(f"{name}-") and (out / n).read_bytes() == data]
        expected = r"trusted-step0002" if name == "trusted" else rf"{name}-original-[0-9a-f]{{8}}"
        assert re.fullmatch(rf"{expected}\.safetensors", kept), kept
        assert read_embedding(out / f"{name}.safetensors")[1]["steps"] == ("4" if name == "trusted" else "2")
    assert not [p for p in (base / "models" / "embeddings").glob("*.safetensors")]  # the server's run files, removed


def test_an_error_between_two_replacements_puts_back_the_files_already_replaced(servers, tiny_workflow, tmp_path):
    """--overwrite with NAME's place in --out taken by a folder: the checkpoints are replaced first, then NAME cannot be,
    so the checkpoints get their old bytes back and the job fails (exit 1), naming the problem."""
    a = servers["a"]
    photo = face_photo(tmp_path / "me.png", 96)
    out = tmp_path / "out"
    out.mkdir()
    before = {"cli_undo-step0001.safetensors": b"an earlier run, step 1", "cli_undo-step0002.safetensors": b"an earlier run, step 2"}
    for name, data in before.items():
        (out / name).write_bytes(data)
    (out / "cli_undo.safetensors").mkdir()
    code, stdout, err = run_cli([*farm_args(tiny_workflow, out, a.url), "--images", str(photo), "--name", "cli_undo",
                                 "--steps", "2", "--save-every", "1", "--batch-size", "1", "--resolution", "64",
                                 "--overwrite", "--no-progress"])
    assert code == 1, err
    assert "0 written, 1 failed, 0 skipped" in stdout and "cli_undo.safetensors" in err
    assert {name: (out / name).read_bytes() for name in files_in(out) if (out / name).is_file()} == before
    assert files_in(out) == [*before, "cli_undo.safetensors"]  # no temp file left


# ---------------------------------------------------------------------------------------------
# --lora: the pivotal LoRA stage after Cross-Init, both files back

LORA_FAST = ["--lora", "--lora-steps", "2", "--lora-rank", "4", "--lora-batch-size", "1"]
LORA_MODULE = re.compile(r"lora_unet_(down|mid|up)_blocks?_.*_transformer_blocks_\d+_attn[12]_to_(q|k|v|out_0)")


def _lora_file_bytes(token: str = "anna", bundle: str | None = None, drop: str = "") -> bytes:
    """A small file in Save LoRA's layout (one module, the token bundled as `bundle`), for the runner's check."""
    from safetensors.torch import save

    module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{module}.lora_down.weight": torch.zeros(4, 8), f"{module}.lora_up.weight": torch.zeros(8, 4),
               f"{module}.alpha": torch.tensor(4.0), f"bundle_emb.{bundle or token}.string_to_param.*": torch.zeros(2, 8)}
    tensors.pop(drop, None)
    return save(tensors, {"format": "cross_init_pivotal_lora", "cross_init_bundled_token": bundle or token})


def test_lora_graph_names_and_checks_are_planned_before_any_work(tmp_path):
    """--lora's settings reach the graph through the one PromptBuilder the farm and the Ray actors call (pickled, as
    Ray sends it); the stage reads the trainer's token, models and photos; Save LoRA saves NAME-RUNID without an
    embeddings copy and bundles NAME; both files are in the clash check; a fetched LoRA file is checked."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py
    import pickle

    from cross_init_core.client.prompt_graph import load_workflow
    from cross_init_core.client.train import command, files, graph, jobs

    args = command.parse_args(["train", "--checkpoint", "x.safetensors", "--images", "a.png", "--name", "anna", "--seed", "5",
                               "--lora", "--lora-mode", "full", "--lora-rank", "8", "--lora-steps", "3"])
    builder = graph.PromptBuilder(load_workflow(REPO / "workflows" / "api" / "cross_init_full.json"),
                                  graph.graph_settings(args, "x.safetensors", {}))
    builder = pickle.loads(pickle.dumps(builder))  # what ray_farm hands each actor
    job = jobs.Job(name="anna", images=[], source="--images")
    prompt = builder(job, ["f/a.png"], "f", None, "anna-0123abcd", None)
    (trainer,) = [k for k, n in prompt.items() if n["class_type"] == "CrossInitTrainer"]
    (stage,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "CrossInitPivotalLora"]
    (saver,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "CrossInitSaveLora"]
    t = prompt[trainer]["inputs"]
    assert stage["embedding"] == [trainer, 0] and all(stage[k] == t[k] for k in ("model", "clip", "vae", "images", "loss"))
    # rank 8 on the full preset (rank 32, alpha 16): custom, alpha 4 keeps alpha / rank = 0.5; the rest the preset's
    assert (stage["mode"], stage["rank"], stage["alpha"], stage["steps"], stage["batch_size"]) == ("custom", 8, 4.0, 3, 4)
    assert stage["seed"] == 5 and stage["learning_rate"] == 1e-4 and stage["token_learning_rate"] == 0.0
    assert stage["preview_every"] == 0 and stage["resolution"] == t["resolution"]
    assert saver == {"lora": [saver["lora"][0], 0], "name": "anna-0123abcd", "overwrite": False, "bundle_token": True,
                     "save_embedding": False, "token_name": "anna", "copy_to_output": True}
    assert not [n for n in prompt.values() if n["class_type"] in ("KSampler", "SaveImage")]  # no --samples: pruned
    # --resume --lora: the trainer starts from the uploaded file, and the stage still takes the trainer's final token
    resumed = builder(job, ["f/a.png"], "f", None, "anna-0123abcd", "f/anna.safetensors")
    (r_trainer,) = [k for k, n in resumed.items() if n["class_type"] == "CrossInitTrainer"]
    start = resumed[resumed[r_trainer]["inputs"]["embedding"][0]]
    assert start["class_type"] == "CrossInitLoadEmbedding" and start["inputs"]["file"] == "f/anna.safetensors"
    (r_stage,) = [n["inputs"] for n in resumed.values() if n["class_type"] == "CrossInitPivotalLora"]
    assert r_stage["embedding"] == [r_trainer, 0]
    plain = command.parse_args(["train", "--checkpoint", "x", "--images", "a.png", "--name", "anna"])
    assert not [n for n in graph.PromptBuilder(builder.workflow, graph.graph_settings(plain, "x", {}))(
        job, ["f/a.png"], "f", None, "anna-0123abcd", None).values() if "Lora" in n["class_type"]]

    out, loras = tmp_path / "out", tmp_path / "loras"
    out.mkdir()
    loras.mkdir()
    (loras / "anna.safetensors").write_bytes(b"a LoRA")
    (problem,) = jobs.clash_problems([job], out, jobs.Outputs(25), False, False, loras)
    assert problem.startswith(f"anna: the LoRA {loras / 'anna.safetensors'} already exists")
    assert jobs.clash_problems([job], out, jobs.Outputs(25), True, False, loras) == []  # --overwrite
    (out / "anna.safetensors").write_bytes(b"a token")
    assert jobs.clash_problems([job], out, jobs.Outputs(25), False, True, loras) == [] and job.status == "skipped"
    assert job.lora_path == str(loras / "anna.safetensors")
    (loras / "anna.safetensors").unlink()  # only the token: --skip-existing cannot keep it and train its LoRA
    (problem,) = jobs.clash_problems([jobs.Job(name="anna", images=[], source="x")], out, jobs.Outputs(25), False, True, loras)
    assert "exists but its LoRA" in problem and "--overwrite" in problem
    # --resume: NAME in --out is the file being continued (replaced, kept as NAME-stepNNNN); its LoRA must be new
    resuming = jobs.Job(name="anna", images=[], source="x")
    resuming.keep_as, resuming.resume_data = "anna-step0025", (out / "anna.safetensors").read_bytes()
    assert jobs.clash_problems([resuming], out, jobs.Outputs(25, resume=True), False, False, loras) == []
    (loras / "anna.safetensors").write_bytes(b"a LoRA")
    (problem,) = jobs.clash_problems([resuming], out, jobs.Outputs(25, resume=True), False, False, loras)
    assert problem.startswith(f"anna: the LoRA {loras / 'anna.safetensors'} already exists")
    (loras / "anna.safetensors").unlink()

    assert files.lora_file_problem(_lora_file_bytes(), "anna") is None
    assert "bundles ['bob'], not the token 'anna'" in files.lora_file_problem(_lora_file_bytes(bundle="bob"), "anna")
    assert "has ['alpha', 'lora_down.weight']" in files.lora_file_problem(
        _lora_file_bytes(drop="lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"), "anna")
    assert "truncated" in files.lora_file_problem(_lora_file_bytes()[:-4], "anna")
    assert "not a safetensors file" in files.lora_file_problem(b"\x00" * 4, "anna")


@pytest.mark.parametrize("extra, message", [
    (["--lora-rank", "4"], "--lora-rank is for the LoRA stage: add --lora"),
    (["--lora", "--save-every", "2"], "--save-every and --lora"),
    (["--lora", "--lora-rank", "0"], "--lora-rank: 0 is out of range"),
    (["--lora", "--lora-out", "{out}"], "it is --out too"),
    (["--lora", "--lora-out", "{loras}"], "the LoRA {loras}/cli_lora_taken.safetensors already exists"),
    # the last --name counts: a bundled token's word cannot hold a dot (readers cut bundle_emb.NAME.* there)
    (["--lora", "--name", "anna.smith"], "name 'anna.smith': a token bundled in a LoRA file cannot have '.'"),
])
def test_lora_options_and_a_taken_lora_exit_2_before_any_work(tmp_path, extra, message):
    photo = face_photo(tmp_path / "p.png", 64)
    out, loras = tmp_path / "out", tmp_path / "loras"
    loras.mkdir()
    (loras / "cli_lora_taken.safetensors").write_bytes(b"precious bytes")
    values = {"out": str(out), "loras": str(loras)}
    # port 9 (discard) has no ComfyUI: any attempt to reach it would show up as a "not answering" error
    code, stdout, stderr = run_cli(["--checkpoint", TINY_CKPT, "--server", "http://127.0.0.1:9", "--out", str(out), "--images",
                                    str(photo), "--name", "cli_lora_taken", *(a.format(**values) for a in extra)], timeout=120)
    assert code == 2 and stdout == "", stderr
    assert message.format(**values) in " ".join(stderr.split()) and "not answering" not in stderr and "Traceback" not in stderr
    assert (loras / "cli_lora_taken.safetensors").read_bytes() == b"precious bytes" and files_in(out) == []


def test_lora_on_the_local_comfyui_brings_back_both_files_and_a_failed_stage_writes_neither(pack, core, comfyui,
                                                                                            stock_workflow, tmp_path):
    """--lora on the runner's own ComfyUI (small real-architecture SD 1.5, stock loader): the token into models/embeddings
    and the LoRA into models/loras beside it, the LoRA readable by the pack's reader with every attention projection
    at rank 4 and the trained token bundled as NAME; no run file is left on that server. Then a LoRA stage that fails
    on the server (its loras folder is a file there, so Save LoRA cannot write) writes neither file anywhere."""
    from comfy_servers import checkpoint_cache, small_checkpoint

    base = make_base(tmp_path / "base", {REAL_CKPT: small_checkpoint(checkpoint_cache())}, nodes=False)
    photo = face_photo(tmp_path / "me.png", 96)
    summary_json = tmp_path / "summary.json"
    argv = ["--comfyui", str(comfyui), "--base-directory", str(base), "--cpu", "--checkpoint", REAL_CKPT, "--workflow",
            str(stock_workflow), "--images", str(photo), "--name", "cli_lora", *FAST, *LORA_FAST, "--no-progress",
            "--summary-json", str(summary_json)]
    code, stdout, err = run_cli(argv, timeout=600)
    assert code == 0, err
    embeddings, loras = base / "models" / "embeddings", base / "models" / "loras"
    assert files_in(embeddings) == ["cli_lora.safetensors"] and files_in(loras) == ["cli_lora.safetensors"]
    assert not [p for p in (base / "output").rglob("*.safetensors")]  # the run's NAME-RUNID copies are gone
    token, token_meta = read_embedding(embeddings / "cli_lora.safetensors")
    lora = core.lora.files.read_lora_file(loras / "cli_lora.safetensors")
    modules = sorted({k.split(".")[0] for k in lora.lora})
    assert modules and all(LORA_MODULE.fullmatch(m) for m in modules) and len(modules) % 8 == 0, modules
    assert all(lora.lora[f"{m}.lora_down.weight"].shape[0] == 4 for m in modules)
    assert any(lora.lora[f"{m}.lora_up.weight"].abs().sum() > 0 for m in modules)  # 2 steps moved the LoRA off zero
    assert list(lora.bundles) == ["cli_lora"] and torch.equal(lora.bundles["cli_lora"]["string_to_param.*"], token["clip_l"])
    assert lora.metadata["ss_output_name"] == "cli_lora" and lora.metadata["lora_steps"] == "2"
    assert lora.metadata["lora_rank"] == "4" and token_meta["steps"] == "2"
    row = summary(stdout)["cli_lora"]
    assert row[7:] == [str(embeddings / "cli_lora.safetensors"), str(loras / "cli_lora.safetensors"), "ok"]
    (entry,) = json.loads(summary_json.read_text())
    assert entry["lora_file"] == str(loras / "cli_lora.safetensors") and entry["status"] == "ok"

    # the same name again: both files are taken, refused before the server starts, naming the LoRA
    code, stdout, err = run_cli(argv, timeout=300)
    assert code == 2 and f"the LoRA {loras / 'cli_lora.safetensors'} already exists" in " ".join(err.split())

    # a LoRA stage that fails on the server: exit 1, neither file in --out or --lora-out, nothing left on the server
    before = {p: p.read_bytes() for p in (embeddings / "cli_lora.safetensors", loras / "cli_lora.safetensors")}
    out, lora_out = tmp_path / "out", tmp_path / "lora_out"
    for path in loras.iterdir():
        path.unlink()
    loras.rmdir()
    loras.write_bytes(b"not a folder")
    broken = [a for a in argv if a not in ("--summary-json", str(summary_json))]
    broken[broken.index("cli_lora")] = "cli_lora_broken"
    code, stdout, err = run_cli([*broken, "--out", str(out), "--lora-out", str(lora_out)], timeout=600)
    assert code == 1, err
    assert "0 written, 1 failed" in stdout and "CrossInitSaveLora" in stdout + err
    assert files_in(out) == [] and files_in(lora_out) == []
    assert files_in(embeddings) == ["cli_lora.safetensors"] and loras.read_bytes() == b"not a folder"
    assert not [p for p in (base / "output").rglob("*.safetensors")]
    assert (embeddings / "cli_lora.safetensors").read_bytes() == before[embeddings / "cli_lora.safetensors"]


def test_lora_on_a_server_whose_lora_download_breaks_writes_neither_file(servers, tiny_workflow, tmp_path):
    """--server: the token comes back whole, the LoRA's copy arrives broken (on every attempt): the job fails and
    neither --out nor --lora-out changes, with --overwrite too. Through the proxy removed, the same run writes both."""
    a = servers["a"]
    photo = face_photo(tmp_path / "me.png", 96)
    out, lora_out = tmp_path / "out", tmp_path / "lora_out"
    out.mkdir()
    lora_out.mkdir()
    (out / "cli_lora_half.safetensors").write_bytes(b"an earlier token")
    (lora_out / "cli_lora_half.safetensors").write_bytes(b"an earlier LoRA")
    args = ["--images", str(photo), "--name", "cli_lora_half", *FAST, *LORA_FAST, "--lora-out", str(lora_out), "--overwrite",
            "--no-progress"]
    with BreakingProxy(a.url, corrupt=r"cli_lora_half-[0-9a-f]{8}\.safetensors", subfolder="cross_init_loras") as proxy:
        code, stdout, err = run_cli([*farm_args(tiny_workflow, out, proxy.url), *args])
    assert code == 1, err
    assert len(proxy.corrupted) == 3 and "does not match what the save node wrote" in stdout
    assert (out / "cli_lora_half.safetensors").read_bytes() == b"an earlier token" and files_in(out) == ["cli_lora_half.safetensors"]
    assert (lora_out / "cli_lora_half.safetensors").read_bytes() == b"an earlier LoRA"
    assert files_in(lora_out) == ["cli_lora_half.safetensors"]

    code, stdout, err = run_cli([*farm_args(tiny_workflow, out, a.url), *args])
    assert code == 0, err
    token, _meta = read_embedding(out / "cli_lora_half.safetensors")
    lora, meta = read_embedding(lora_out / "cli_lora_half.safetensors")
    assert torch.equal(lora["bundle_emb.cli_lora_half.string_to_param.*"], token["clip_l"])
    assert meta["format"] == "cross_init_pivotal_lora" and meta["cross_init_bundled_token"] == "cli_lora_half"
    # the remote server keeps its run files under NAME-RUNID only (never NAME), its embeddings copy of the LoRA is off
    saved = sorted(p.name for p in (a.base / "models" / "loras").glob("cli_lora_half*"))
    assert saved and all(re.fullmatch(r"cli_lora_half-[0-9a-f]{8}\.safetensors", n) for n in saved)
    assert not (a.base / "models" / "embeddings" / "cli_lora_half.safetensors").exists()
