"""The local ComfyUI's child process on POSIX (for real) and on Windows (the Win32 calls replaced by recorders, since
this machine has no Windows: each test checks the calls made), and a client that imports nothing POSIX-only."""

from __future__ import annotations

import ast
import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # last: the pack's `nodes` package must never shadow ComfyUI's nodes.py

from cross_init_core.client import child_process  # noqa: E402

# modules that exist on POSIX only (the standard library's own POSIX branches, e.g. subprocess's fcntl, are its concern)
POSIX_ONLY_MODULES = {"fcntl", "termios", "pwd", "grp", "resource", "pty", "tty", "posix", "syslog", "crypt", "_posixsubprocess"}
POSIX_ONLY_CALLS = {"setsid", "killpg", "getpgid", "setpgrp", "setpgid", "fork", "getuid", "geteuid", "preexec_fn", "SIGKILL"}


class RecordingJobs(child_process.WindowsJobs):
    """The Win32 job-object calls, recorded instead of made."""

    def __init__(self, calls: list) -> None:
        super().__init__()
        self.calls = calls

    def create_kill_on_close(self) -> int:
        self.calls.append(("CreateJobObject+KILL_ON_JOB_CLOSE",))
        return 77

    def assign(self, job: int, process_handle: int) -> None:
        self.calls.append(("AssignProcessToJobObject", job, process_handle))

    def terminate(self, job: int, exit_code: int = 1) -> None:
        self.calls.append(("TerminateJobObject", job))

    def close(self, handle: int) -> None:
        self.calls.append(("CloseHandle", handle))


class FakeWindowsProcess:
    """A Popen on Windows as the code sees it: a process handle, signals, waits; `obeys_break` says whether
    CTRL_BREAK_EVENT stops it (ComfyUI's KeyboardInterrupt) or it hangs."""

    def __init__(self, calls: list, obeys_break: bool) -> None:
        self.calls, self.obeys_break = calls, obeys_break
        self._handle, self.pid, self.returncode = 1234, 4321, None

    def poll(self):
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.calls.append(("send_signal", sig))
        if self.obeys_break and sig == child_process.CTRL_BREAK_EVENT:
            self.returncode = 0

    def wait(self, timeout=None):
        self.calls.append(("wait", timeout))
        if self.returncode is None and timeout is not None:
            raise subprocess.TimeoutExpired("main.py", timeout)
        self.returncode = 1 if self.returncode is None else self.returncode
        return self.returncode

    def kill(self) -> None:
        self.calls.append(("kill",))
        self.returncode = 1


def _windows_child(tmp_path: Path, obeys_break: bool) -> tuple[child_process.Child, list, Path]:
    calls: list = []
    comfyui = tmp_path / "Comfy UI portable ÄÖ" / "ComfyUI"  # spaces and non-ASCII letters, as Windows users have them
    comfyui.mkdir(parents=True)
    command = [str(tmp_path / "python_embeded" / "python.exe"), str(comfyui / "main.py"), "--listen", "127.0.0.1"]

    def popen(args, **kwargs):
        calls.append(("Popen", args, kwargs))
        return FakeWindowsProcess(calls, obeys_break)

    child = child_process.spawn(command, comfyui, subprocess.DEVNULL, windows=True, popen=popen, jobs=RecordingJobs(calls))
    return child, calls, comfyui


def test_windows_the_child_gets_its_own_process_group_in_a_job_that_kills_it_with_the_runner(tmp_path):
    child, calls, comfyui = _windows_child(tmp_path, obeys_break=True)
    (popen_call,) = [c for c in calls if c[0] == "Popen"]
    _, args, kwargs = popen_call
    assert kwargs["creationflags"] == child_process.CREATE_NEW_PROCESS_GROUP == 0x200
    assert "preexec_fn" not in kwargs and "start_new_session" not in kwargs and not kwargs.get("shell")
    assert args[1] == str(comfyui / "main.py") and kwargs["cwd"] == str(comfyui)  # the path as it is, no quoting needed
    assert calls[0] == ("CreateJobObject+KILL_ON_JOB_CLOSE",) and calls[2] == ("AssignProcessToJobObject", 77, 1234)
    assert child.alive()
    del calls[:]
    child.stop(grace=5)
    # a clean stop first (CTRL_BREAK_EVENT: KeyboardInterrupt in ComfyUI), then whatever is left in the job, then the job
    assert calls == [("send_signal", child_process.CTRL_BREAK_EVENT), ("wait", 5), ("TerminateJobObject", 77), ("CloseHandle", 77)]
    assert not child.alive()
    child.stop()  # idempotent: nothing more is called
    assert calls[-1] == ("CloseHandle", 77) and len(calls) == 4


def test_windows_a_child_that_ignores_the_break_is_killed_with_its_job(tmp_path):
    child, calls, _comfyui = _windows_child(tmp_path, obeys_break=False)
    del calls[:]
    child.stop(grace=2)
    assert calls == [("send_signal", child_process.CTRL_BREAK_EVENT), ("wait", 2), ("TerminateJobObject", 77), ("kill",),
                     ("wait", None), ("TerminateJobObject", 77), ("CloseHandle", 77)]


def test_windows_the_job_object_is_made_with_kill_on_close_in_the_win32_layout():
    """The real WindowsJobs with kernel32 replaced: JOBOBJECT_EXTENDED_LIMIT_INFORMATION as Win32 lays it out (144 bytes
    on 64-bit Windows) with JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, set as information class 9."""
    seen: dict = {}

    class Kernel32:
        def CreateJobObjectW(self, attributes, name):
            seen["create"] = (attributes, name)
            return 55

        def SetInformationJobObject(self, job, info_class, ref, size):
            limits = ref._obj
            seen["set"] = (job, info_class, size, limits.BasicLimitInformation.LimitFlags)
            return 1

    jobs = child_process.WindowsJobs()
    jobs._kernel32 = Kernel32()
    assert jobs.create_kill_on_close() == 55
    assert seen["create"] == (None, None)
    expected_size = 144 if ctypes.sizeof(ctypes.c_void_p) == 8 else 112
    assert seen["set"] == (55, 9, expected_size, 0x2000)


def test_posix_stop_ends_the_child_and_what_it_started(tmp_path):
    """For real on this machine: a child that starts a helper of its own; stop() ends both (its process group)."""
    helper_pid = tmp_path / "helper.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(helper_pid)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    folder = tmp_path / "dir with spaces ü"
    folder.mkdir()
    child = child_process.spawn([sys.executable, "-c", script], folder, subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (helper_pid.is_file() and helper_pid.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    helper = int(helper_pid.read_text())
    assert child.alive()
    child.stop(grace=5)
    assert not child.alive()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the child's helper {helper} outlived stop()")


def _client_modules() -> list[Path]:
    return [*sorted((REPO / "cross_init_core" / "client").rglob("*.py")), REPO / "cross_init_core" / "__main__.py"]


def test_the_client_imports_nothing_posix_only_and_calls_posix_only_functions_only_in_its_posix_branch():
    for path in _client_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # import time: the module's own statements
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & POSIX_ONLY_MODULES, (path.name, names)
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
               {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
        if path.name != "child_process.py":
            assert not used & POSIX_ONLY_CALLS, (path.name, used & POSIX_ONLY_CALLS)
    # and for real: the client's modules import with every POSIX-only module they could name made unimportable
    code = ("import sys, pkgutil, importlib\n"
            f"sys.path.append({str(REPO)!r})\n"
            "blocked = {'termios', 'pwd', 'grp', 'resource', 'pty', 'tty', 'syslog', 'crypt'}\n"
            "for name in blocked: sys.modules[name] = None\n"
            "import cross_init_core.__main__\n"
            f"for m in pkgutil.walk_packages([{str(REPO / 'cross_init_core' / 'client')!r}], 'cross_init_core.client.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('imported')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr
