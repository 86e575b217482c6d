"""A child process that is stopped together with everything it started, and never outlives the runner: on POSIX its
own process group (and, on Linux, SIGTERM when the runner dies), on Windows its own process group inside a job
object that kills every process in it when the runner's handle closes, also when the runner is killed.

The operating-system calls are behind small seams (`WindowsJobs`, `spawn`'s `popen`), so the Windows branch is
driven and checked on any machine; nothing here imports a POSIX-only or Windows-only module at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

IS_WINDOWS = os.name == "nt"
# Windows constants by value, so the Windows branch can be exercised where the subprocess and signal modules lack them
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
CTRL_BREAK_EVENT = getattr(signal, "CTRL_BREAK_EVENT", 1)
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9  # JOBOBJECTINFOCLASS JobObjectExtendedLimitInformation
_JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000

Popen = Callable[..., "subprocess.Popen[bytes]"]


class WindowsJobs:
    """The Win32 job-object calls the Windows branch makes (kernel32 through ctypes, loaded on first use)."""

    def __init__(self) -> None:
        self._kernel32: Any = None

    def _api(self) -> Any:
        if self._kernel32 is None:
            import ctypes
            from ctypes import wintypes

            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
            kernel32.CreateJobObjectW.restype = wintypes.HANDLE
            kernel32.CreateJobObjectW.argtypes = (wintypes.LPVOID, wintypes.LPCWSTR)
            kernel32.SetInformationJobObject.argtypes = (wintypes.HANDLE, ctypes.c_int, wintypes.LPVOID, wintypes.DWORD)
            kernel32.AssignProcessToJobObject.argtypes = (wintypes.HANDLE, wintypes.HANDLE)
            kernel32.TerminateJobObject.argtypes = (wintypes.HANDLE, wintypes.UINT)
            kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
            self._kernel32 = kernel32
        return self._kernel32

    def _check(self, ok: Any, what: str) -> None:
        if not ok:
            import ctypes

            raise OSError(ctypes.get_last_error(), f"{what} failed")  # type: ignore[attr-defined]

    def create_kill_on_close(self) -> int:
        """A new job object whose processes are all killed when its last handle closes."""
        import ctypes

        dword = ctypes.c_uint32  # Win32's DWORD (ctypes' c_ulong is 64 bits off Windows)

        class IoCounters(ctypes.Structure):
            _fields_ = tuple((name, ctypes.c_ulonglong) for name in (
                "ReadOperationCount", "WriteOperationCount", "OtherOperationCount", "ReadTransferCount",
                "WriteTransferCount", "OtherTransferCount"))

        class BasicLimits(ctypes.Structure):
            _fields_ = (("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                        ("LimitFlags", dword), ("MinimumWorkingSetSize", ctypes.c_size_t),
                        ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", dword),
                        ("Affinity", ctypes.c_size_t), ("PriorityClass", dword), ("SchedulingClass", dword))

        class ExtendedLimits(ctypes.Structure):
            _fields_ = (("BasicLimitInformation", BasicLimits), ("IoInfo", IoCounters), ("ProcessMemoryLimit", ctypes.c_size_t),
                        ("JobMemoryLimit", ctypes.c_size_t), ("PeakProcessMemoryUsed", ctypes.c_size_t),
                        ("PeakJobMemoryUsed", ctypes.c_size_t))

        api = self._api()
        job = api.CreateJobObjectW(None, None)
        self._check(job, "CreateJobObjectW")
        limits = ExtendedLimits()
        limits.BasicLimitInformation.LimitFlags = _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        self._check(api.SetInformationJobObject(job, _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits),
                                                ctypes.sizeof(limits)), "SetInformationJobObject")
        return int(job)

    def assign(self, job: int, process_handle: int) -> None:
        self._check(self._api().AssignProcessToJobObject(job, process_handle), "AssignProcessToJobObject")

    def terminate(self, job: int, exit_code: int = 1) -> None:
        self._check(self._api().TerminateJobObject(job, exit_code), "TerminateJobObject")

    def close(self, handle: int) -> None:
        self._api().CloseHandle(handle)


def _die_with_parent() -> None:
    """POSIX, in the child before exec: its own process group (so stopping it stops its helpers too), and on Linux a
    SIGTERM when the runner dies without cleaning up (SIGKILL), so no server is left behind."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """A started child process and, on Windows, the job object that holds it and everything it starts."""

    process: subprocess.Popen[bytes]
    windows: bool
    job: int | None = None
    jobs: WindowsJobs = field(default_factory=WindowsJobs)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """Asks the whole group to stop (SIGTERM; on Windows CTRL_BREAK_EVENT), kills it after `grace` s, and kills
        whatever the child left behind in its group or job; idempotent."""
        if self.windows:
            self._stop_windows(grace)
        else:
            self._stop_posix(grace)

    def _stop_posix(self, grace: float) -> None:
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers the server left behind in its group

    def _stop_windows(self, grace: float) -> None:
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(CTRL_BREAK_EVENT)  # Python's KeyboardInterrupt in the child: ComfyUI exits cleanly
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self._terminate_job()
                if process.poll() is None:
                    process.kill()
                process.wait()
        self._terminate_job()  # helpers the server left behind in its job
        if self.job is not None:
            self.jobs.close(self.job)
            self.job = None

    def _terminate_job(self) -> None:
        if self.job is not None:
            try:
                self.jobs.terminate(self.job)
            except OSError as exc:  # the job is empty or already gone
                log.debug("TerminateJobObject: %s", exc)


def spawn(command: Sequence[str], cwd: Path, stdout: IO[bytes] | int, *, windows: bool = IS_WINDOWS,
          popen: Popen = subprocess.Popen, jobs: WindowsJobs | None = None) -> Child:
    """Starts `command` (no shell: paths with spaces or any letters pass as they are) in `cwd` as a child that stops
    with everything it starts (see the module docstring); stdin closed, stderr into `stdout`."""
    common: dict[str, Any] = {"cwd": str(cwd), "stdin": subprocess.DEVNULL, "stdout": stdout, "stderr": subprocess.STDOUT}
    if not windows:
        return Child(popen(list(command), preexec_fn=_die_with_parent, **common), windows=False)
    jobs = jobs or WindowsJobs()
    job = jobs.create_kill_on_close()
    try:
        process = popen(list(command), creationflags=CREATE_NEW_PROCESS_GROUP, **common)
    except BaseException:
        jobs.close(job)
        raise
    child = Child(process, windows=True, job=job, jobs=jobs)
    try:
        # the child is a Python interpreter that starts no helper before it has imported ComfyUI, long after this
        jobs.assign(job, int(process._handle))  # type: ignore[attr-defined]  # Popen's process handle on Windows
    except OSError as exc:
        log.warning("the local ComfyUI could not be put in a job object (%s): if the runner is killed, stop it by hand", exc)
    return child
