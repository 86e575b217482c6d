"""Embedding files: names, atomic no-clobber saves, safe loading, and what other tools read from our files.

Every test builds its own files (no shared data): the reference `learned_embeds.bin` format is
`{"<id>_v0": tensor[1024], "<id>_v1": tensor[1024]}` (as in the reference implementation's real files).
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shlex
import struct
import threading
import unicodedata
import uuid
from pathlib import Path
from typing import ClassVar

import pytest
import torch

WIDTHS = {"sd1": {"clip_l": 768}, "sd2": {"clip_h": 1024}, "sdxl": {"clip_l": 768, "clip_g": 1280}}


# ---------------------------------------------------------------------------------------------
# helpers


def _vectors(widths: dict[str, int], n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, w, generator=gen) for k, w in widths.items()}


def _embedding(core, vectors: dict[str, torch.Tensor], **metadata: str):
    return core.embeddings.embedding.CrossInitEmbedding(vectors=vectors, metadata=dict(metadata))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns (so -0.0 != 0.0 and NaN payloads would count)."""
    return t.detach().to(torch.float32).contiguous().view(torch.int32)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# 1. Save


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_save_writes_safetensors_with_exactly_the_encoder_keys(core, tmp_path: Path, family: str) -> None:
    vectors = _vectors(WIDTHS[family], n=3, seed=1)
    emb = _embedding(core, vectors, base_model=family, steps="250", init="cross")
    path = core.embeddings.embedding_io.save_embedding(emb, tmp_path, "my_face")

    assert path == (tmp_path / "my_face.safetensors").resolve()
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 LE header length, then a JSON header
    assert raw[8:9] == b"{" and 8 + header_len <= len(raw)
    tensors, metadata = _read_safetensors(path)
    assert sorted(tensors) == sorted(WIDTHS[family])
    for key, width in WIDTHS[family].items():
        assert tensors[key].dtype == torch.float32
        assert tuple(tensors[key].shape) == (3, width)
        assert torch.equal(_bits(tensors[key]), _bits(vectors[key]))
    assert metadata == {"base_model": family, "steps": "250", "init": "cross", "format": "cross_init_embedding"}
    assert _listing(tmp_path) == ["my_face.safetensors"]  # no temp file left


def test_save_converts_other_dtypes_and_strided_views_to_float32(core, tmp_path: Path) -> None:
    base = torch.randn(768, 2, dtype=torch.float64)
    view = base.t()  # [2, 768], not contiguous
    assert not view.is_contiguous()
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, {"clip_l": view}), tmp_path, "strided")
    tensors, _ = _read_safetensors(path)
    assert tensors["clip_l"].dtype == torch.float32
    assert torch.equal(tensors["clip_l"], view.float())


BAD_NAMES = {  # name -> a fragment the message must hold (what is wrong)
    "a/b": "plain file name", "../evil": "plain file name", "..": "plain file name", "a..b": "plain file name",
    "a\\b": "plain file name", "/tmp/abs_name": "plain file name", "C:evil": "plain file name",
    "my face": "spaces", "tab\tname": "spaces", "": "empty", "   ": "empty", "x" * 101: "101 characters",
    "CON": "reserved", "con": "reserved", "nul": "reserved", "Nul.txt": "reserved", "COM1.x": "reserved",
    "com9": "reserved", "LPT9": "reserved", "lpt1.backup": "reserved", "COM0": "reserved", "COM\u00b9": "reserved",
    ".hidden": "letters, digits", "trailing.": "letters, digits", "semi;colon": "letters, digits", "star*": "letters, digits",
    "q?": "letters, digits", "\u540d" * 70: "bytes",  # 70 CJK letters = 210 UTF-8 bytes
}


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_invalid_names_are_rejected_naming_the_input_and_write_nothing(core, tmp_path: Path, name: str) -> None:
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "keep.safetensors").write_bytes(b"keep")
    before_folder, before_parent = _tree(folder), _tree(tmp_path)
    emb = _embedding(core, _vectors({"clip_l": 768}))
    with pytest.raises(core.common.errors.InvalidInputError) as info:
        core.embeddings.embedding_io.save_embedding(emb, folder, name)
    assert str(info.value).startswith("name")
    assert BAD_NAMES[name] in str(info.value)
    assert _tree(folder) == before_folder
    assert _tree(tmp_path) == before_parent
    with pytest.raises(core.common.errors.InvalidInputError):
        core.embeddings.embedding_io.validate_name(name)


def test_non_text_name_is_rejected(core) -> None:
    with pytest.raises(core.common.errors.InvalidInputError, match=r"^name"):
        core.embeddings.embedding_io.validate_name(None)  # type: ignore[arg-type]


def test_name_length_limit_is_100_characters(core, tmp_path: Path) -> None:
    emb = _embedding(core, _vectors({"clip_l": 768}))
    path = core.embeddings.embedding_io.save_embedding(emb, tmp_path, "a" * 100)
    assert path.name == "a" * 100 + ".safetensors"
    with pytest.raises(core.common.errors.InvalidInputError, match="101 characters"):
        core.embeddings.embedding_io.save_embedding(emb, tmp_path, "b" * 101)
    assert _listing(tmp_path) == ["a" * 100 + ".safetensors"]


def test_long_non_latin_name_is_rejected_cleanly_not_with_an_os_error(core, tmp_path: Path) -> None:
    # 100 CJK letters pass the 100-character rule but are 300 bytes: over the 255-byte file-name limit
    name = "\u540d" * 100
    with pytest.raises(core.common.errors.InvalidInputError, match="bytes"):
        core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, name)
    assert _listing(tmp_path) == []
    # 60 of them (180 bytes) are fine
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, "\u540d" * 60)
    assert path.name == "\u540d" * 60 + ".safetensors"


def test_unicode_letters_are_accepted_and_stored_in_nfc(core, tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "visage_\u00e9")
    assert decomposed != "visage_\u00e9"
    vectors = _vectors({"clip_l": 768}, seed=3)
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, vectors), tmp_path, decomposed)
    assert path.name == "visage_\u00e9.safetensors"
    assert _listing(tmp_path) == ["visage_\u00e9.safetensors"]
    assert core.embeddings.embedding_io.validate_name(decomposed) == "visage_\u00e9"
    # the NFC name is now taken: the decomposed spelling may not create a second, look-alike file
    with pytest.raises(core.common.errors.EmbeddingExistsError):
        core.embeddings.embedding_io.save_embedding(_embedding(core, vectors), tmp_path, "visage_\u00e9")
    assert torch.equal(core.embeddings.embedding_io.load_embedding(path).vectors["clip_l"], vectors["clip_l"])


def test_suffix_and_surrounding_whitespace_are_stripped(core, tmp_path: Path) -> None:
    assert core.embeddings.embedding_io.validate_name("  my_face.safetensors ") == "my_face"
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, "my_face.safetensors")
    assert _listing(tmp_path) == ["my_face.safetensors"] and path.name == "my_face.safetensors"


def test_symlinked_name_pointing_outside_is_refused(core, tmp_path: Path) -> None:
    folder, outside = tmp_path / "embeddings", tmp_path / "outside.safetensors"
    folder.mkdir()
    outside.write_bytes(b"outside")
    (folder / "face.safetensors").symlink_to(outside)
    with pytest.raises(core.common.errors.CrossInitError):
        core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), folder, "face", overwrite=True)
    assert outside.read_bytes() == b"outside"


def test_existing_file_is_never_overwritten_without_overwrite(core, tmp_path: Path) -> None:
    old = _vectors({"clip_l": 768}, seed=1)
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, old), tmp_path, "face")
    before = path.read_bytes()
    with pytest.raises(core.common.errors.EmbeddingExistsError) as info:
        core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768}, seed=2)), tmp_path, "face")
    assert isinstance(info.value, FileExistsError)
    assert str(info.value).startswith("name")
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["face.safetensors"]


def test_overwrite_replaces_the_content(core, tmp_path: Path) -> None:
    core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768}, seed=1), run="old"), tmp_path, "face")
    new = _vectors({"clip_l": 768}, n=3, seed=2)
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, new, run="new"), tmp_path, "face", overwrite=True)
    tensors, metadata = _read_safetensors(path)
    assert torch.equal(tensors["clip_l"], new["clip_l"]) and metadata["run"] == "new"
    assert _listing(tmp_path) == ["face.safetensors"]


def test_saved_file_gets_the_usual_permissions_not_private_temp_ones(core, tmp_path: Path) -> None:
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, "face")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what any ordinary file write gets under this process's umask
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def _fill_then_fail(path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(b"\x00" * 100)
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("crash", ["write", "replace"])
def test_crash_while_overwriting_keeps_old_file_and_leaves_no_temp(core, tmp_path: Path, monkeypatch, crash: str) -> None:
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768}, seed=1)), tmp_path, "face")
    before = path.read_bytes()
    if crash == "write":
        monkeypatch.setattr(core.common.atomic_files, "write_synced", lambda path, data: _fill_then_fail(path))
    else:
        def failing_replace(src, dst):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768}, seed=2)), tmp_path, "face", overwrite=True)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["face.safetensors"]


def test_crash_while_linking_a_new_file_leaves_nothing(core, tmp_path: Path, monkeypatch) -> None:
    def interrupted_link(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", interrupted_link)
    with pytest.raises(KeyboardInterrupt):
        core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, "face")
    assert _listing(tmp_path) == []


def _race(core, folder: Path, name: str, hook=None) -> tuple[list[object], list[dict[str, torch.Tensor]]]:
    contenders = [_vectors({"clip_l": 768}, seed=10 + i) for i in range(2)]
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = core.embeddings.embedding_io.save_embedding(_embedding(core, contenders[i], who=str(i)), folder, name)
        except Exception as exc:  # collected and asserted below
            results[i] = exc
        finally:
            if hook is not None:
                hook()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results, contenders


def _assert_one_winner(core, folder: Path, name: str, results: list[object], contenders) -> None:
    winners = [i for i, r in enumerate(results) if isinstance(r, Path)]
    losers = [i for i, r in enumerate(results) if isinstance(r, core.common.errors.EmbeddingExistsError)]
    assert len(winners) == 1 and len(losers) == 1, results
    tensors, metadata = _read_safetensors(folder / f"{name}.safetensors")
    assert metadata["who"] == str(winners[0])
    assert torch.equal(tensors["clip_l"], contenders[winners[0]]["clip_l"])
    loaded = core.embeddings.embedding_io.load_embedding(folder / f"{name}.safetensors")
    assert torch.equal(loaded.vectors["clip_l"], contenders[winners[0]]["clip_l"])
    assert _listing(folder) == [f"{name}.safetensors"]


def test_racing_saves_of_one_name_exactly_one_wins(core, tmp_path: Path) -> None:
    for round_ in range(8):
        folder = tmp_path / f"round{round_}"
        results, contenders = _race(core, folder, "face")
        _assert_one_winner(core, folder, "face", results, contenders)


def test_racing_saves_without_hard_links_exactly_one_wins(core, tmp_path: Path, monkeypatch) -> None:
    """File systems without hard links (exFAT, some network shares): both racers get past every check
    before either renames its file in place; only an atomic reservation stops the second one."""

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    real_replace = os.replace
    cond = threading.Condition()
    state = {"replacing": 0, "done": 0}

    def gated_replace(src, dst):
        with cond:
            state["replacing"] += 1
            cond.notify_all()
            cond.wait_for(lambda: state["replacing"] >= 2 or state["done"] >= 1, timeout=10)
        return real_replace(src, dst)

    def finished() -> None:
        with cond:
            state["done"] += 1
            cond.notify_all()

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", gated_replace)
    results, contenders = _race(core, tmp_path, "face", hook=finished)
    _assert_one_winner(core, tmp_path, "face", results, contenders)


def test_failed_rename_without_hard_links_leaves_no_placeholder(core, tmp_path: Path, monkeypatch) -> None:
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="I/O error"):
        core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, "face")
    assert _listing(tmp_path) == []  # neither the temp file nor an empty face.safetensors that would block the name
    monkeypatch.undo()
    vectors = _vectors({"clip_l": 768}, seed=4)
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, vectors), tmp_path, "face")
    assert torch.equal(core.embeddings.embedding_io.load_embedding(path).vectors["clip_l"], vectors["clip_l"])


# ---------------------------------------------------------------------------------------------
# 2. Load


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_round_trip_is_bit_identical_with_metadata(core, tmp_path: Path, family: str) -> None:
    vectors = _vectors(WIDTHS[family], n=4, seed=5)
    for v in vectors.values():
        v[0, :4] = torch.tensor([-0.0, 1e-45, 3.0e38, -1.5])  # signed zero, a denormal, a huge value
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, vectors, steps="300", lr="0.005"), tmp_path, "rt")
    loaded = core.embeddings.embedding_io.load_embedding(path)
    assert sorted(loaded.vectors) == sorted(vectors)
    for key in vectors:
        assert loaded.vectors[key].dtype == torch.float32
        assert torch.equal(_bits(loaded.vectors[key]), _bits(vectors[key]))
    assert loaded.metadata == {"steps": "300", "lr": "0.005", "format": "cross_init_embedding", "source_file": "rt.safetensors"}


@pytest.mark.parametrize("n", [2, 3, 12])
@pytest.mark.parametrize("key_style", ["{id}_v{i}", "<{id}>_v{i}"])
def test_reference_learned_embeds_bin_loads_in_token_order(core, tmp_path: Path, n: int, key_style: str) -> None:
    tokens = [torch.randn(1024, generator=torch.Generator().manual_seed(100 + i)) for i in range(n)]
    items = [(key_style.format(id=28017, i=i), t) for i, t in enumerate(tokens)]
    random.Random(n).shuffle(items)
    if [k for k, _ in items] == sorted(k for k, _ in items):
        items.reverse()
    path = tmp_path / "28017-learned_embeds.bin"
    torch.save(dict(items), path)
    loaded = core.embeddings.embedding_io.load_embedding(path)
    assert list(loaded.vectors) == ["clip_h"]
    assert tuple(loaded.vectors["clip_h"].shape) == (n, 1024)
    for i, t in enumerate(tokens):
        assert torch.equal(loaded.vectors["clip_h"][i], t), f"row {i} is not token v{i}"
    assert loaded.metadata["source_file"] == "28017-learned_embeds.bin"


def test_a1111_pt_loads_with_weights_only(core, tmp_path: Path) -> None:
    vec = torch.nn.Parameter(torch.randn(3, 768))
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vec},
        "name": "x",
        "step": 1500,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    path = tmp_path / "x.pt"
    torch.save(data, path)
    torch.load(path, weights_only=True)  # the format itself (ints, strings, a Parameter) passes the safe loader
    loaded = core.embeddings.embedding_io.load_embedding(path)
    assert list(loaded.vectors) == ["clip_l"]
    assert torch.equal(loaded.vectors["clip_l"], vec.detach())
    assert not loaded.vectors["clip_l"].requires_grad


@pytest.mark.parametrize(
    ("suffix", "tensor", "key"),
    [(".pt", torch.randn(3, 1024), "clip_h"), (".bin", torch.randn(768), "clip_l"), (".pt", torch.randn(2, 1280), "clip_g")],
)
def test_single_tensor_file_is_keyed_by_width(core, tmp_path: Path, suffix: str, tensor: torch.Tensor, key: str) -> None:
    path = tmp_path / f"single{suffix}"
    torch.save(tensor, path)
    loaded = core.embeddings.embedding_io.load_embedding(path)
    assert list(loaded.vectors) == [key]
    assert torch.equal(loaded.vectors[key], tensor.reshape(-1, tensor.shape[-1]))


def test_a1111_safetensors_emb_params_and_single_unknown_key(core, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    t = torch.randn(2, 1024)
    save_file({"emb_params": t}, str(tmp_path / "a.safetensors"))
    assert torch.equal(core.embeddings.embedding_io.load_embedding(tmp_path / "a.safetensors").vectors["clip_h"], t)
    save_file({"<face>": t}, str(tmp_path / "b.safetensors"))  # diffusers' own single-token format
    assert torch.equal(core.embeddings.embedding_io.load_embedding(tmp_path / "b.safetensors").vectors["clip_h"], t)


def test_single_tensor_of_unknown_width_is_refused(core, tmp_path: Path) -> None:
    torch.save(torch.randn(2, 512), tmp_path / "odd.pt")
    with pytest.raises(core.common.errors.EmbeddingFileError, match=r"odd\.pt.*512"):
        core.embeddings.embedding_io.load_embedding(tmp_path / "odd.pt")


@pytest.mark.parametrize("kind", ["truncated", "random_safetensors", "random_pt", "random_bin", "empty_bin"])
def test_corrupt_files_raise_embedding_file_error_naming_the_file(core, tmp_path: Path, kind: str) -> None:
    if kind == "truncated":
        good = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors({"clip_l": 768})), tmp_path, "good")
        raw = good.read_bytes()
        path = tmp_path / "cut_face.safetensors"
        path.write_bytes(raw[: len(raw) // 2])
    else:
        suffix = {"random_safetensors": ".safetensors", "random_pt": ".pt", "random_bin": ".bin", "empty_bin": ".bin"}[kind]
        path = tmp_path / f"noise_face{suffix}"
        path.write_bytes(b"" if kind == "empty_bin" else random.Random(7).randbytes(4096))
    with pytest.raises(core.common.errors.EmbeddingFileError) as info:
        core.embeddings.embedding_io.load_embedding(path)
    assert path.name in str(info.value)


def test_missing_file_raises_embedding_file_error(core, tmp_path: Path) -> None:
    with pytest.raises(core.common.errors.EmbeddingFileError, match="no such file"):
        core.embeddings.embedding_io.load_embedding(tmp_path / "absent.safetensors")


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.marker)}",))


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_malicious_pickle_is_never_executed(core, tmp_path: Path, suffix: str, writer: str) -> None:
    evil = _Evil()
    evil.marker = str(tmp_path / "MARKER")
    payload = {"clip_l": torch.randn(2, 768), "string_to_param": {"*": evil}}
    path = tmp_path / f"evil{suffix}"
    if writer == "torch_save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(core.common.errors.EmbeddingFileError) as info:
        core.embeddings.embedding_io.load_embedding(path)
    assert path.name in str(info.value)
    assert not (tmp_path / "MARKER").exists()
    # the payload is live: an unsafe unpickle of the same bytes does run it
    if writer == "plain_pickle":
        probe = _Evil()
        probe.marker = str(tmp_path / "PROBE")
        pickle.loads(pickle.dumps(probe))
        assert (tmp_path / "PROBE").exists()


def test_extra_keys_are_ignored(core, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    t = torch.randn(2, 768)
    save_file({"clip_l": t, "junk": torch.randn(5), "clip_x": torch.randn(2, 7)}, str(tmp_path / "extra.safetensors"))
    loaded = core.embeddings.embedding_io.load_embedding(tmp_path / "extra.safetensors")
    assert list(loaded.vectors) == ["clip_l"]
    assert torch.equal(loaded.vectors["clip_l"], t)


@pytest.mark.parametrize(("key", "width", "expected"), [("clip_l", 1024, 768), ("clip_h", 768, 1024), ("clip_g", 64, 1280)])
def test_wrong_width_for_key_is_a_clear_error(core, tmp_path: Path, key: str, width: int, expected: int) -> None:
    from safetensors.torch import save_file

    save_file({key: torch.randn(2, width)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(core.common.errors.EmbeddingFileError) as info:
        core.embeddings.embedding_io.load_embedding(tmp_path / "wide.safetensors")
    message = str(info.value)
    assert "wide.safetensors" in message and key in message and str(width) in message and str(expected) in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_a_clear_error(core, tmp_path: Path, bad: float) -> None:
    from safetensors.torch import save_file

    t = torch.randn(2, 768)
    t[1, 17] = bad
    save_file({"clip_l": t}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(core.common.errors.EmbeddingFileError, match=r"nan\.safetensors.*NaN or infinite"):
        core.embeddings.embedding_io.load_embedding(tmp_path / "nan.safetensors")


def test_mismatched_token_counts_are_a_file_error(core, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(3, 1280)}, str(tmp_path / "mix.safetensors"))
    with pytest.raises(core.common.errors.EmbeddingFileError, match=r"mix\.safetensors"):
        core.embeddings.embedding_io.load_embedding(tmp_path / "mix.safetensors")


def test_integer_tensors_are_refused(core, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"clip_l": torch.ones(2, 768, dtype=torch.int32)}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(core.common.errors.EmbeddingFileError, match=r"ints\.safetensors"):
        core.embeddings.embedding_io.load_embedding(tmp_path / "ints.safetensors")


# ---------------------------------------------------------------------------------------------
# 3. Compatibility with ComfyUI, diffusers and A1111


@pytest.fixture(scope="module")
def host_clips(embeddings_dir: Path):
    """Tiny CLIPs whose tokenizers look in ComfyUI's embeddings folder (for `embedding:NAME`)."""
    import tiny_models

    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            with torch.inference_mode():
                cache[kind] = tiny_models.build_clip(kind, embedding_directory=str(embeddings_dir))
        return cache[kind]

    return get


@pytest.mark.parametrize(("family", "key"), [("sd1", "clip_l"), ("sd2", "clip_h")])
def test_comfyui_embedding_syntax_encodes_like_encode_prompt(core, embeddings_dir: Path, host_clips, family: str, key: str) -> None:
    import comfy.sd1_clip

    clip = host_clips(family)
    width = core.host.encoder_slots(clip)[0].width
    vectors = {key: torch.randn(2, width, generator=torch.Generator().manual_seed(42)) * 0.5}
    emb = _embedding(core, vectors)
    name = _unique(f"xinit_{family}")
    path = core.embeddings.embedding_io.save_embedding(emb, embeddings_dir, name)
    try:
        # ComfyUI's own loader returns exactly our tensor
        loaded = comfy.sd1_clip.load_embed(name, [str(embeddings_dir)], width, key)
        assert loaded is not None and torch.equal(loaded, vectors[key])

        host_cond, host_pooled = clip.encode_from_tokens(clip.tokenize(f"a photo of embedding:{name} person"), return_pooled=True)
        ours = core.method.personalized_encode.encode_prompt(clip, emb, "a photo of <face> person")
        assert torch.allclose(ours[0][0], host_cond, atol=1e-6, rtol=0)
        assert torch.allclose(ours[0][1]["pooled_output"], host_pooled, atol=1e-6, rtol=0)
        plain_cond, _ = clip.encode_from_tokens(clip.tokenize("a photo of person"), return_pooled=True)
        assert (host_cond - plain_cond).abs().max() > 1e-3
    finally:
        path.unlink()


def test_comfyui_sdxl_takes_each_encoder_from_its_own_key(core, embeddings_dir: Path, host_clips) -> None:
    import comfy.sd1_clip

    clip = host_clips("sdxl")
    widths = {s.key: s.width for s in core.host.encoder_slots(clip)}
    assert widths == {"clip_l": 64, "clip_g": 96}
    vectors = _vectors(widths, n=2, seed=9)
    emb = _embedding(core, vectors)
    name = _unique("xinit_sdxl")
    path = core.embeddings.embedding_io.save_embedding(emb, embeddings_dir, name)
    try:
        for key, width in widths.items():
            assert torch.equal(comfy.sd1_clip.load_embed(name, [str(embeddings_dir)], width, key), vectors[key])
        host_cond, host_pooled = clip.encode_from_tokens(clip.tokenize(f"a photo of embedding:{name} person"), return_pooled=True)
        ours = core.method.personalized_encode.encode_prompt(clip, emb, "a photo of <face> person")
        assert torch.allclose(ours[0][0], host_cond, atol=1e-6, rtol=0)
        assert torch.allclose(ours[0][1]["pooled_output"], host_pooled, atol=1e-6, rtol=0)
    finally:
        path.unlink()


def test_diffusers_load_textual_inversion_reads_our_file(core, tmp_path: Path) -> None:
    import transformers
    from diffusers.loaders import TextualInversionLoaderMixin

    vectors = {"clip_l": torch.randn(2, 768, generator=torch.Generator().manual_seed(11))}
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, vectors), tmp_path, "face")

    tokenizer = transformers.CLIPTokenizer.from_pretrained(os.path.join(os.environ["COMFYUI_PATH"], "comfy", "sd1_tokenizer"))
    config = transformers.CLIPTextConfig(
        hidden_size=768, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=32,
        vocab_size=len(tokenizer), max_position_embeddings=77,
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(config)

    class Loader(TextualInversionLoaderMixin):  # the mixin needs only these two pipeline attributes
        hf_device_map = None
        components: ClassVar[dict] = {}

    vocab_before = len(tokenizer)
    Loader().load_textual_inversion(str(path), token="<face>", tokenizer=tokenizer, text_encoder=text_encoder)
    ids = tokenizer.convert_tokens_to_ids(["<face>", "<face>_1"])
    assert ids == [vocab_before, vocab_before + 1]
    table = text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(table[ids[0]], vectors["clip_l"][0])
    assert torch.equal(table[ids[1]], vectors["clip_l"][1])
    # the prompt expands to both vectors, in order
    assert Loader().maybe_convert_prompt("a photo of <face> person", tokenizer) == "a photo of <face> <face>_1 person"


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a1111_compatible_single_key_layout(core, tmp_path: Path, family: str) -> None:
    (key, width), = WIDTHS[family].items()
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors(WIDTHS[family], n=3)), tmp_path, "face")
    tensors, _ = _read_safetensors(path)
    assert list(tensors) == [key]
    assert tuple(tensors[key].shape) == (3, width) and tensors[key].dtype == torch.float32


def test_sdxl_file_holds_clip_l_and_clip_g_only(core, tmp_path: Path) -> None:
    path = core.embeddings.embedding_io.save_embedding(_embedding(core, _vectors(WIDTHS["sdxl"], n=2)), tmp_path, "face")
    tensors, _ = _read_safetensors(path)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
