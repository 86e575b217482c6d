"""A small client of ComfyUI's public HTTP/WebSocket API, and a ComfyUI started as a child process.

Used by both terminal commands (train, eval) and meant for any command that queues graphs on one or more
ComfyUI servers. Only the documented routes are used: GET /system_stats, GET /object_info/<class>,
POST /upload/image, POST /prompt, GET /ws, GET /queue, GET /history/<id>, GET /view, POST /interrupt. Nothing
here imports ComfyUI: aiohttp (a ComfyUI requirement) is the only dependency beyond the standard library.

Errors fall in three kinds, because a caller treats them differently:
- `ServerGone`: the server did not answer or dropped the connection (stopped, killed, restarted), or it
  answers but no longer has the prompt (`PromptLost`: in neither its queue nor its history, noticed within
  LOST_CHECK_SECONDS of the last word about it). The work may be run again.
- `PromptRejected`: the server refused the graph when it was queued (validation: a bad input). Retrying
  cannot help.
- `PromptFailed`: the graph ran and a node raised (or someone pressed Cancel on that server). Retrying
  cannot help either: the same graph fails the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .child_process import Child, spawn

log = logging.getLogger(__name__)

# (value, max, node_id) of the running node's progress bar
ProgressCallback = Callable[[int, int, "str | None"], None]
# how long a queued prompt may go without news before the client asks the server whether it still has it
LOST_CHECK_SECONDS = 10.0


class ServerGone(Exception):
    """The server is not answering or dropped the connection mid-run."""


class PromptLost(ServerGone):
    """The server answers but has the prompt in neither its queue nor its history (deleted from its queue by
    another client, or lost in a restart): it will never run unless queued again."""


class PromptRejected(Exception):
    """The server refused to queue the graph (its validation found bad inputs)."""


class PromptFailed(Exception):
    """The graph ran and failed on the server (a node raised, or the run was interrupted there)."""


_NETWORK_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError, asyncio.TimeoutError, ConnectionError)


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url


@dataclass
class RunOutcome:
    prompt_id: str
    outputs: dict[str, Any]  # node id -> that node's UI result, from /history


class ComfyClient:
    """One ComfyUI server. Use inside `async with aiohttp.ClientSession() as session`."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = normalize_url(url)
        self.session = session
        self.client_id = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"ComfyClient({self.url!r})"

    async def _get_json(self, path: str, timeout: float = 30.0) -> Any:
        try:
            async with self.session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if response.status != 200:
                    raise ServerGone(f"{self.url}{path} answered HTTP {response.status}")
                return await response.json(content_type=None)
        except _NETWORK_ERRORS as exc:
            raise ServerGone(f"{self.url} is not answering ({type(exc).__name__}: {exc})") from exc

    async def system_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        return await self._get_json("/system_stats", timeout)

    async def wait_until_up(self, timeout: float, is_alive: Callable[[], bool] = lambda: True) -> dict[str, Any]:
        """Polls /system_stats until it answers; ServerGone after `timeout` s or when `is_alive()` turns false."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline and is_alive():
            try:
                return await self.system_stats(timeout=5.0)
            except ServerGone as exc:
                last = exc
            await asyncio.sleep(0.25)
        raise ServerGone(f"{self.url} did not answer within {timeout:.0f} s ({last})")

    async def object_info(self, class_type: str) -> dict[str, Any] | None:
        """The node's description (inputs, outputs) or None when the server does not have that node."""
        info = await self._get_json(f"/object_info/{class_type}")
        return info.get(class_type) if isinstance(info, dict) else None

    async def upload_image(self, path: Path, subfolder: str, filename: str, data: bytes | None = None) -> str:
        """Uploads one file into <input>/<subfolder>/ (`data`, or the file's bytes); returns the name the graph uses
        ("subfolder/file")."""
        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes() if data is None else data, filename=filename,
                       content_type="application/octet-stream")
        form.add_field("subfolder", subfolder)
        form.add_field("type", "input")
        form.add_field("overwrite", "true")
        try:
            async with self.session.post(f"{self.url}/upload/image", data=form, timeout=aiohttp.ClientTimeout(total=120)) as r:
                if r.status != 200:
                    raise PromptRejected(f"{self.url} refused the upload of {path}: HTTP {r.status} {await r.text()}")
                answer = await r.json(content_type=None)
        except _NETWORK_ERRORS as exc:
            raise ServerGone(f"{self.url}: upload failed ({type(exc).__name__}: {exc})") from exc
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else answer["name"]

    async def download(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        try:
            async with self.session.get(f"{self.url}/view", params=params, timeout=aiohttp.ClientTimeout(total=300)) as r:
                if r.status != 200:
                    raise ServerGone(f"{self.url}/view {subfolder}/{filename}: HTTP {r.status}")
                return await r.read()
        except _NETWORK_ERRORS as exc:
            raise ServerGone(f"{self.url}: download of {filename} failed ({type(exc).__name__}: {exc})") from exc

    async def interrupt(self) -> None:
        """Asks the server to stop what it is running (best effort: used when the client is stopped)."""
        with contextlib.suppress(Exception):
            async with self.session.post(f"{self.url}/interrupt", timeout=aiohttp.ClientTimeout(total=5)):
                pass

    async def queue(self, prompt: dict[str, Any]) -> str:
        body = {"prompt": prompt, "client_id": self.client_id}
        try:
            async with self.session.post(f"{self.url}/prompt", json=body, timeout=aiohttp.ClientTimeout(total=60)) as r:
                answer = await r.json(content_type=None)
                status = r.status
        except _NETWORK_ERRORS as exc:
            raise ServerGone(f"{self.url}: queueing failed ({type(exc).__name__}: {exc})") from exc
        except (ValueError, aiohttp.ContentTypeError) as exc:
            raise ServerGone(f"{self.url}: /prompt did not answer JSON ({exc})") from exc
        if status != 200 or "prompt_id" not in answer:
            raise PromptRejected(format_node_errors(answer))
        return str(answer["prompt_id"])

    async def history(self, prompt_id: str) -> dict[str, Any]:
        data = await self._get_json(f"/history/{prompt_id}")
        return data.get(prompt_id, {}) if isinstance(data, dict) else {}

    async def queued_ids(self) -> set[str]:
        """The ids of the prompts the server is running or has waiting."""
        data = await self._get_json("/queue")
        items = [*data.get("queue_running", []), *data.get("queue_pending", [])] if isinstance(data, dict) else []
        return {str(item[1]) for item in items if isinstance(item, list) and len(item) > 1}

    async def _finished_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """None while the server runs or holds `prompt_id`; its history entry once it has finished; PromptLost when
        it is in neither."""
        if prompt_id in await self.queued_ids():
            return None
        entry = await self.history(prompt_id)
        if entry:
            return entry
        raise PromptLost(f"{self.url}: the prompt {prompt_id} is in neither its queue nor its history (deleted from the "
                         "queue, or lost in a restart)")

    async def run(self, prompt: dict[str, Any], on_progress: ProgressCallback | None = None) -> RunOutcome:
        """Queues `prompt`, follows it over the websocket until it ends, returns its outputs from /history.

        The websocket is opened before queueing so no message of this prompt is missed; a closed socket
        means the server went away (ServerGone), since ComfyUI keeps it open for as long as it runs. Without news
        of the prompt for LOST_CHECK_SECONDS the server is asked whether it still has it (PromptLost if not).
        """
        try:
            ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}", heartbeat=20.0, max_msg_size=0)
        except (*_NETWORK_ERRORS, aiohttp.WSServerHandshakeError) as exc:
            raise ServerGone(f"{self.url}: websocket failed ({type(exc).__name__}: {exc})") from exc
        try:
            prompt_id = await self.queue(prompt)
            entry = await self._follow(ws, prompt_id, on_progress)
        finally:
            await ws.close()
        # the server announces success before it files the run in its history: wait for the entry (unless the end was
        # learned from the history itself)
        deadline = time.monotonic() + 60.0
        if not entry:
            entry = await self.history(prompt_id)
        while not entry and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            entry = await self.history(prompt_id)
        if not entry:
            raise ServerGone(f"{self.url}: the finished prompt {prompt_id} did not appear in /history")
        status = entry.get("status") or {}
        if status.get("status_str") == "error":  # finished without its websocket news reaching us
            errors = [m[1] for m in status.get("messages", []) if isinstance(m, list) and m[:1] == ["execution_error"]]
            raise PromptFailed(format_execution_error(errors[0]) if errors else f"the prompt failed on {self.url}")
        return RunOutcome(prompt_id, entry.get("outputs", {}))

    async def _follow(self, ws: aiohttp.ClientWebSocketResponse, prompt_id: str,
                      on_progress: ProgressCallback | None) -> dict[str, Any] | None:
        """Follows the prompt's websocket news until it ends; returns its history entry when the end was found there
        (its news did not reach us), else None."""
        check_at = time.monotonic() + LOST_CHECK_SECONDS
        try:
            while True:
                try:
                    message = await ws.receive(timeout=max(0.05, check_at - time.monotonic()))
                except asyncio.TimeoutError:
                    message = None
                if time.monotonic() >= check_at:
                    entry = await self._finished_entry(prompt_id)
                    if entry is not None:
                        return entry  # it finished and its news did not reach us: the history has it
                    check_at = time.monotonic() + LOST_CHECK_SECONDS
                if message is None:
                    continue
                if message.type != aiohttp.WSMsgType.TEXT:
                    if message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                        aiohttp.WSMsgType.CLOSED):
                        break
                    continue  # binary: preview images
                try:
                    event = json.loads(message.data)
                except ValueError:
                    continue
                kind, data = event.get("type"), event.get("data") or {}
                if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                    continue
                check_at = time.monotonic() + LOST_CHECK_SECONDS  # news of the prompt: it is alive
                if kind == "progress" and on_progress is not None:
                    on_progress(int(data.get("value", 0)), int(data.get("max", 0)), data.get("node"))
                elif kind == "execution_error":
                    raise PromptFailed(format_execution_error(data))
                elif kind == "execution_interrupted":
                    raise PromptFailed(f"interrupted on {self.url} (node {data.get('node_id')})")
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                    return None
        except _NETWORK_ERRORS as exc:
            raise ServerGone(f"{self.url}: connection lost mid-run ({type(exc).__name__}: {exc})") from exc
        raise ServerGone(f"{self.url}: connection lost mid-run (the server closed the websocket)")


def format_node_errors(answer: Any) -> str:
    """The message of a /prompt refusal: every node's validation errors, else the overall error."""
    if not isinstance(answer, dict):
        return str(answer)
    parts = []
    for node_id, entry in (answer.get("node_errors") or {}).items():
        for err in entry.get("errors", []):
            parts.append(f"{entry.get('class_type')} (node {node_id}): {err.get('message')}: {err.get('details')}")
    error = answer.get("error")
    if not parts and isinstance(error, dict):
        parts.append(f"{error.get('message')}: {error.get('details')}".rstrip(": "))
    return "the graph does not validate: " + ("; ".join(parts) or str(error or answer))


def format_execution_error(data: dict[str, Any]) -> str:
    message = str(data.get("exception_message", "")).strip() or str(data.get("exception_type", "error"))
    return f"{data.get('node_type')} (node {data.get('node_id')}): {message}"


def combo_options(info: dict[str, Any] | None, input_name: str) -> tuple[list[Any] | None, dict[str, Any]]:
    """(combo options or None, widget options) of one input in an /object_info node description.

    Combos appear as [[options...], {...}] (older servers) or ["COMBO", {"options": [...]}] (newer).
    """
    if not info:
        return None, {}
    for section in ("required", "optional"):
        entry = (info.get("input") or {}).get(section, {}).get(input_name)
        if entry is None:
            continue
        kind = entry[0]
        extra = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        if isinstance(kind, list):
            return list(kind), extra
        return (list(extra["options"]) if "options" in extra else None), extra
    return None, {}


# ---------------------------------------------------------------------------------------------
# A ComfyUI started as a child process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


START_TIMEOUT_S = 600.0  # a first start may install or compile; the GPU check passes its own, shorter limit


class LocalServer:
    """`python main.py --listen 127.0.0.1 --port P ...` of a ComfyUI folder, as a child process.

    main.py reads that ComfyUI's own extra_model_paths.yaml as usual; `extra_args` adds more main.py
    arguments (--base-directory, --cpu, --extra-model-paths-config). Listens on loopback only.
    """

    def __init__(self, comfyui: Path, extra_args: Sequence[str] = (), log_path: Path | None = None) -> None:
        self.comfyui = comfyui
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, str(comfyui / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port), *extra_args]
        self.log_path = log_path
        self.child: Child | None = None
        self._log_file: Any = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process if self.child is not None else None

    def start(self) -> None:
        log.debug("starting %s", " ".join(self.command))
        self._log_file = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.child = spawn(self.command, self.comfyui, self._log_file)

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def stop(self, grace: float = 10.0) -> None:
        """Stops the child and everything it started (child_process.Child.stop); idempotent."""
        child, self.child = self.child, None
        if child is not None:
            child.stop(grace)
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()
        self._log_file = None

    async def connect(self, session: aiohttp.ClientSession, start_timeout: float = START_TIMEOUT_S) -> ComfyClient:
        """Starts the server and returns a client once it answers; ServerGone (with the end of its log) if it does not
        within `start_timeout` seconds, also when it hangs without dying."""
        self.start()
        return await self.wait_up(session, start_timeout)

    async def wait_up(self, session: aiohttp.ClientSession, start_timeout: float = START_TIMEOUT_S) -> ComfyClient:
        """A client of the started server once it answers; ServerGone (with the end of its log) if it does not within
        `start_timeout` seconds."""
        client = ComfyClient(self.url, session)
        try:
            await client.wait_until_up(start_timeout, is_alive=self.alive)
        except ServerGone as exc:
            tail = self.log_tail()
            ending = f"; the end of its log:\n{tail}" if tail else ""
            why = "it exited" if not self.alive() else str(exc)
            raise ServerGone(f"the local ComfyUI ({self.comfyui}) did not start ({why}){ending}") from None
        return client

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
