"""The offline GPU run, rehearsed here: bench/device/prepare.sh, then bench/device/run.sh --smoke with no network.

The GPU machine the project borrows has no network and a Python of its own (3.12, torch, a fixed package list;
bench/device/gpu_image.txt). This test builds such a Python here (scripts/test_env.sh: Python 3.12 holding only
the image's packages that matter), fills .device/ with prepare.sh (cached), and runs run.sh --smoke in a network
namespace with no network (`unshare -n`, loopback only) with that Python first on PATH: every host import beyond
the image must come from .device/. It must give rows for both hosts, the real-server rows included.

The rehearsal needs no host lane of its own (it brings both hosts in .device/): it runs once per suite, in the
oldest lane's run, beside which `bash bench/gpu_check.sh --smoke` measures the newest lane's host (test_gpu_check.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
from helpers import loud_skip

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / ".device"
LIMIT_MIB = 60
NEWEST, OLDEST = "0.33.0", "0.3.75"
# what the probe prints when pypi.org is out of reach: no name resolution, or no route
NO_NETWORK = re.compile(r"gaierror|Temporary failure in name resolution|Name or service not known|Network is unreachable")


def _loud_skip(reason: str) -> NoReturn:
    loud_skip(f"THE OFFLINE GPU REHEARSAL IS SKIPPED: {reason}", "CROSS_INIT_REQUIRE_REHEARSAL")


def _no_network_command(command: str) -> list[str]:
    """`command` in a new network namespace: no network at all, loopback up (the server and the runner talk over it)."""
    return ["unshare", "-n", "bash", "-c", f"ip link set lo up && {command}"]


def _rehearsal_python() -> Path:
    done = subprocess.run(["bash", "-c", 'source scripts/test_env.sh && ensure_rehearsal_env >&2 && printf %s "$REHEARSAL_PYTHON"'],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode == 3:
        _loud_skip(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no Python 3.12 here")
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip())


def _can_rehearse_here() -> None:
    """Skips (loudly where the machine, not the lane, is the reason) unless the rehearsal can run here."""
    if os.environ.get("LANE") != "oldest":
        pytest.skip("the offline GPU rehearsal needs no host lane: it runs once per suite, in the oldest lane's run")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        _loud_skip("unshare or ip (util-linux, iproute2) is not installed")
    probe = subprocess.run(_no_network_command("true"), capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        _loud_skip(f"no network namespace can be made here (unshare -n needs root): {probe.stderr.strip()[:200]}")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> dict:
    _can_rehearse_here()
    python = _rehearsal_python()
    prepared = subprocess.run(["bash", "bench/device/prepare.sh"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if prepared.returncode == 3:  # the newest host's tarball is not on this machine
        _loud_skip(prepared.stderr.strip().splitlines()[-1])
    assert prepared.returncode == 0, prepared.stderr[-3000:]

    out = tmp_path_factory.mktemp("device_out")
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    network = subprocess.run(_no_network_command(
        "python3 -c \"import socket; socket.create_connection(('pypi.org', 443), timeout=5)\""),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    command = _no_network_command(f"bash bench/device/run.sh --smoke --deadline 900 --out {out}")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    rows = [json.loads(line) for line in (out / "gpu_rows.jsonl").read_text(encoding="utf-8").splitlines()] \
        if (out / "gpu_rows.jsonl").is_file() else []
    return {"python": python, "prepared": prepared, "network": network, "done": done, "out": out, "rows": rows}


def test_prepare_fills_device_within_its_limit_and_prints_the_device_call(offline_run):
    text = offline_run["prepared"].stdout
    assert 'run(command="bash bench/device/run.sh --deadline 480", carry=[".device"]' in text
    size = sum(p.stat().st_size for p in DEVICE.rglob("*") if p.is_file())
    assert 0 < size <= LIMIT_MIB * 2**20, size / 2**20
    assert f".device: {size / 2**20:.1f} MiB" in text
    hosts = sorted(p.name for p in (DEVICE / "hosts").iterdir())
    assert hosts == [f"comfyui-{OLDEST}.tar.xz", f"comfyui-{NEWEST}.tar.xz"]
    wheels = {p.name.split("-")[0].lower() for p in (DEVICE / "wheels").glob("*.whl")}
    assert {"av", "torchsde", "comfy_aimdo", "comfy_kitchen", "diffusers"} <= wheels
    assert not wheels & {"torch", "numpy", "transformers", "safetensors"}  # the image has those: never carried
    assert (DEVICE / "wheels" / "comfy_kitchen-0.2.31-py3-none-any.whl").is_file()  # the small pure wheel


def test_the_rehearsal_python_is_the_gpu_image_and_has_no_network(offline_run):
    python = offline_run["python"]
    version = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert version.stdout.strip() == "(3, 12)"
    for module in ("av", "torchsde", "comfy_aimdo", "diffusers", "pydantic", "sqlalchemy"):  # from .device only
        found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
        assert found.returncode != 0, f"{module} is importable without .device"
    network = offline_run["network"]
    assert network.returncode != 0 and NO_NETWORK.search(network.stderr), network.stderr[-2000:]  # pypi.org is out of reach


def test_run_gives_rows_for_both_hosts_the_server_path_first(offline_run):
    done, rows, out = offline_run["done"], offline_run["rows"], offline_run["out"]
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert [r for r in rows if r.get("error")] == []
    for row in rows:
        assert {"host", "path", "model", "device", "smoke"} <= row.keys() and row["smoke"] is True and row["device"] == "CPU"
    assert [(r["host"], r["path"]) for r in rows][:6] == [(NEWEST, "server")] * 3 + [(OLDEST, "server")] * 3
    for host in (NEWEST, OLDEST):
        server = {r["mode"]: r for r in rows if r["host"] == host and r["path"] == "server"}
        assert sorted(server) == ["fast", "full", "pivotal"]
        pivotal = server.pop("pivotal")
        for row in server.values():
            assert row["kind"] == "train" and row["tokens_moved"] is True and row["token_distance"] > 0
            assert row["host_unchanged"] is True and row["max_pixel_diff"] == 0 and row["sample_recomputed"] is True
            assert row["unet_dtype"] == "float32" and row["steps"] in (2, 3) and row["run_s"] > 0
            assert row["dynamic_vram"] is False and row["peak_vram_mib"] is None  # the CPU: neither exists
        # the pivotal graph through the same server: trainer (2 steps) then the LoRA stage (3 steps, fast rank/alpha)
        assert pivotal["kind"] == "pivotal" and pivotal["unet_dtype"] == "float32" and pivotal["resolution"] == 64
        assert (pivotal["token_steps"], pivotal["token_batch"], pivotal["lora_steps"], pivotal["lora_batch"]) == (2, 1, 3, 1)
        assert (pivotal["lora_rank"], pivotal["lora_alpha"]) == (16, 16.0)
        assert pivotal["lora_modules"] > 0 and pivotal["lora_modules"] % 8 == 0  # q, k, v, out of attn1 and attn2
        assert pivotal["token_s_per_step"] > 0 and pivotal["lora_s_per_step"] > 0 and pivotal["graph_s"] > 0
        ratio = pivotal["lora_s_per_step"] / pivotal["token_s_per_step"]
        assert abs(pivotal["lora_per_sample_ratio"] - ratio) < 1e-9  # both batches 1
        assert pivotal["peak_vram_mib"] is None and pivotal["token_peak_vram_mib"] is None  # the CPU
        assert pivotal["host_unchanged"] is True and pivotal["max_pixel_diff"] == 0 and pivotal["sample_recomputed"] is True
        in_process = [r for r in rows if r["host"] == host and r["path"] == "in_process"]
        assert sorted((r["kind"], r.get("dtype", "")) for r in in_process) == [("peer", ""), ("train", "bfloat16"),
                                                                                ("train", "float16")]
        for row in in_process:
            if row["kind"] == "train":
                assert row["grad_cosine"] >= 0.9 and row["fast_run_s"] > 0
    report = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "CPU smoke run" in report and "Not reached" not in report
    assert f"| {NEWEST} | CPU | fast |" in report and f"| {OLDEST} | CPU | full |" in report
    for host in (NEWEST, OLDEST):  # the pivotal table: dtype, px, token 2 x 1, its s/step, LoRA 16/16, 3 x 1
        assert re.search(rf"\| {re.escape(host)} \| CPU \| float32 \| 64 \| 2 x 1 \| \d+\.\d+ \| 16/16 \| 3 x 1 \| ", report)
    log = (out / "gpu_check.log").read_text(encoding="utf-8")
    assert "--no-index" in log and f"installing {len(list((DEVICE / 'wheels').glob('*.whl')))} wheels" in log


# ---------------------------------------------------------------------------------------------
# A skipped rehearsal says why (no machine needed)


def test_a_skipped_rehearsal_is_listed_with_its_reason_in_the_summary(monkeypatch):
    """pytest hides a skipped test's stderr: the reason must come as a warning, which the summary lists."""
    monkeypatch.setenv("LANE", "oldest")
    monkeypatch.delenv("CROSS_INIT_REQUIRE_REHEARSAL", raising=False)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.warns(UserWarning, match="REHEARSAL IS SKIPPED: unshare or ip"), pytest.raises(pytest.skip.Exception):
        _can_rehearse_here()
    monkeypatch.setenv("CROSS_INIT_REQUIRE_REHEARSAL", "1")
    with pytest.raises(pytest.fail.Exception, match="CROSS_INIT_REQUIRE_REHEARSAL=1 makes this a failure"):
        _can_rehearse_here()


def test_the_rehearsal_env_says_why_it_is_missing():
    """scripts/test_env.sh without a Python 3.12: the reason is logged, and it becomes the skip's reason."""
    done = subprocess.run(["bash", "-c", "source scripts/test_env.sh && _python312() { return 1; } && ensure_rehearsal_env"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "no Python 3.12 here" in done.stderr.strip().splitlines()[-1], done.stderr
