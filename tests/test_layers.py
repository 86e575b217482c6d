"""The pack's layers, read from its import statements (every import, deferred ones included):

- no import cycles anywhere in the pack;
- only the host layer (cross_init_core/host/) imports ComfyUI's internals; the nodes import only `comfy_api`;
- server code (the nodes and the core outside client/) never imports the terminal client;
- the terminal client imports no ComfyUI code, and of the pack only the pure shared pieces, which import no
  more than the standard library and each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK = "pack"  # the repository root, as ComfyUI imports it
# `nodes` written as an absolute import is ComfyUI's nodes.py: the pack itself is imported as a package, so its own
# nodes/ is only reachable relatively
COMFY_INTERNALS = {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "execution", "server", "latent_preview",
                   "node_helpers", "comfyui_version", "app", "utils", "nodes"}
COMFY_API = {"comfy_api"}
PURE_IMPORTS = {"__future__", "argparse", "collections", "dataclasses", "math", "os", "pathlib", "re", "secrets", "typing",
                "unicodedata", "importlib", "types"}  # the standard library modules the shared pieces use


def _modules() -> dict[str, Path]:
    """Every module of the pack by dotted name (the root package is `pack`)."""
    found = {PACK: REPO / "__init__.py"}
    for top in ("cross_init_core", "nodes"):
        for path in sorted((REPO / top).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()
# the pure shared pieces are the common/ package (and the root package, which only loads submodules lazily)
SHARED = {"cross_init_core", *(m for m in MODULES if m.split(".")[:2] == ["cross_init_core", "common"])}


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(pack modules, top-level outside modules) that `name` imports anywhere in its code."""
    internal: set[str] = set()
    external: set[str] = set()
    package = _package_of(name, path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                if target.split(".")[0] == "cross_init_core" and target in MODULES:
                    internal.add(target)
                else:
                    external.add(target.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                target = node.module or ""
                if target.split(".")[0] in ("cross_init_core",) and target in MODULES:
                    internal.add(target)
                    internal |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
                else:
                    external.add(target.split(".")[0])
                continue
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            if base == [PACK]:
                base = []
            target = ".".join([*base, *([node.module] if node.module else [])]) or PACK
            submodules = {f"{target}.{a.name}" if target != PACK else a.name for a in node.names}
            hits = {m for m in submodules if m in MODULES}
            internal |= hits
            if len(hits) < len(submodules):  # names defined in the module (or package) itself
                assert target in MODULES, f"{name}: cannot resolve the import of {target}"
                internal.add(target)
    internal.discard(name)
    return internal, external


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _client(name: str) -> bool:
    """The terminal client: client/ and `python -m cross_init_core`'s entry point."""
    return name.startswith("cross_init_core.client") or name == "cross_init_core.__main__"


def test_every_module_is_read():
    assert len(MODULES) > 60 and "cross_init_core.host.session" in MODULES and "cross_init_core.client.train.farm" in MODULES
    # a known edge of each kind, so the reader cannot silently see nothing
    assert "cross_init_core.host" in GRAPH["cross_init_core.training.trainer"][0]
    assert "cross_init_core.client.eval.plan" in GRAPH["cross_init_core.client.eval.run"][0]
    assert "comfy" in GRAPH["cross_init_core.host.session"][1]


def test_the_core_root_holds_packages_by_concern():
    root = REPO / "cross_init_core"
    modules = sorted(p.name for p in root.glob("*.py"))
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert modules == ["__init__.py", "__main__.py"]
    assert packages == ["client", "common", "embeddings", "face", "host", "lora", "method", "scoring", "training"]
    assert len(SHARED) > 8 and "cross_init_core.common.errors" in SHARED


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in GRAPH[node][0]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_only_the_host_layer_imports_comfyui_internals():
    offenders = {name: sorted(ext & COMFY_INTERNALS) for name, (_internal, ext) in GRAPH.items()
                 if ext & COMFY_INTERNALS and not name.startswith("cross_init_core.host")}
    assert offenders == {}
    for name, (internal, external) in GRAPH.items():
        if name.startswith("nodes") or name == PACK:
            assert not external & COMFY_INTERNALS and not any(_client(m) for m in internal), name


def test_server_code_never_imports_the_client():
    crossing = {name: sorted(m for m in internal if _client(m)) for name, (internal, _ext) in GRAPH.items()
                if not _client(name) and any(_client(m) for m in internal)}
    assert crossing == {}


def test_the_client_imports_only_pure_shared_pieces_and_no_comfyui():
    for name, (internal, external) in GRAPH.items():
        if not _client(name):
            continue
        assert not external & (COMFY_INTERNALS | COMFY_API), (name, external)
        outside = sorted(m for m in internal if not _client(m) and m not in SHARED)
        assert outside == [], (name, outside)
    for name in SHARED - {"cross_init_core"}:
        internal, external = GRAPH[name]
        assert internal <= SHARED and external <= PURE_IMPORTS, (name, internal, external)
