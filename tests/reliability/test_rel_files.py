"""Scenarios 4 and 7: files. Names that try to leave the embeddings folder (through the Save node, with the
whole ComfyUI base directory watched), a folder squatting on the name, a real crash (SIGKILL) mid-write,
hostile safetensors headers, files without an embedding, a malicious pickle and path tricks through the Load
node, and saves of one name racing from two processes and through the node.

Core-level cases already covered: tests/test_embedding_files.py (names, no-clobber, in-process crashes,
thread races, truncated/random files, malicious pickle via load_embedding, extra keys, wrong widths).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from reliability_state import node


def _embedding(core, seed: int = 0, **metadata: str):
    gen = torch.Generator().manual_seed(seed)
    return core.embeddings.embedding.CrossInitEmbedding(vectors={"clip_l": torch.randn(2, 768, generator=gen)}, metadata=dict(metadata))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _base() -> Path:
    import folder_paths

    return Path(folder_paths.base_path)


# ---------------------------------------------------------------------------------------------
# 4a. Names through the Save node: rejected or normalised, never a write outside the embeddings folder

TRICKY_NAMES = [
    "../escape", "..\\escape", "/etc/cron.d/evil", "C:\\Windows\\evil", "sub/dir", "..", ".", "~/evil", "a\x00b",
    "\uff0e\uff0e\uff0fescape",    # fullwidth "../" (NFKC would fold it to ../)
    "\u2024\u2024\u2215escape",    # one-dot leaders and division slash
    "face\u202egnp.exe",           # right-to-left override
    "embedding:evil", "CON", "nul.safetensors", "COM1 ", "con\u00a0", "x" * 300, "",
]


@pytest.mark.parametrize("name", TRICKY_NAMES, ids=lambda n: repr(n)[:24])
def test_save_node_refuses_unsafe_names_and_writes_nothing_anywhere(core, embeddings_dir, name):
    """Every one of these is refused (when queued and when run); the whole ComfyUI base directory is unchanged."""
    before = _tree(_base())
    save = node("CrossInitSaveEmbedding")
    queued = save.validate_inputs(name=name, overwrite=True)
    assert isinstance(queued, str) and queued.startswith("name"), queued
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^name"):
        save.execute(_embedding(core), name=name, overwrite=True)
    assert _tree(_base()) == before


@pytest.mark.parametrize("name", ["caf\u00e9", "cafe\u0301", "\u540d\u524d", "face-v1.2", "  my_face.safetensors "])
def test_save_node_normalises_safe_names_into_the_embeddings_folder(core, embeddings_dir, name):
    """Unicode letters (stored in NFC), dots inside, a .safetensors suffix and outer spaces: accepted, normalised."""
    import unicodedata

    before = _tree(_base())
    out = node("CrossInitSaveEmbedding").execute(_embedding(core), name=name, overwrite=False)
    written = Path(out.result[0])
    assert written.parent == embeddings_dir.resolve()
    stem = unicodedata.normalize("NFC", name.strip()).removesuffix(".safetensors")
    assert written.name == f"{stem}.safetensors"
    assert set(_tree(_base())) - set(before) == {str(written.relative_to(_base().resolve()))}
    written.unlink()


def test_a_folder_squatting_on_the_name_is_a_clear_error_even_with_overwrite(core, tmp_path):
    squat = tmp_path / "face.safetensors"
    squat.mkdir()
    (squat / "inside.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(core.common.errors.EmbeddingFileError, match=r"^name: .*face\.safetensors") as info:
            core.embeddings.embedding_io.save_embedding(_embedding(core), tmp_path, "face", overwrite=overwrite)
        assert "not a file" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.safetensors"]
    assert (squat / "inside.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------
# 4b. A real crash mid-write: the process is SIGKILLed (no finally, no cleanup)


def _fork(child) -> int:
    """Runs child() in a forked process that never returns into pytest; returns its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 70
        try:
            code = child() or 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child process hung")


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("when", ["mid_write", "written_not_published"])
def test_sigkill_during_save_leaves_the_old_file_or_nothing_never_a_truncated_one(core, tmp_path, overwrite, when):
    import folder_paths

    old = None
    if overwrite:
        old = core.embeddings.embedding_io.save_embedding(_embedding(core, seed=1), tmp_path, "face").read_bytes()

    def child() -> int:
        def half_then_die(path, data):
            Path(path).write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        def die_before_publish(fd):
            os.kill(os.getpid(), signal.SIGKILL)

        if when == "mid_write":
            core.common.atomic_files.write_synced = half_then_die
        else:
            os.fsync = die_before_publish  # the data is complete; the kill lands before link/rename
        core.embeddings.embedding_io.save_embedding(_embedding(core, seed=2), tmp_path, "face", overwrite=overwrite)
        return 0

    status = _fork(child)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    final = tmp_path / "face.safetensors"
    if old is None:
        assert not final.exists()
    else:
        assert final.read_bytes() == old
        assert torch.equal(core.embeddings.embedding_io.load_embedding(final).vectors["clip_l"], _embedding(core, seed=1).vectors["clip_l"])
    # what the crash leaves is one hidden temp file, which ComfyUI does not list as an embedding
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "face.safetensors"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".face.") and leftovers[0].endswith(".tmp"), leftovers
    assert not folder_paths.filter_files_extensions(leftovers, folder_paths.supported_pt_extensions)
    # and it does not block the name
    core.embeddings.embedding_io.save_embedding(_embedding(core, seed=3), tmp_path, "face", overwrite=True)
    assert torch.equal(core.embeddings.embedding_io.load_embedding(final).vectors["clip_l"], _embedding(core, seed=3).vectors["clip_l"])


# ---------------------------------------------------------------------------------------------
# 4c. Loading hostile or incomplete files


def _safetensors_bytes(header: dict, data: bytes = b"", declared: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


HOSTILE = {
    "header_length_2_to_62": _safetensors_bytes({}, declared=2**62),
    "header_longer_than_file": _safetensors_bytes({"clip_l": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 6144]}},
                                                  declared=10**6),
    "offsets_past_the_end": _safetensors_bytes({"clip_l": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 6144]}}, b"\0" * 16),
    "shape_bomb": _safetensors_bytes({"clip_l": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}}, b"\0" * 16),
    "overlapping_tensors": _safetensors_bytes({"clip_l": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                               "clip_g": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "header_not_json": struct.pack("<Q", 8) + b"\xff\xfe{{{{{{",
    "header_not_utf8": struct.pack("<Q", 4) + b"\xc3\x28\xa0\xa1",
    "eight_bytes_only": struct.pack("<Q", 0),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_safetensors_headers_are_a_clear_error(core, tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(HOSTILE[kind])
    with pytest.raises(core.common.errors.EmbeddingFileError) as info:
        core.embeddings.embedding_io.load_embedding(path)
    assert str(info.value).startswith(path.name), str(info.value)


@pytest.mark.parametrize(("tensors", "needle"), [
    ({}, "no embedding found"),
    ({"foo": torch.randn(2, 768), "bar": torch.randn(2, 768)}, "no embedding found"),   # two unknown keys: ambiguous
    ({"foo_v0": torch.randn(768), "foo_v1": torch.randn(1024)}, "different widths"),    # reference format, inconsistent
])
def test_files_without_a_usable_embedding_are_a_clear_error(core, tmp_path, tensors, needle):
    from safetensors.torch import save_file

    path = tmp_path / "keys.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(core.common.errors.EmbeddingFileError, match=rf"^keys\.safetensors: .*{needle}"):
        core.embeddings.embedding_io.load_embedding(path)


def test_load_node_never_runs_a_malicious_pickle(core, embeddings_dir, tmp_path):
    import pickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    name = f"evil_{uuid.uuid4().hex[:8]}"
    for suffix, payload in ((".pt", {"string_to_param": {"*": Evil()}}), (".bin", {"clip_l": Evil()})):
        (embeddings_dir / f"{name}{suffix}").write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(core.common.errors.EmbeddingFileError, match="never executed"):
            node("CrossInitLoadEmbedding").execute(name=f"{name}{suffix}")
        assert not marker.exists()
        (embeddings_dir / f"{name}{suffix}").unlink()
    pickle.loads(pickle.dumps(Evil()))  # the payload is live: an ordinary unpickle does run it
    assert marker.exists()


def test_load_node_reads_nothing_outside_the_embeddings_folders(core, embeddings_dir):
    outside = _base() / f"outside_{uuid.uuid4().hex[:8]}.safetensors"
    core.embeddings.embedding_io.save_embedding(_embedding(core), outside.parent, outside.stem)
    try:
        for name in (f"../{outside.name}", str(outside), f"{embeddings_dir.name}/../../{outside.name}"):
            with pytest.raises(core.common.errors.EmbeddingFileError, match=r"^name: .*not in the embeddings folders"):
                node("CrossInitLoadEmbedding").execute(name=name)
    finally:
        outside.unlink()


# ---------------------------------------------------------------------------------------------
# 7. Racing saves of one name: from two processes, and through the Save node


def test_saves_of_one_name_racing_from_two_processes_one_wins_the_other_gets_exists(core, tmp_path):
    go = tmp_path / "go"
    folder = tmp_path / "embeddings"
    folder.mkdir()

    def racer(i: int):
        def child() -> int:
            while not go.exists():
                time.sleep(0.0005)
            try:
                core.embeddings.embedding_io.save_embedding(_embedding(core, seed=10 + i, who=str(i)), folder, "face")
            except core.common.errors.EmbeddingExistsError as exc:
                return 17 if "already exists" in str(exc) else 3
            return 0
        return child

    for round_ in range(3):
        go.unlink(missing_ok=True)
        for p in folder.iterdir():
            p.unlink()
        statuses: list[int] = []

        def run(i: int, out: list[int] = statuses) -> None:
            out.append(_fork(racer(i)))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        go.touch()
        for t in threads:
            t.join(70)
        codes = sorted(os.WEXITSTATUS(s) for s in statuses)
        assert codes == [0, 17], (round_, codes)
        loaded = core.embeddings.embedding_io.load_embedding(folder / "face.safetensors")
        winner = int(loaded.metadata["who"])
        assert torch.equal(loaded.vectors["clip_l"], _embedding(core, seed=10 + winner).vectors["clip_l"])
        assert sorted(p.name for p in folder.iterdir()) == ["face.safetensors"]


def test_two_save_nodes_racing_on_one_name_one_wins_the_other_gets_exists(core, embeddings_dir):
    name = f"race_{uuid.uuid4().hex[:8]}"
    save = node("CrossInitSaveEmbedding")
    assert save.validate_inputs(name=name, overwrite=False) is True  # both prompts pass the queue-time check
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = save.execute(_embedding(core, seed=20 + i, who=str(i)), name=name, overwrite=False)
        except Exception as exc:  # asserted below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], core.common.errors.EmbeddingExistsError), results
    assert str(errors[0]).startswith("name:") and "already exists" in str(errors[0])
    path = embeddings_dir / f"{name}.safetensors"
    loaded = core.embeddings.embedding_io.load_embedding(path)
    winner = int(loaded.metadata["who"])
    assert torch.equal(loaded.vectors["clip_l"], _embedding(core, seed=20 + winner).vectors["clip_l"])
    assert not [p for p in embeddings_dir.iterdir() if p.name.startswith(f".{name}.")]  # no temp left
    path.unlink()
