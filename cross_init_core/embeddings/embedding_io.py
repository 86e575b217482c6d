"""Embedding files: safe names, atomic no-clobber writes, and loaders that never unpickle objects.

Written format: safetensors with one float32 [n, width] tensor per text encoder (`clip_l`, `clip_h`,
`clip_g`) and the run's settings in `__metadata__` — what ComfyUI (`embedding:NAME`), A1111/Forge,
kohya and diffusers all load. Read formats: that, A1111 `.pt` (`string_to_param`), single-tensor
files, and the reference implementation's `learned_embeds.bin` (one 1-D tensor per token key).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..common import atomic_files
from ..common.embedding_names import CHECKPOINT_RE, DOWNLOAD_SUBFOLDER, checkpoint_name, trained_steps, validate_name
from ..common.errors import EmbeddingExistsError, EmbeddingFileError, InvalidInputError
from ..common.families import KEY_WIDTHS, WIDTH_KEYS, WIDTHS_MESSAGE
from .embedding import CrossInitEmbedding

log = logging.getLogger(__name__)

_REFERENCE_KEY_RE = re.compile(r"^(?P<stem>.*?)(?:_v)?(?P<index>\d+)>?$")


def _check_existing(final: Path, overwrite: bool) -> None:
    if final.exists() and not final.is_file():  # a folder (or device) squatting on the name: never replace it
        raise EmbeddingFileError(f"name: {final} exists and is not a file (a folder?). Choose another name.")
    if final.exists() and not overwrite:
        raise EmbeddingExistsError(f"name: {final} already exists. Choose another name, or set overwrite to true to replace it.")


def to_file_dict(embedding: CrossInitEmbedding) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in embedding.vectors.items()}
    metadata = {str(k): str(v) for k, v in embedding.metadata.items()}
    metadata.setdefault("format", "cross_init_embedding")
    return tensors, metadata


def save_embedding(embedding: CrossInitEmbedding, directory: str | os.PathLike[str], name: str, overwrite: bool = False) -> Path:
    """Writes NAME.safetensors into `directory` atomically; an existing file is kept unless `overwrite`.

    The file is written to a temp file in the same folder, then linked in place (no-clobber: fails if the
    name exists, even when another save races us) or renamed over the old file (overwrite). Where the file
    system has no hard links, the name is first reserved with an exclusive create, so racing saves still
    cannot both succeed.
    """
    from safetensors.torch import save

    stem = validate_name(name)
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    final = (folder / f"{stem}.safetensors").resolve()
    if final.parent != folder:
        raise InvalidInputError(f"name {name!r}: it would write outside {folder}.")
    _check_existing(final, overwrite)
    tensors, metadata = to_file_dict(embedding)
    tmp = atomic_files.create_temp(folder, stem)
    try:
        # the bytes go into our own temp file: newer safetensors' save_file writes a private (0600) temp
        # file of its own and renames it, which would make the embedding unreadable to other users
        atomic_files.write_synced(tmp, save(tensors, metadata=metadata))
        if overwrite:
            os.replace(tmp, final)
        else:
            try:
                atomic_files.link_new(tmp, final)
            except FileExistsError:
                raise _taken_just_now(final) from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("Saved embedding %s (%s) to %s", stem, embedding.describe(), final)
    return final


def checkpoint_names(embeddings: list[CrossInitEmbedding], name: str) -> list[tuple[CrossInitEmbedding, str]]:
    """The file names of a list of checkpoints (the trainer's checkpoints output): NAME-stepNNNN for each (its
    `steps` metadata, four digits at least) and NAME for the last; a single embedding is just NAME."""
    stem = validate_name(name)
    if len(embeddings) == 1:
        return [(embeddings[0], stem)]
    named = []
    for index, embedding in enumerate(embeddings, start=1):
        steps = trained_steps(embedding.metadata)
        if steps is None:
            raise InvalidInputError(
                f"embedding: item {index} of the {len(embeddings)} in the list has no step count (metadata steps); a list "
                "to save comes from the trainer's checkpoints output."
            )
        named.append((embedding, validate_name(checkpoint_name(stem, steps))))
    seen = [n for _e, n in named]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise InvalidInputError(f"embedding: the list holds the same step twice ({', '.join(twice)}); save each run separately.")
    return [*named, (embeddings[-1], stem)]


def save_embeddings(named: list[tuple[CrossInitEmbedding, str]], directory: str | os.PathLike[str],
                    overwrite: bool = False) -> list[Path]:
    """Saves each (embedding, name) like `save_embedding`; every name is checked first, so a taken name stops
    the save before any file is written."""
    folder = Path(directory).resolve()
    for _embedding, name in named:
        _check_existing(folder / f"{validate_name(name)}.safetensors", overwrite)
    return [save_embedding(embedding, folder, name, overwrite=overwrite) for embedding, name in named]


def best_name(name: str) -> str:
    """The file stem of a run's best checkpoint (the checkpoint report's pick): NAME-best."""
    return f"{validate_name(name)}-best"


def run_files(directory: str | os.PathLike[str], name: str) -> list[Path]:
    """The files a save under `name` could replace in `directory`: NAME.safetensors and any NAME-stepNNNN.safetensors
    (the checkpoints a run under that name writes), those that exist, NAME first."""
    stem = validate_name(name)
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = [folder / f"{n}.safetensors" for n in (stem, best_name(stem)) if (folder / f"{n}.safetensors").exists()]
    for path in sorted(folder.iterdir()):
        match = CHECKPOINT_RE.match(path.name[: -len(".safetensors")]) if path.name.endswith(".safetensors") else None
        if match and match["name"] == stem:
            found.append(path)
    return found


def taken_message(files: list[Path], name: str) -> str:
    """The error for a save whose files are taken: which file, and the two ways out."""
    stem = validate_name(name)
    more = f" (and {len(files) - 1} more of this run's names)" if len(files) > 1 else ""
    return (f"name: {files[0]} already exists{more}; a save under {stem} writes {stem} and, from a checkpoints list, "
            f"{stem}-stepNNNN and {stem}-best. Choose another name, or turn on overwrite to replace them.")


SAVE_NODE = "CrossInitSaveEmbedding"
SAVE_LORA_NODE = "CrossInitSaveLora"
SAVE_NODES = (SAVE_NODE, SAVE_LORA_NODE)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def downstream_saves(prompt: dict[str, Any], node_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(class_type, inputs) of the Save nodes (embedding or LoRA) that save what `node_id` computes, directly or
    through other nodes, under a typed name, in an API-format prompt: the files a run of that node ends in. Names
    linked from other nodes are left out (known only when they run)."""
    below, todo = {node_id}, [node_id]
    while todo:
        source = todo.pop()
        for other, node in prompt.items():
            inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
            if other not in below and any(_is_link(v) and v[0] == source for v in inputs.values()):
                below.add(other)
                todo.append(other)
    saves = []
    for other in sorted(below - {node_id}):
        inputs = prompt[other].get("inputs", {})
        if prompt[other].get("class_type") in SAVE_NODES and isinstance(inputs.get("name"), str):
            saves.append((prompt[other]["class_type"], inputs))
    return saves


# Files each Save node wrote in this process (node id -> path -> (mtime, size)). Running a graph again after its own
# save is served from ComfyUI's cache, so such files must not make the queue check refuse the graph.
_written: dict[str, dict[str, tuple[int, int]]] = {}


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def remember_written(saver: str, paths: list[Path]) -> None:
    if not saver:  # not in a graph
        return
    _written.setdefault(saver, {}).update({str(p): _stamp(p) for p in paths})


def written_by(saver: str, paths: list[Path]) -> bool:
    """Whether `saver` wrote every one of `paths` in this process and none has changed since."""
    record = _written.get(saver) if saver else None
    if not record:
        return False
    try:
        return all(record.get(str(p)) == _stamp(p) for p in paths)
    except OSError:
        return False


def _taken_just_now(final: Path) -> EmbeddingExistsError:
    return EmbeddingExistsError(
        f"name: {final} already exists (written by another save just now). Choose another name, or set overwrite."
    )


# ---------------------------------------------------------------------------------------------
# Loading


def _as_2d(tensor: Any, where: str) -> torch.Tensor:
    if not torch.is_tensor(tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise EmbeddingFileError(f"{where}: expected float vectors [n, width]; got {getattr(tensor, 'shape', type(tensor).__name__)}.")
    t = tensor.detach().float().cpu()
    return t.unsqueeze(0) if t.ndim == 1 else t


def _from_tensor_dict(data: dict[str, Any], path: Path, metadata: dict[str, str]) -> CrossInitEmbedding:
    encoder_keys = [k for k in data if k in KEY_WIDTHS]
    if encoder_keys:
        extra = sorted(set(data) - set(encoder_keys))
        if extra:
            log.warning("%s: ignoring non-embedding keys %s", path.name, extra)
        vectors = {k: _as_2d(data[k], f"{path.name} key {k}") for k in encoder_keys}
    elif "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        vectors = _keyed_by_width(_as_2d(next(iter(params.values())), f"{path.name} string_to_param"), path)
    elif "emb_params" in data:  # A1111 safetensors
        vectors = _keyed_by_width(_as_2d(data["emb_params"], f"{path.name} emb_params"), path)
    elif data and all(torch.is_tensor(v) and v.ndim == 1 for v in data.values()):
        vectors = _keyed_by_width(_stack_reference_tokens(data, path), path)  # reference learned_embeds.bin
    elif len(data) == 1:
        vectors = _keyed_by_width(_as_2d(next(iter(data.values())), path.name), path)
    else:
        raise EmbeddingFileError(
            f"{path.name}: no embedding found (keys {sorted(data)[:8]}); expected clip_l / clip_h / clip_g tensors."
        )
    for key, v in vectors.items():
        if key in KEY_WIDTHS and v.shape[1] != KEY_WIDTHS[key]:
            raise EmbeddingFileError(f"{path.name}: key {key} is {v.shape[1]} wide, but {key} vectors are {KEY_WIDTHS[key]} wide.")
        if not torch.isfinite(v).all():
            raise EmbeddingFileError(f"{path.name}: key {key} holds NaN or infinite values.")
    try:
        return CrossInitEmbedding(vectors=vectors, metadata=dict(metadata))
    except InvalidInputError as exc:
        raise EmbeddingFileError(f"{path.name}: {exc}") from None


def _stack_reference_tokens(data: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    """`{'<name>_v0': [dim], '<name>_v1': [dim]}` -> [n, dim] in token order."""
    def order(key: str) -> tuple[int, str]:
        match = _REFERENCE_KEY_RE.match(key)
        return (int(match.group("index")), key) if match else (0, key)

    keys = sorted(data, key=order)
    widths = {data[k].shape[0] for k in keys}
    if len(widths) != 1:
        raise EmbeddingFileError(f"{path.name}: token vectors have different widths {sorted(widths)}.")
    return torch.stack([data[k].detach().float().cpu() for k in keys])


def _keyed_by_width(vectors: torch.Tensor, path: Path) -> dict[str, torch.Tensor]:
    width = int(vectors.shape[1])
    if width not in WIDTH_KEYS:
        raise EmbeddingFileError(f"{path.name}: vectors are {width} wide; {WIDTHS_MESSAGE}.")
    return {WIDTH_KEYS[width]: vectors}


def load_embedding(path: str | os.PathLike[str]) -> CrossInitEmbedding:
    """Reads an embedding file; pickled files only through `torch.load(weights_only=True)`."""
    p = Path(path)
    if not p.is_file():
        raise EmbeddingFileError(f"{p}: no such file.")
    metadata: dict[str, str] = {}
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                data = {k: handle.get_tensor(k) for k in handle.keys()}
        else:
            data = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # every parser failure becomes one clear message
        first_line = next(iter(str(exc).splitlines()), "")[:200]  # some parsers raise with an empty message
        raise EmbeddingFileError(
            f"{p.name}: cannot be read as an embedding ({type(exc).__name__}: {first_line}). "
            "The file may be truncated, corrupt, or contain pickled code, which is never executed."
        ) from None
    if torch.is_tensor(data):
        data = {"embedding": data}
    if not isinstance(data, dict):
        raise EmbeddingFileError(f"{p.name}: expected a dict of tensors; got {type(data).__name__}.")
    embedding = _from_tensor_dict(data, p, metadata)
    embedding.metadata.setdefault("source_file", p.name)
    return embedding


def copy_for_download(saved: str | os.PathLike[str], output_dir: str | os.PathLike[str],
                      subfolder: str = DOWNLOAD_SUBFOLDER) -> dict[str, Any]:
    """Copies a saved file (an embedding; Save LoRA's LoRA, into another `subfolder`) under output/`subfolder`/, never
    replacing a file there (when the name is taken, by an earlier run's copy or anyone's file, the copy is
    NAME-xxxxxxxx.safetensors).

    ComfyUI's /view serves only its output/input/temp folders, so a client of the HTTP API (the batch
    runner) fetches the trained file from there. Returns the entry the save node reports in its UI result:
    file name, subfolder, type "output", size and sha256 of the exact bytes, so the client can check them.
    """
    import hashlib

    source = Path(saved)
    data = source.read_bytes()
    copy = atomic_files.write_new(Path(output_dir) / subfolder, source.stem, source.suffix, data)
    return {"filename": copy.name, "subfolder": subfolder, "type": "output", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}
