"""The GPU check: its host boot takes the GPU when there is one, its driver keeps a deadline and always reports,
and `bash bench/gpu_check.sh --smoke` (the same measurements over the newest lane's host, today's
dependencies) writes the rows it promises into a copy of docs/benchmarks.md. The offline run on the GPU
machine is rehearsed in test_device_rehearsal.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "docs" / "benchmarks.md"
sys.path[:0] = [str(REPO / "bench"), str(REPO / "bench" / "device")]

import gpu_report  # noqa: E402
import rows as rows_module  # noqa: E402
import run_checks  # noqa: E402
import server_path  # noqa: E402
from rows import read_rows  # noqa: E402


def _table(section: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header line starts with `header_start`, as dicts."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return rows


# ---------------------------------------------------------------------------------------------
# The boot


def test_the_host_boot_takes_cuda_when_torch_sees_it_and_the_cpu_otherwise(pack):
    import comfy.model_management as mm
    import host
    from comfy.cli_args import args

    assert host.cpu_only(prefer_gpu=True, cuda_available=True) is False  # a GPU machine: ComfyUI picks CUDA
    assert host.cpu_only(prefer_gpu=True, cuda_available=False) is True  # no GPU: ComfyUI must be told
    assert host.cpu_only(prefer_gpu=False, cuda_available=True) is True  # the test suite keeps the CPU
    # this session booted for the tests (prefer_gpu=False): ComfyUI was told the CPU and took it
    assert args.cpu is True and mm.get_torch_device().type == "cpu"


# ---------------------------------------------------------------------------------------------
# The driver


def _step(path: str, seconds: float, rows_path: Path, write_row: bool) -> run_checks.Step:
    code = (f"import json, time\n"
            f"if {write_row}: open({str(rows_path)!r}, 'a').write(json.dumps({{'host': 'x', 'path': {path!r}, 'model': 'm', "
            f"'device': 'CPU', 'smoke': True}}) + '\\n')\n"
            f"time.sleep({seconds})\n")
    host = run_checks.Host("9.9.9", sys.executable, REPO)
    return run_checks.Step(path, host, "m", [sys.executable, "-c", code])


def test_steps_run_in_order_until_the_deadline_and_a_step_past_it_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(run_checks, "REPORT_RESERVE_S", 1.0)
    monkeypatch.setattr(run_checks, "MIN_STEP_S", 2.0)
    monkeypatch.setattr(run_checks, "STOP_GRACE_S", 2.0)
    rows_path = tmp_path / "rows.jsonl"
    steps = [_step("server", 0, rows_path, True), _step("server", 60, rows_path, False), _step("in_process", 0, rows_path, True)]
    started = time.monotonic()
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log_file:
        not_reached = run_checks.run_steps(steps, started + 6.0, rows_path, log_file)
    assert time.monotonic() - started < 20  # the sleeping step was stopped, not waited for
    rows = read_rows(rows_path)
    assert len(rows) == 2 and "error" not in rows[0]
    assert rows[1]["path"] == "server" and rows[1]["error"].startswith("stopped at the deadline after")
    assert not_reached == [steps[2].label]  # no time was left for it
    section = gpu_report.render(rows, not_reached, [], 6.0, smoke=True, commit_text="abc")
    assert "Not reached before the deadline: in_process rows of ComfyUI 9.9.9 (m)." in section
    assert "stopped at the deadline" in section


def test_a_step_that_fails_without_a_row_gets_an_error_row(tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    host = run_checks.Host("9.9.9", sys.executable, REPO)
    step = run_checks.Step("in_process", host, "sd15", [sys.executable, "-c", "raise SystemExit(3)"])
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log_file:
        assert run_checks.run_steps([step], time.monotonic() + 120, rows_path, log_file) == []
    (row,) = read_rows(rows_path)
    assert row["host"] == "9.9.9" and row["path"] == "in_process" and row["error"].startswith("exited with code 3")


def test_a_step_that_exits_non_zero_after_a_clean_row_gets_an_error_row(tmp_path):
    """A step killed after its fast row (the full row never written) must not pass as a clean run; a step that
    wrote its own error row gets no second one."""
    rows_path = tmp_path / "rows.jsonl"
    host = run_checks.Host("9.9.9", sys.executable, REPO)

    def step(error: str | None) -> run_checks.Step:
        row = {"host": "9.9.9", "path": "server", "model": "m", "device": "CPU", "mode": "fast"}
        if error:
            row["error"] = error
        code = f"import json; open({str(rows_path)!r}, 'a').write(json.dumps({row!r}) + '\\n'); raise SystemExit(137)"
        return run_checks.Step("server", host, "m", [sys.executable, "-c", code])

    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log_file:
        assert run_checks.run_steps([step(None), step("full run: boom")], time.monotonic() + 120, rows_path, log_file) == []
    assert [r.get("error") for r in read_rows(rows_path)] == [
        None, "exited with code 137 after writing 1 row(s) (see gpu_check.log)", "full run: boom"]


def test_a_note_goes_into_the_report_and_fails_the_run(tmp_path):
    out = tmp_path / "out"
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "comfyui_version.py").write_text('__version__ = "9.9.9"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "device" / "run_checks.py"), "hosts", "--out", str(out),
                           "--host", f"=/bin/true:{comfyui}", "--note", "Lane x was NOT MEASURED: why.", "--deadline", "60"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    section = (out / "benchmarks.md").read_text(encoding="utf-8").split(gpu_report.BEGIN)[1]
    assert "\nLane x was NOT MEASURED: why.\n" in section


def test_gpu_check_names_a_lane_it_cannot_set_up_in_the_report(tmp_path):
    """bash bench/gpu_check.sh where one lane cannot be set up: the other is measured, the report's notes name the
    missing one with its reason, and the check exits 1. In a copy of the scripts with a stand-in scripts/test_env.sh
    (the newest lane absent, the oldest a host whose python exits at once)."""
    tree = tmp_path / "tree"
    for name in ("bench/gpu_check.sh", "bench/device/run_checks.py", "bench/gpu_report.py", "bench/rows.py"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tree / name)
    (tree / "scripts").mkdir()
    (tree / "scripts" / "test_env.sh").write_text(
        'ensure_lane() {\n  NEWEST_MISSING=""\n'
        '  if [ "$1" = newest ]; then NEWEST_MISSING="no newest ComfyUI host: none here"; return 3; fi\n'
        f'  VENV={tmp_path}/venv; COMFYUI_PATH={tmp_path}/ComfyUI; export VENV COMFYUI_PATH\n}}\n', encoding="utf-8")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (tmp_path / "venv" / "bin" / "python").chmod(0o755)
    (tmp_path / "ComfyUI").mkdir()
    (tmp_path / "ComfyUI" / "comfyui_version.py").write_text('__version__ = "9.9.9"\n', encoding="utf-8")
    page = tmp_path / "page.md"
    env = dict(os.environ, GPU_CHECK_OUT=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(tree / "bench" / "gpu_check.sh"), "--smoke", "--lane", "both", "--deadline", "60",
                           "--output", str(page)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    section = page.read_text(encoding="utf-8").split(gpu_report.BEGIN)[1]
    assert "Lane newest was NOT MEASURED: its test environment could not be set up here (no newest ComfyUI host: none " \
           "here)." in section
    assert "server rows of ComfyUI 9.9.9" in (tmp_path / "out" / "gpu_check.log").read_text(encoding="utf-8")


def test_the_server_path_refuses_the_full_sizes_without_a_gpu(tmp_path, monkeypatch):
    """Full SD 1.5 at 512 px on the CPU would run until the deadline and leave no time for the later steps: an error
    row and exit 2 instead, before anything is set up (as the in-process rows do)."""
    import cross_init_core.client.local_comfyui as local_comfyui

    monkeypatch.setattr(local_comfyui, "has_accelerator", lambda: False)
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "comfyui_version.py").write_text('__version__ = "9.9.9"\n', encoding="utf-8")
    rows_path, work = tmp_path / "rows.jsonl", tmp_path / "work"
    work.mkdir()
    assert asyncio.run(server_path.measure(comfyui, rows_path, work, tmp_path / "checkpoints", server_path.GPU)) == 2
    (row,) = read_rows(rows_path)
    assert row["host"] == "9.9.9" and row["path"] == "server" and row["device"] == "CPU"
    assert row["error"].startswith("no GPU") and "--smoke" in row["error"]
    assert list(work.iterdir()) == [] and not (tmp_path / "checkpoints").exists()


def test_a_step_that_hangs_leaves_room_for_the_steps_after_it(tmp_path, monkeypatch):
    """A step that never ends (a server that hangs without dying) gets the time left less room for each later step
    (MIN_STEP_S and the stop's grace), so the step after it still runs before the deadline instead of being "not reached"."""
    monkeypatch.setattr(run_checks, "REPORT_RESERVE_S", 1.0)
    monkeypatch.setattr(run_checks, "MIN_STEP_S", 3.0)
    monkeypatch.setattr(run_checks, "STOP_GRACE_S", 2.0)
    assert run_checks.step_budget(100.0, 2) == 100.0 - 1.0 - 2 * (3.0 + 2.0)
    rows_path = tmp_path / "rows.jsonl"
    steps = [_step("server", 600, rows_path, False), _step("in_process", 0, rows_path, True)]
    started = time.monotonic()
    with open(tmp_path / "log.txt", "w", encoding="utf-8") as log_file:
        not_reached = run_checks.run_steps(steps, started + 12.0, rows_path, log_file)
    assert not_reached == []
    rows = read_rows(rows_path)
    assert [row["path"] for row in rows] == ["server", "in_process"]
    stopped = float(rows[0]["error"].split("after ")[1].split(" s")[0])
    assert stopped <= 12.0 - 1.0 - 5.0 + 1.0, rows[0]  # its budget kept room for the next step
    assert "error" not in rows[1]


def test_error_rows_keep_the_whole_message_with_the_log_tail():
    message = "the local ComfyUI did not start; the end of its log:\nline one\nTraceback ...\nOSError: disk full"
    text = rows_module.error_text(RuntimeError(message))
    assert text == f"RuntimeError: {message}"
    long = rows_module.error_text(RuntimeError("start " + "x" * 10_000 + " the last log line"))
    assert len(long) <= rows_module.ERROR_LIMIT and long.startswith("RuntimeError: start") and long.endswith("the last log line")
    assert "|" not in gpu_report._cell("a | b\nc") and "\n" not in gpu_report._cell("a | b\nc")


def test_rehearsal_a_server_that_hangs_is_given_up_at_its_own_limit(tmp_path, monkeypatch):
    """The server path against a ComfyUI whose main.py starts, logs and then hangs without dying (never answers): it
    gives the server up after --server-start-timeout, not the runner's 600 s, and its error row carries the whole
    message with the end of the server's log."""
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "comfyui_version.py").write_text('__version__ = "9.9.9"\n', encoding="utf-8")
    (comfyui / "main.py").write_text("import time\nprint('fake ComfyUI: loading a custom node that never returns', flush=True)\n"
                                     "time.sleep(3600)\n", encoding="utf-8")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / f"small_{server_path.CHECKPOINT}").write_bytes(b"")  # the checkpoint is not what this checks
    rows_path, work = tmp_path / "rows.jsonl", tmp_path / "work"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "server_path.py"), "--comfyui", str(comfyui), "--rows",
                           str(rows_path), "--work", str(work), "--checkpoints", str(checkpoints), "--smoke",
                           "--server-start-timeout", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < 120
    (row,) = read_rows(rows_path)
    assert row["host"] == "9.9.9" and row["path"] == "server"
    assert "did not answer within 4 s" in row["error"] and "never returns" in row["error"], row["error"]


def test_the_offline_run_writes_its_report_even_when_device_is_missing(tmp_path):
    """run.sh with nothing prepared: no traceback, a report that says why, exit 1."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "device" / "run_checks.py"), "offline", "--out", str(out),
                           "--device-dir", str(tmp_path / "nothing_here"), "--deadline", "60"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    report = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "The check stopped early" in report and "bash bench/device/prepare.sh" in report
    assert gpu_report.BEGIN in report and gpu_report.END in report and "Traceback" not in done.stderr
    assert (out / "gpu_check.log").is_file() and read_rows(out / "gpu_rows.jsonl") == []


def test_sigterm_still_writes_the_report(tmp_path):
    """A measurement under way when the driver is stopped: the step is stopped too, and the report is written."""
    out = tmp_path / "out"
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "comfyui_version.py").write_text('__version__ = "9.9.9"\n', encoding="utf-8")
    python = tmp_path / "slow_python"  # stands for a host's python whose measurement takes long
    python.write_text("#!/bin/sh\nexec sleep 120\n", encoding="utf-8")
    python.chmod(0o755)
    process = subprocess.Popen([sys.executable, str(REPO / "bench" / "device" / "run_checks.py"), "hosts", "--out", str(out),
                                "--host", f"={python}:{comfyui}", "--deadline", "600"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "gpu_check.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.is_file() and "server rows of ComfyUI 9.9.9" in log.read_text(encoding="utf-8")):
        time.sleep(0.2)
    started = time.monotonic()
    process.terminate()
    _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert time.monotonic() - started < 30  # the sleeping step was stopped with the driver
    report = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "stopped by signal SIGTERM" in report and gpu_report.END in report


# ---------------------------------------------------------------------------------------------
# The report


def test_pivotal_rows_get_their_own_table_and_stay_out_of_the_server_table():
    base = {"host": "0.33.0", "path": "server", "model": "SD 1.5", "device": "NVIDIA H100", "torch": "2"}
    rows = [{**base, "kind": "train", "mode": "fast", "run_s": 12.0, "steps": 25},
            {**base, "kind": "pivotal", "mode": "pivotal", "unet_dtype": "float16", "resolution": 512, "token_steps": 10,
             "token_batch": 8, "token_s_per_step": 0.4, "lora_rank": 16, "lora_alpha": 16.0, "lora_steps": 30,
             "lora_batch": 4, "lora_s_per_step": 0.25, "lora_per_sample_ratio": 1.25, "peak_vram_mib": 5120,
             "token_peak_vram_mib": 6144, "graph_s": 41.0, "host_unchanged": True, "max_pixel_diff": 0}]
    section = gpu_report.render(rows, [], [], 1.0, smoke=False, commit_text="c")
    assert [r["mode"] for r in _table(section, "| host | device | mode")] == ["fast"]
    (row,) = _table(section, "| host | device | UNet dtype | px")
    assert row == {"host": "0.33.0", "device": "NVIDIA H100", "UNet dtype": "float16", "px": "512",
                   "token steps x batch": "10 x 8", "token s/step": "0.400", "LoRA rank/alpha": "16/16",
                   "LoRA steps x batch": "30 x 4", "LoRA s/step": "0.250", "LoRA / token per sample": "1.25",
                   "LoRA peak VRAM MiB": "5120", "token peak VRAM MiB": "6144", "graph s": "41.0",
                   "host unchanged": "yes (0)", "error": ""}


def test_section_is_replaced_not_appended(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nintro\n", encoding="utf-8")
    rows = [{"kind": "peer", "path": "in_process", "host": "0.3.75", "torch": "2", "device": "X", "model": "M",
             "ours_s_per_step": 1.0, "diffusers_s_per_step": 2.0}]
    gpu_report.replace_section(page, gpu_report.render(rows, [], [], 1.0, smoke=False, commit_text="c1"))
    first = page.read_text(encoding="utf-8")
    rows[0]["ours_s_per_step"] = 3.0
    gpu_report.replace_section(page, gpu_report.render(rows, [], ["a note"], 1.0, smoke=False, commit_text="c2"))
    second = page.read_text(encoding="utf-8")
    assert first.startswith("# Title\n\nintro\n") and second.startswith("# Title\n\nintro\n")
    assert second.count(gpu_report.BEGIN) == 1 and "| 3.000 | 2.000 | 1.50 |" in second and "a note" in second
    assert "| 1.000 | 2.000 | 0.50 |" in first and "CPU smoke run" not in second and "commit c2" in second


def test_committed_page_says_how_to_run_and_that_no_gpu_rows_are_measured_yet():
    text = BENCHMARKS.read_text(encoding="utf-8")
    section = text.split(gpu_report.BEGIN)[1].split(gpu_report.END)[0]
    assert "Not measured yet" in section and "| host |" not in section  # no rows until a GPU run writes them
    assert "bash bench/device/prepare.sh" in text and "bash bench/device/run.sh" in text and 'carry=[".device"]' in text


# ---------------------------------------------------------------------------------------------
# bash bench/gpu_check.sh --smoke over this lane's host


@pytest.mark.slow
def test_smoke_run_writes_its_rows_into_a_copy_only(tmp_path):
    if os.environ.get("LANE") == "oldest":
        pytest.skip("in the oldest lane's run the offline rehearsal (test_device_rehearsal.py) runs these measurements "
                    "on both hosts")
    copy = tmp_path / "benchmarks.md"
    copy.write_text(BENCHMARKS.read_text(encoding="utf-8"), encoding="utf-8")
    original = hashlib.sha256(BENCHMARKS.read_bytes()).hexdigest()
    env = dict(os.environ, CROSS_INIT_PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path / "out"))
    assert env.get("COMFYUI_PATH"), "run through scripts/test.sh (it sets COMFYUI_PATH)"
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", "--lane", "current", "--output", str(copy)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert hashlib.sha256(BENCHMARKS.read_bytes()).hexdigest() == original  # the real page is untouched

    text = copy.read_text(encoding="utf-8")
    assert text.count(gpu_report.BEGIN) == 1 and text.count(gpu_report.END) == 1
    before = BENCHMARKS.read_text(encoding="utf-8").split(gpu_report.BEGIN)[0]
    assert text.split(gpu_report.BEGIN)[0] == before  # only the marked section changed
    section = text.split(gpu_report.BEGIN)[1].split(gpu_report.END)[0]
    assert "CPU smoke run" in section and "not GPU numbers" in section and "commit " in section
    assert "Not measured yet" not in section and "Not reached" not in section

    server = _table(section, "| host | device | mode")
    assert [row["mode"] for row in server] == ["fast", "full"]
    for row in server:
        assert row["error"] == "" and float(row["run s"]) > 0 and row["peak VRAM MiB"] == "n/a (CPU)"
        assert row["moved"].startswith("yes (") and row["host unchanged"] == "yes (0)" and row["UNet dtype"] == "float32"
    (pivotal,) = _table(section, "| host | device | UNet dtype | px")  # the trainer, then the LoRA stage, same server
    assert pivotal["error"] == "" and pivotal["host unchanged"] == "yes (0)" and pivotal["LoRA peak VRAM MiB"] == "n/a (CPU)"
    assert (pivotal["token steps x batch"], pivotal["LoRA rank/alpha"], pivotal["LoRA steps x batch"]) == ("2 x 1", "16/16", "3 x 1")
    assert float(pivotal["LoRA s/step"]) > 0 and float(pivotal["token s/step"]) > 0
    train = _table(section, "| host | device | model | UNet dtype")
    assert [row["UNet dtype"] for row in train] == ["float16", "bfloat16"]
    for row in train:
        assert row["error"] == "", row
        assert float(row["fast run s (measured)"]) > 0 and float(row["fast s/step"]) > 0
        assert row["skipped"] == "0"
        per_step, steps = row["full s/step (measured steps)"].split()
        assert float(per_step) > 0 and steps == "(2)"
        # setup + 320 steps; the table rounds s/step to 3 decimals and seconds to whole ones
        assert float(row["full run s (projected)"]) >= 320 * (float(per_step) - 0.0005) - 0.5
        assert row["peak VRAM MiB"] == "n/a (CPU)" and row["plan"].startswith("micro-batch")
        assert float(row["grad cos"]) >= 0.9  # the trainer's fp16/bf16 gradient agrees with fp32
    assert train[0]["unscaled"] != "—" and train[1]["unscaled"] == "—"  # fp16 only
    peer = _table(section, "| host | device | model | ours fp32")
    assert len(peer) == 1 and peer[0]["error"] == ""
    ours, reference, ratio = (float(peer[0][k]) for k in ("ours fp32 s/step", "diffusers s/step", "ratio"))
    assert ours > 0 and reference > 0 and abs(ratio - ours / reference) < 0.01 + 0.01 * ratio
    assert "| host | device | mode" in done.stdout  # the summary is printed too
    rows = [json.loads(line) for line in (tmp_path / "out" / "gpu_rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["path"] for r in rows} == {"server", "in_process"} and all(r["smoke"] for r in rows)
