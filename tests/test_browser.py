"""Real-browser check: the lane's ComfyUI server with this pack, its real frontend, headless Chromium.

Starts ComfyUI's own main.py (a subprocess, CPU, private --base-directory, free loopback port) with this
pack linked into custom_nodes, serves the frontend the host pins (comfyui-frontend-package 1.32.9 for
ComfyUI 0.3.75, 1.49.6 for 0.33) and, in the newest lane, the newest frontend release too (users update it on
their own; scripts/test_env.sh installs it, main.py serves it with --front-end-root; screenshots in
test-output/browser-newest/), opens it in the system chromium (Debian packages chromium +
chromium-driver, driven by Playwright with executable_path; nothing is downloaded) and, for each shipped
UI workflow (workflows/*.json), loads it through the frontend (app.loadGraphData) and checks:

* no missing node types: the list the frontend hands to extensions (afterConfigureGraph), its visible
  warning (a dialog in 1.32, a toast in 1.49), placeholder nodes;
* every node of the file is in the graph with its type and the outputs its host defines; every pack node
  has exactly the widgets its /object_info definition asks for, holding the file's widgets_values, socket
  inputs as defined, tooltips on every input, and is drawn on the canvas (multiline text as real textareas);
* it opens at the file's zoom (readable), no node shows a deprecation badge (the definitions the server sends), the
  groups are the file's and no two nodes overlap;
* the API form the frontend builds (app.graphToPrompt) is what workflows/api/<name>.json ships, and
  POST /prompt accepts it (validation passed: 200 with a prompt_id, no node_errors); with a save name taken,
  it is refused at Run, naming the file.

A screenshot of each loaded workflow goes to test-output/browser/<name>.png (with the server log and
the browser console). A control test loads a graph with an unknown node type and checks that the
missing-nodes signals do fire, so the "no missing nodes" assertions cannot pass vacuously.

Without a system chromium (and no way to install it: see scripts/test_env.sh) the tests skip loudly
with the reason; set CROSS_INIT_REQUIRE_BROWSER=1 (CI) to make that a failure instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import loud_skip

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
OUT_DIR = REPO_ROOT / "test-output" / "browser"
LAUNCHER = Path(__file__).resolve().parent / "browser_server.py"
PACK_PREFIX = "CrossInit"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_READY_S = 120
PAGE_TIMEOUT_MS = 60_000
JS_TIMEOUT_MS = 30_000
# widget-carrying input types (anything else is a socket); COMBO inputs are given as a list in old specs
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# files the shipped workflows refer to: node type -> (widget index, folder under the base directory)
REFERENCED_FILES = {
    "CheckpointLoaderSimple": (0, "models/checkpoints"),
    "LoadImage": (0, "input"),
    "CrossInitLoadEmbedding": (0, "models/embeddings"),
    # a model folder: listed when it holds a config.json (widget 0 is the prompt text)
    "CrossInitPromptScore": (1, "models/clip_scoring"),
}

pytestmark = pytest.mark.slow


def _ui_workflows() -> list[Path]:
    """workflows/*.json in the UI (graph) format, whatever is there at collection time."""
    found = []
    for path in sorted(WORKFLOWS_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found.append(path)  # reported as a failure by the test itself
            continue
        if isinstance(data, dict) and "nodes" in data:
            found.append(path)
    return found


WORKFLOWS = _ui_workflows()


# ----------------------------------------------------------------------------------------------------
# environment


def _chromium() -> str:
    """The system chromium, or a loud skip (a failure with CROSS_INIT_REQUIRE_BROWSER=1)."""
    exe = os.environ.get("CROSS_INIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    status_file = Path(sys.prefix) / "browser-setup.txt"
    setup = status_file.read_text(encoding="utf-8").strip() if status_file.is_file() else "no record"
    reason = (
        "REAL-BROWSER TEST NOT RUN: no system chromium on this machine "
        f"(scripts/test_env.sh browser setup: {setup}). Install the Debian packages "
        "`chromium chromium-driver` (apt-get install -y --no-install-recommends chromium chromium-driver) "
        "and rerun `bash scripts/test.sh`."
    )
    loud_skip(reason, "CROSS_INIT_REQUIRE_BROWSER")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(url: str, payload: object | None = None, timeout: float = 30) -> tuple[int, bytes]:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _write_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64), (180, 140, 120)).save(path)


def _prepare_base(base: Path) -> None:
    """A private ComfyUI base directory: this pack, the files the workflows name, quiet first-run UI."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "cross-init").symlink_to(REPO_ROOT, target_is_directory=True)
    for path in WORKFLOWS:
        try:
            nodes = json.loads(path.read_text(encoding="utf-8")).get("nodes", [])
        except (OSError, ValueError):
            continue
        for node in nodes:
            ref = REFERENCED_FILES.get(node.get("type"))
            values = node.get("widgets_values") or []
            if ref is None or len(values) <= ref[0] or not isinstance(values[ref[0]], str):
                continue
            target = base / ref[1] / values[ref[0]]
            if node.get("type") == "CrossInitPromptScore":
                target = target / "config.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}:
                _write_png(target)
            else:
                # validation only checks that the name is listed; execution of it fails at once
                target.write_bytes(b"not a real checkpoint: browser test placeholder\n")
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    # no first-run template browser over the canvas, full-detail drawing at any zoom (text and widgets in
    # the screenshots), no minimap over the corner; the missing-nodes warning stays on (its default)
    settings.write_text(
        json.dumps(
            {
                "Comfy.TutorialCompleted": True,
                "Comfy.Workflow.ShowMissingNodesWarning": True,
                "LiteGraph.Canvas.MinFontSizeForLOD": 0,
                "Comfy.Minimap.Visible": False,
            }
        ),
        encoding="utf-8",
    )


class Server:
    def __init__(self, url: str, base: Path, log_path: Path, process: subprocess.Popen):
        self.url = url
        self.base = base
        self.log_path = log_path
        self.process = process
        self.object_info: dict = {}

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    exe = _chromium()
    import importlib.util

    absent = [name for name in ("playwright", "comfyui_frontend_package") if importlib.util.find_spec(name) is None]
    if absent:
        pytest.fail(
            f"{sys.prefix} lacks {absent} (tests/requirements-test.txt): this venv predates the browser test; "
            "`bash scripts/test.sh` builds the current one",
            pytrace=False,
        )
    return exe


def _frontends() -> list[str]:
    """The frontend the host pins, and where the lane provides one (scripts/test_env.sh, newest lane) the newest
    release, which users install on their own (`pip install -U comfyui-frontend-package`)."""
    return ["pinned", *(["newest"] if os.environ.get("CROSS_INIT_NEWEST_FRONTEND") else [])]


@pytest.fixture(scope="module", params=_frontends())
def frontend(request) -> str | None:
    """None: the host's pinned frontend package; else the folder of the newest frontend's static files."""
    return None if request.param == "pinned" else os.environ["CROSS_INIT_NEWEST_FRONTEND"]


@pytest.fixture(scope="module")
def out_dir(frontend) -> Path:
    """test-output/browser/ (the pinned frontend: make_thumbnails.py reads it), test-output/browser-newest/."""
    folder = OUT_DIR if frontend is None else OUT_DIR.with_name("browser-newest")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
    return folder


@pytest.fixture(scope="module")
def server(chromium_path, out_dir, frontend, tmp_path_factory):
    """ComfyUI's real server (main.py) with this pack and the frontend, on a free loopback port; killed at the end."""
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui or not (Path(comfyui) / "main.py").is_file():
        pytest.fail("COMFYUI_PATH does not name a ComfyUI checkout: run `bash scripts/test.sh`", pytrace=False)
    base = tmp_path_factory.mktemp("browser_base")
    _prepare_base(base)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = out_dir / "server.log"
    cmd = [
        sys.executable,
        str(LAUNCHER),
        comfyui,
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
        "--database-url",
        "sqlite:///:memory:",
        *(["--front-end-root", frontend] if frontend else []),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(cmd, cwd=base, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    srv = Server(url, base, log_path, process)
    try:
        deadline = time.monotonic() + SERVER_READY_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} while starting:\n{srv.log()[-4000:]}")
            try:
                status, _ = _http(url + "/", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer on {url} within {SERVER_READY_S} s:\n{srv.log()[-4000:]}")
            time.sleep(0.5)
        status, body = _http(url + "/object_info", timeout=60)
        assert status == 200, body[:500]
        srv.object_info = json.loads(body)
        yield srv
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS, timeout=PAGE_TIMEOUT_MS)
        try:
            yield instance
        finally:
            instance.close()


class Page:
    """One fresh browser context with the ComfyUI app loaded; console messages are kept."""

    def __init__(self, page, console: list[str]):
        self.page = page
        self.console = console

    def js(self, body: str, arg: object = None, timeout_ms: int = JS_TIMEOUT_MS):
        """Runs `async (arg) => { body }` in the page, bounded (page.evaluate itself has no timeout)."""
        script = (
            "async ([arg, ms]) => { const run = async (arg) => {" + body + "};"
            " let timer; const limit = new Promise((_, reject) => { timer = setTimeout("
            " () => reject(new Error('browser test: page script timed out after ' + ms + ' ms')), ms); });"
            " try { return await Promise.race([run(arg), limit]); } finally { clearTimeout(timer); } }"
        )
        return self.page.evaluate(script, [arg, timeout_ms])


@pytest.fixture
def app(browser, server, out_dir, request):
    context = browser.new_context(viewport={"width": 2400, "height": 1350})
    # the "Nodes 2.0" promotion banner would cover the top of every screenshot
    context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"[{msg.type}] {msg.text}"))
    page.on("pageerror", lambda err: console.append(f"[pageerror] {err}"))
    try:
        page.goto(server.url + "/", wait_until="domcontentloaded", timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.app.vueAppReady"
            " && window.LiteGraph && Object.keys(window.LiteGraph.registered_node_types).length > 100",
            timeout=PAGE_TIMEOUT_MS,
        )
        ui = Page(page, console)
        # the frontend's own list of missing node types, as it hands it to extensions after every load (the
        # public `afterConfigureGraph(missingNodeTypes)` hook: frontend 1.32 and 1.49 alike; 1.49 no longer
        # calls app.showMissingNodesError while loading)
        ui.js(
            "window.__missingNodeReports = [];"
            " app.registerExtension({name: 'CrossInit.BrowserTest', afterConfigureGraph(types) {"
            " window.__missingNodeReports.push((types || []).map(t => (typeof t === 'string' ? t : t.type))); }});"
        )
        yield ui
    finally:
        name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        (out_dir / f"{name}.console.txt").write_text("\n".join(console) + "\n", encoding="utf-8")
        context.close()


# ----------------------------------------------------------------------------------------------------
# in-page probes

LOAD_JS = "await app.loadGraphData(arg.graph, true, true, arg.name); await new Promise(r => setTimeout(r, 300));"

# The visible missing-nodes warning differs by frontend version: 1.32 opens a modal dialog ("This workflow
# has missing nodes"), 1.49 shows a toast (role="status", "Missing node: <type>"). Both are collected.
WARNING_SELECTOR = '[role="dialog"], .p-dialog, [role="status"], [role="alert"]'
MISSING_WARNING_RE = r"/missing node|nodes you haven't installed/i"

MISSING_JS = """
const dialogs = Array.from(document.querySelectorAll('__WARNINGS__'))
  .filter(d => d.offsetParent !== null || d.getClientRects().length > 0)
  .map(d => d.innerText);
const registered = LiteGraph.registered_node_types;
return {
  reports: window.__missingNodeReports.filter(r => r.length),
  dialogs: dialogs,
  missingDialogs: dialogs.filter(t => __MISSING_RE__.test(t)),
  placeholders: app.graph._nodes
    .filter(n => n.has_errors || !registered[n.type])
    .map(n => ({id: String(n.id), type: n.type, lastType: n.last_serialization?.type ?? null})),
};
""".replace("__WARNINGS__", WARNING_SELECTOR).replace("__MISSING_RE__", MISSING_WARNING_RE)

GRAPH_JS = """
app.graph.setDirtyCanvas(true, true);
app.canvas.draw(true, true);
const visible = new Set((app.canvas.visible_nodes || []).map(n => n.id));
const textareas = Array.from(document.querySelectorAll('textarea')).map(t => t.value);
// ids are compared as strings: frontend 1.49 keeps them as strings in the live graph (numbers in files)
return app.graph._nodes.map(n => ({
  id: String(n.id),
  type: n.type,
  title: n.title,
  mode: n.mode,
  collapsed: !!n.flags?.collapsed,
  size: [n.size[0], n.size[1]],
  visible: visible.has(n.id),
  widgets: (n.widgets || []).map(w => ({
    name: w.name, type: w.type, value: w.value, hidden: !!w.hidden,
    options: Array.isArray(w.options?.values) ? w.options.values : null,
  })),
  inputs: (n.inputs || []).map(i => ({name: i.name, type: i.type, link: i.link, widget: !!i.widget})),
  outputs: (n.outputs || []).map(o => ({name: o.name, type: o.type})),
  tooltips: Object.fromEntries(Object.entries(n.constructor.nodeData?.inputs || {})
    .map(([k, spec]) => [k, spec.tooltip || null])),
  description: n.constructor.nodeData?.description || null,
  textareasOk: (n.widgets || []).filter(w => w.type === 'customtext').every(w => textareas.includes(w.value)),
}));
"""

# the view the workflow opened at (restored from the file's extra.ds), and what the frontend knows of each node's
# definition (the server's /object_info, as the deprecation badge reads it) and of its place on the canvas
VIEW_JS = """
return {
  scale: app.canvas.ds.scale,
  offset: [app.canvas.ds.offset[0], app.canvas.ds.offset[1]],
  titleHeight: LiteGraph.NODE_TITLE_HEIGHT,
  nodes: app.graph._nodes.map(n => ({
    id: String(n.id), type: n.type, pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
    deprecated: !!n.constructor.nodeData?.deprecated,
  })),
  groups: (app.graph._groups || app.graph.groups || []).map(g => g.title),
};
"""

FIT_JS = """
try { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); }
catch (e) { app.canvas.ds.reset(); }
await new Promise(r => setTimeout(r, 500));
app.graph.setDirtyCanvas(true, true);
app.canvas.draw(true, true);
await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
"""


# ----------------------------------------------------------------------------------------------------
# checks


def _widget_spec(object_info: dict, node_type: str) -> list[tuple[str, str]]:
    """(name, type) of the widget inputs of a node type in definition order, plus the frontend's
    control_after_generate after a seed-like INT that asks for it."""
    spec = object_info[node_type]["input"]
    widgets = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            kind = "COMBO" if isinstance(kind, list) else kind
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if kind not in WIDGET_TYPES or options.get("forceInput"):
                continue
            widgets.append((name, kind))
            if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
                widgets.append(("control_after_generate", "COMBO"))
    return widgets


def _socket_spec(object_info: dict, node_type: str) -> list[tuple[str, str]]:
    spec = object_info[node_type]["input"]
    sockets = []
    for section in ("required", "optional"):
        for name, value in spec.get(section, {}).items():
            kind = value[0]
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if (not isinstance(kind, list) and kind not in WIDGET_TYPES) or options.get("forceInput"):
                sockets.append((name, kind))
    return sockets


def _same_value(live, shipped) -> bool:
    if isinstance(shipped, float) or isinstance(live, float):
        if isinstance(shipped, bool) or isinstance(live, bool):
            return live == shipped
        try:
            return math.isclose(float(live), float(shipped), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return live == shipped


def _check_no_missing(ui: Page, where: str) -> None:
    missing = ui.js(MISSING_JS)
    assert not missing["reports"], f"{where}: the frontend reported missing node types {missing['reports']}"
    assert not missing["missingDialogs"], f"{where}: missing-nodes dialog shown: {missing['missingDialogs']}"
    assert not missing["placeholders"], f"{where}: placeholder (unregistered) nodes {missing['placeholders']}"


def _check_nodes(graph_nodes: list[dict], shipped: dict, object_info: dict, name: str) -> int:
    live = {node["id"]: node for node in graph_nodes}  # ids as strings (see GRAPH_JS)
    problems = []
    pack_nodes = 0
    for node in shipped["nodes"]:
        got = live.get(str(node["id"]))
        if got is None or got["type"] != node["type"]:
            problems.append(f"node {node['id']} {node['type']}: not in the loaded graph (got {got and got['type']})")
            continue
        definition = object_info.get(node["type"])
        if definition is not None:
            # every node's output sockets are its host's, whatever the file lists (1.32 keeps a file's extra
            # slots, 1.49 adds the definition's: SaveImage/PreviewImage have an IMAGE output from ComfyUI 0.33)
            outputs = [(o["name"], o["type"]) for o in got["outputs"]]
            defined = list(zip(definition["output_name"], definition["output"], strict=True))
            if outputs != defined:
                problems.append(f"{name}: node {node['id']} {node['type']}: outputs {outputs} != definition {defined}")
        if not node["type"].startswith(PACK_PREFIX):
            continue
        pack_nodes += 1
        where = f"{name}: node {node['id']} {node['type']} ({got['title']})"
        if node["type"] not in object_info:
            problems.append(f"{where}: not in the server's /object_info")
            continue
        expected = _widget_spec(object_info, node["type"])
        widgets = [(w["name"], w["value"]) for w in got["widgets"]]
        if [w for w, _ in widgets] != [w for w, _ in expected]:
            problems.append(f"{where}: widgets {[w for w, _ in widgets]} != definition {[w for w, _ in expected]}")
        values = node.get("widgets_values") or []
        if len(values) != len(widgets) or not all(_same_value(v, s) for (_, v), s in zip(widgets, values, strict=False)):
            problems.append(f"{where}: widget values {widgets} != the file's widgets_values {values}")
        for widget in got["widgets"]:
            if widget["hidden"]:
                problems.append(f"{where}: widget {widget['name']} is hidden")
            if widget["options"] is not None and widget["value"] not in widget["options"]:
                problems.append(f"{where}: combo {widget['name']}={widget['value']!r} not in {widget['options']}")
        socket_names = {i["name"] for i in got["inputs"] if not i["widget"]}
        for socket_name, _ in _socket_spec(object_info, node["type"]):
            if socket_name not in socket_names:
                problems.append(f"{where}: input socket {socket_name} missing (has {sorted(socket_names)})")
        no_tooltip = sorted(k for k, v in got["tooltips"].items() if not v)
        if no_tooltip:
            problems.append(f"{where}: inputs without a tooltip in the UI: {no_tooltip}")
        if not got["description"]:
            problems.append(f"{where}: no description in the UI")
        if got["collapsed"] or got["size"][0] <= 0 or got["size"][1] <= 0 or not got["visible"]:
            problems.append(f"{where}: not drawn (collapsed={got['collapsed']} size={got['size']} visible={got['visible']})")
        if not got["textareasOk"]:
            problems.append(f"{where}: a multiline text widget has no textarea showing its value")
    assert not problems, "\n".join(problems)
    return pack_nodes


def _check_view(view: dict, shipped: dict, object_info: dict, name: str) -> None:
    """The zoom the workflow opens at is the file's (labels readable), no node carries a deprecation badge, the
    groups are the file's, and no two nodes overlap (title bar included)."""
    opened = shipped["extra"]["ds"]
    assert math.isclose(view["scale"], opened["scale"], rel_tol=1e-3) and view["scale"] >= 0.75, (name, view["scale"])
    deprecated = sorted({n["type"] for n in view["nodes"]
                         if n["deprecated"] or object_info.get(n["type"], {}).get("deprecated")})
    assert not deprecated, f"{name}: deprecated nodes {deprecated}"
    assert view["groups"] == [g["title"] for g in shipped["groups"]], (name, view["groups"])
    title = view["titleHeight"]
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in view["nodes"]]
    overlaps = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert not overlaps, f"{name}: overlapping nodes {overlaps}"


def _taken_names(base: Path, prompt: dict) -> list[Path]:
    """Files of the embeddings folder that the prompt's Save nodes would write (NAME, NAME-best, NAME-stepNNNN)."""
    folder = base / "models" / "embeddings"
    names = [node["inputs"]["name"] for node in prompt.values() if node["class_type"] == "CrossInitSaveEmbedding"]
    return [path for name in names for path in sorted(folder.glob(f"{name}*.safetensors"))
            if re.fullmatch(re.escape(name) + r"(-best|-step\d{4,})?", path.stem)]


def _api_inputs(prompt: dict, object_info: dict) -> dict:
    """Class and inputs per node, leaving out inputs the node does not define: display-only widgets the
    frontend adds and sends along (PreviewAny's `preview`), which the server ignores."""

    def defined(class_type: str) -> set[str]:
        spec = object_info.get(class_type, {}).get("input", {})
        return {name for section in spec.values() if isinstance(section, dict) for name in section}

    return {key: (node["class_type"], {k: v for k, v in node["inputs"].items() if k in defined(node["class_type"])})
            for key, node in prompt.items()}


# ----------------------------------------------------------------------------------------------------
# tests


def test_server_loaded_the_pack(server):
    """The pack imported in the real server: its nodes are served and its import did not fail."""
    log = server.log()
    pack_types = sorted(k for k in server.object_info if k.startswith(PACK_PREFIX))
    assert "CrossInitTrainer" in pack_types, f"pack nodes not in /object_info; server log:\n{log[-4000:]}"
    used = {
        node["type"]
        for path in WORKFLOWS
        for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]
        if node["type"].startswith(PACK_PREFIX)
    }
    assert used <= set(pack_types), f"workflow node types not served: {sorted(used - set(pack_types))}"
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "cross-init" in line]
    assert not failed, failed
    assert "Cross-Init" in log, "the pack's load message is not in the server log"


def test_workflows_found():
    names = {path.name for path in WORKFLOWS}
    assert {"cross_init_fast.json", "cross_init_full.json"} <= names, f"UI workflows found: {sorted(names)}"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[path.stem for path in WORKFLOWS])
def test_workflow_in_real_frontend(workflow: Path, app: Page, server: Server, out_dir: Path):
    shipped = json.loads(workflow.read_text(encoding="utf-8"))
    app.js(LOAD_JS, {"graph": shipped, "name": workflow.stem})
    _check_view(app.js(VIEW_JS), shipped, server.object_info, workflow.name)
    app.js(FIT_JS)
    shot = out_dir / f"{workflow.stem}.png"
    app.page.screenshot(path=str(shot), timeout=PAGE_TIMEOUT_MS)

    _check_no_missing(app, workflow.name)
    pack_errors = [line for line in app.console if line.startswith(("[error]", "[pageerror]")) and re.search(r"cross.?init", line, re.I)]
    assert not pack_errors, f"browser errors about the pack while loading {workflow.name}: {pack_errors}"
    graph_nodes = app.js(GRAPH_JS)
    assert len(graph_nodes) == len(shipped["nodes"]), (len(graph_nodes), len(shipped["nodes"]))
    pack_nodes = _check_nodes(graph_nodes, shipped, server.object_info, workflow.name)
    assert pack_nodes > 0, f"{workflow.name} has no {PACK_PREFIX}* node"

    # the API form, built by the frontend itself
    prompt = app.js("const p = await app.graphToPrompt(); return p.output;")
    assert prompt, "graphToPrompt gave an empty prompt"
    (out_dir / f"{workflow.stem}.api.json").write_text(json.dumps(prompt, indent=2), encoding="utf-8")
    api_file = WORKFLOWS_DIR / "api" / workflow.name
    if api_file.is_file():
        shipped_api = json.loads(api_file.read_text(encoding="utf-8"))
        assert _api_inputs(prompt, server.object_info) == _api_inputs(shipped_api, server.object_info), (
            f"the frontend's API form of {workflow.name} differs from {api_file.relative_to(REPO_ROOT)}"
            f" (see {out_dir.relative_to(REPO_ROOT)}/{workflow.stem}.api.json)"
        )

    # a taken save name is refused at Run, by name, before anything runs; then the names are freed for the real check
    taken = _taken_names(server.base, prompt)
    if taken:  # the server names the Save node's error (it still queues the other outputs: the trainer refuses then)
        status, body = _http(server.url + "/prompt", {"prompt": prompt, "client_id": "cross-init-browser-test"})
        _http(server.url + "/queue", {"clear": True}, timeout=10)
        _http(server.url + "/interrupt", {}, timeout=10)
        refused = json.loads(body).get("node_errors", {}) if body.startswith(b"{") else {}
        saver = next(k for k, n in prompt.items() if n["class_type"] == "CrossInitSaveEmbedding")
        assert f"{taken[0].name} already exists" in json.dumps(refused.get(saver)), (status, body[:2000])
    held = [path.rename(path.with_name(path.name + ".held")) for path in taken]
    status, body = _http(server.url + "/prompt", {"prompt": prompt, "client_id": "cross-init-browser-test"})
    for path in held:
        path.rename(path.with_name(path.name.removesuffix(".held")))
    answer = json.loads(body) if body.startswith(b"{") else {"raw": body.decode("utf-8", "replace")}
    try:
        assert status == 200, f"/prompt refused {workflow.name}: {status} {json.dumps(answer, indent=1)[:4000]}"
        assert answer.get("prompt_id"), answer
        assert not answer.get("node_errors"), answer["node_errors"]
    finally:
        # validation is what counts: do not let the server work on the placeholder checkpoint
        _http(server.url + "/queue", {"clear": True}, timeout=10)
        _http(server.url + "/interrupt", {}, timeout=10)


def test_missing_node_types_are_detected(app: Page, out_dir: Path):
    """Control: an unknown node type does trip every signal the workflow test relies on."""
    shipped = json.loads(WORKFLOWS[0].read_text(encoding="utf-8"))
    victim = next(node for node in shipped["nodes"] if node["type"].startswith(PACK_PREFIX))
    victim["type"] = "CrossInitNoSuchNodeForTheBrowserTest"
    app.js(LOAD_JS, {"graph": shipped, "name": "missing_node_control"})
    app.page.wait_for_function(
        f"(type) => Array.from(document.querySelectorAll('{WARNING_SELECTOR}'))"
        f".some(d => {MISSING_WARNING_RE}.test(d.innerText) && d.innerText.includes(type))",
        arg=victim["type"],
        timeout=15_000,
    )
    app.page.screenshot(path=str(out_dir / "control_missing_node.png"), timeout=PAGE_TIMEOUT_MS)
    missing = app.js(MISSING_JS)
    assert any(victim["type"] in report for report in missing["reports"]), missing
    assert any(victim["type"] in text for text in missing["missingDialogs"]), missing
    assert [p["id"] for p in missing["placeholders"]] == [str(victim["id"])], missing
