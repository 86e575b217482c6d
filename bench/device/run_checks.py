"""The GPU check's driver: its measurements in priority order under one deadline, each row written the moment it
is measured, and a report written whatever happens (a timeout, an error in one measurement, SIGTERM).

    python3 bench/device/run_checks.py offline [--smoke] [--deadline S] [--server-start-timeout S] [--out DIR]
        what `bash bench/device/run.sh` runs on the GPU machine, which has no network: the python running this
        script is the one used (`python3` there, with torch); .device/wheels/ is installed into a temp folder
        with `pip --no-index --no-deps` and put on PYTHONPATH, .device/hosts/ are unpacked, then the hosts are
        measured newest first.
    python3 bench/device/run_checks.py hosts --host VERSION=PYTHON:COMFYUI ... [--smoke] [--deadline S] [--out DIR]
        hosts that are already installed (`bash bench/gpu_check.sh`: the test lanes' venvs on a CUDA machine).

The measurements, most important first: for each host (in the order given) the user's path, a real main.py
server trained through the batch runner (bench/server_path.py, its server given --server-start-timeout seconds to
answer); then for each host the in-process rows (bench/gpu_check.py measure), one model at a time. A step gets the
time left before the deadline, less a reserve for the report and room for each step after it (step_budget); one
that runs past that is stopped and recorded as an error row, and steps with no time left are listed as not
reached; one that exits non-zero without an error row of its own gets one too. Output in --out: gpu_rows.jsonl
(the rows), gpu_check.log (everything the steps printed) and benchmarks.md (the report); --docs FILE also replaces
the marked section of that page. --note TEXT (repeatable) adds a line to the report's notes, which mark the run
failed (bench/gpu_check.sh names a lane it could not set up this way).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
REPO = BENCH.parent
DEVICE_DIR = REPO / ".device"
sys.path[:0] = [str(BENCH)]

from gpu_report import commit, render, replace_section  # noqa: E402
from rows import append_row, host_version, read_rows  # noqa: E402

log = logging.getLogger("gpu_check")

REPORT_RESERVE_S = 15.0  # kept back from the last step for writing the report
MIN_STEP_S = 30.0  # a step that would get less than this is not started
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long
SERVER_START_S = 180.0  # the server path's limit for its server to answer (server_path.py --server-start-timeout)
GPU_MODELS = ("sd15", "sd21")
SMOKE_MODELS = ("sd15",)


@dataclass(frozen=True)
class Host:
    version: str
    python: str
    comfyui: Path
    env: dict[str, str] = field(default_factory=dict)  # extra environment (the offline wheels' PYTHONPATH)


@dataclass(frozen=True)
class Step:
    path: str  # "server" | "in_process"
    host: Host
    model: str
    command: list[str]

    @property
    def label(self) -> str:
        return f"{self.path} rows of ComfyUI {self.host.version} ({self.model})"


class Stopped(Exception):
    """SIGTERM or SIGHUP reached the driver: stop measuring, still write the report."""


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def plan_steps(hosts: list[Host], smoke: bool, work: Path, rows_path: Path, server_start_s: float = SERVER_START_S) -> list[Step]:
    """Every measurement, most important first: the user's path on each host, then the in-process rows."""
    steps = [Step("server", host, "SD 1.5", [host.python, str(BENCH / "server_path.py"), "--comfyui", str(host.comfyui),
                                             "--rows", str(rows_path), "--work", str(work / f"server-{host.version}"),
                                             "--checkpoints", str(work / "checkpoints"),
                                             "--server-start-timeout", f"{server_start_s:g}", *(["--smoke"] if smoke else [])])
             for host in hosts]
    for host in hosts:
        for model in SMOKE_MODELS if smoke else GPU_MODELS:
            steps.append(Step("in_process", host, model, [host.python, str(BENCH / "gpu_check.py"), "measure",
                                                          "--rows", str(rows_path), "--models", model,
                                                          *(["--smoke"] if smoke else [])]))
    return steps


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the step's process group, SIGKILL after the grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, budget: float, rows_path: Path, log_file: TextIO) -> None:
    """Runs one measurement with `budget` seconds; a row with an error when it fails and none of the rows it
    wrote names an error (killed after its first row, say)."""
    before = len(read_rows(rows_path))
    env = {**os.environ, **step.host.env, "COMFYUI_PATH": str(step.host.comfyui), "PYTHONUNBUFFERED": "1"}
    log.info("%s: starting (%.0f s left)", step.label, budget)
    log_file.write(f"\n===== {step.label}: {' '.join(step.command)}\n")
    log_file.flush()
    started = time.monotonic()
    process = subprocess.Popen(step.command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    error = None
    try:
        code = process.wait(budget)
        written = read_rows(rows_path)[before:]
        if code != 0 and not written:
            error = f"exited with code {code} before writing a row (see gpu_check.log)"
        elif code != 0 and not any(row.get("error") for row in written):
            error = f"exited with code {code} after writing {len(written)} row(s) (see gpu_check.log)"
    except subprocess.TimeoutExpired:
        error = f"stopped at the deadline after {time.monotonic() - started:.0f} s"
    finally:
        if process.poll() is None:
            _stop(process)
    seconds = time.monotonic() - started
    if error is not None:
        append_row(rows_path, {"host": step.host.version, "path": step.path, "model": step.model, "device": "?",
                               "kind": "train", "error": error})
    log.info("%s: done in %.0f s%s", step.label, seconds, f" ({error})" if error else "")


def step_budget(left: float, later_steps: int) -> float:
    """A step's seconds: what is left before the deadline, less the report's reserve and, for each step after it, the
    least a step is started with and the time stopping this one may take, so one step that hangs (a server that never
    answers) cannot leave the later ones nothing."""
    return left - REPORT_RESERVE_S - (MIN_STEP_S + STOP_GRACE_S) * later_steps


def run_steps(steps: list[Step], deadline_at: float, rows_path: Path, log_file: TextIO) -> list[str]:
    """Runs the steps in order while time is left; returns the labels of those not reached."""
    for index, step in enumerate(steps):
        left = deadline_at - time.monotonic()
        budget = step_budget(left, len(steps) - index - 1)
        if budget < MIN_STEP_S:  # too little for this step with room kept for the later ones: give it what is left
            budget = left - REPORT_RESERVE_S
        if budget < MIN_STEP_S:
            return [s.label for s in steps[index:]]
        run_step(step, budget, rows_path, log_file)
    return []


# ---------------------------------------------------------------------------------------------
# The offline machine: .device/ alone


def install_offline(device_dir: Path, work: Path, log_file: TextIO) -> tuple[list[Host], str | None]:
    """Installs the carried wheels for this python and unpacks the carried hosts; (hosts newest first, the
    commit .device was prepared at). Raises RuntimeError naming what is missing."""
    wheels = sorted((device_dir / "wheels").glob("*.whl"))
    archives = sorted((device_dir / "hosts").glob("*.tar.*"))
    if not wheels or not archives:
        raise RuntimeError(f"{device_dir} holds no wheels or no hosts: run `bash bench/device/prepare.sh` on a machine "
                           "with the package index first, and carry .device")
    site = work / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    log_file.write(f"\n===== installing {len(wheels)} wheels: {' '.join(command)}\n")
    log_file.flush()
    done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install the carried wheels (exit {done.returncode}; see gpu_check.log)")
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    hosts = []
    for archive in archives:
        target = work / "hosts" / archive.name.split(".tar")[0]
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.12 and the 3.10/3.11 security releases
                tar.extractall(target, filter="data")
            else:
                tar.extractall(target)
        (folder,) = [p.parent for p in target.glob("*/comfyui_version.py")]
        hosts.append(Host(host_version(folder), sys.executable, folder, {"PYTHONPATH": pythonpath}))
    manifest = device_dir / "manifest.txt"
    prepared_at = None
    if manifest.is_file():
        found = re.search(r"^commit (\S+)", manifest.read_text(encoding="utf-8"), re.MULTILINE)
        prepared_at = found.group(1) if found else None
    return sorted(hosts, key=lambda h: _version_key(h.version), reverse=True), prepared_at


def parse_host(text: str) -> Host:
    """VERSION=PYTHON:COMFYUI (the version is read from the folder when VERSION is empty)."""
    version, _, rest = text.partition("=")
    python, _, comfyui = rest.partition(":")
    if not python or not comfyui:
        raise argparse.ArgumentTypeError(f"--host {text}: use VERSION=PYTHON:COMFYUI_FOLDER")
    folder = Path(comfyui).resolve()
    return Host(version or host_version(folder), python, folder)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(f"stopped by signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("where", choices=("offline", "hosts"))
    parser.add_argument("--host", type=parse_host, action="append", default=[], help="hosts: VERSION=PYTHON:COMFYUI")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: the rehearsal of the GPU run")
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds for everything, report included")
    parser.add_argument("--server-start-timeout", type=float, default=SERVER_START_S, metavar="S",
                        help=f"seconds a ComfyUI server may take to answer before its path is given up (default {SERVER_START_S:.0f})")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "test-output" / "device"))
    parser.add_argument("--device-dir", type=Path, default=DEVICE_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=Path, default=None, help="also replace the marked section of this page")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (marks the run failed), "
                        "e.g. a host that could not be set up")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline_at = started + args.deadline
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "gpu_rows.jsonl"
    rows_path.unlink(missing_ok=True)
    notes: list[str] = list(args.note)
    not_reached: list[str] = []
    prepared_at = None
    work = Path(tempfile.mkdtemp(prefix="cross_init_gpu_check_"))
    with open(out / "gpu_check.log", "a", encoding="utf-8") as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logging.basicConfig(level=logging.INFO, format="gpu_check: %(message)s")
        log.addHandler(handler)
        try:
            with _stop_on_signals():
                if args.where == "offline":
                    hosts, prepared_at = install_offline(args.device_dir, work, log_file)
                else:
                    hosts = args.host
                if not hosts:
                    raise RuntimeError("no host to measure (give --host VERSION=PYTHON:COMFYUI)")
                log.info("hosts: %s; deadline %.0f s; %s", ", ".join(f"{h.version} ({h.comfyui})" for h in hosts),
                         args.deadline, "CPU smoke run" if args.smoke else "GPU run")
                steps = plan_steps(hosts, args.smoke, work, rows_path, args.server_start_timeout)
                not_reached = run_steps(steps, deadline_at, rows_path, log_file)
        except (Stopped, RuntimeError) as exc:  # a stop, or a missing piece named in the message
            log.error("the check stopped early: %s", exc)
            notes.append(f"The check stopped early: {exc}.")
        except Exception as exc:  # anything else (a broken archive, say) is named in the report it always writes
            log.exception("the check stopped early")
            notes.append(f"The check stopped early: {type(exc).__name__}: {exc}.")
        finally:
            rows = read_rows(rows_path)
            fallback = f"{prepared_at} (when .device was prepared)" if prepared_at else "unknown"
            section = render(rows, not_reached, notes, time.monotonic() - started, args.smoke, commit(fallback))
            (out / "benchmarks.md").write_text("# GPU check\n\n" + section, encoding="utf-8")
            if args.docs is not None:
                replace_section(args.docs, section)
            sys.stdout.write(section)
            log.info("report: %s (%d rows%s)", out / "benchmarks.md", len(rows),
                     f", {len(not_reached)} steps not reached" if not_reached else "")
            log.removeHandler(handler)
            shutil.rmtree(work, ignore_errors=True)
    failed = bool(notes or not_reached or not rows or any(r.get("error") for r in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
