"""Pivotal-tuning files: the LoRA with its token bundled, the token on its own, and bundles of other trainers.

Written (`save_pivotal`):
- `models/loras/NAME.safetensors`: the LoRA in the kohya/A1111 layout (`lora_unet_*.lora_down.weight`,
  `.lora_up.weight`, `.alpha`), the token as A1111's LoRA loader reads a bundled embedding
  (`extensions-builtin/Lora/networks.py`: keys `bundle_emb.NAME.<rest>` grouped per NAME, `string_to_param.<k>`
  as A1111's .pt dict, other rests as keys of a dict; then `textual_inversion.create_embedding_from_data`):
  SD 1.x/2.x `bundle_emb.NAME.string_to_param.*` [n, width] (A1111's own .pt form), SDXL `bundle_emb.NAME.clip_l`
  and `bundle_emb.NAME.clip_g` (its SDXL branch, the form OneTrainer writes); metadata: the `ss_` keys LoRA
  browsers show (kohya sd-scripts' names) and the Cross-Init ones.
- `models/embeddings/NAME.safetensors`: the token alone (embedding_io's format), for `embedding:NAME` in stock
  ComfyUI and for diffusers' `load_textual_inversion`.
diffusers' `load_lora_weights` converts a kohya file only when every key is a LoRA key, so `bundle` off writes the
LoRA file without the token for diffusers users (the token is then only in the embeddings file).

Read (`read_lora_file`, `bundled_embedding`): safetensors only (a pickle is refused, never unpickled); bundles by
the keys above, also `bundle_emb.NAME.emb_params` (A1111's safetensors form) and a single tensor per NAME.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..common import atomic_files
from ..common.embedding_names import checkpoint_name, trained_steps, validate_bundle_name, validate_name
from ..common.errors import EmbeddingExistsError, EmbeddingFileError, InvalidInputError
from ..common.families import FAMILIES, KEY_WIDTHS, SDXL, WIDTH_KEYS, WIDTHS_MESSAGE, EncoderSlot, family_of
from ..embeddings import embedding_io
from ..embeddings.embedding import CrossInitEmbedding, check_matches_slots
from ..embeddings.embedding_io import to_file_dict
from .weights import LoraModel, module_shapes

log = logging.getLogger(__name__)

BUNDLE_PREFIX = "bundle_emb."
SUFFIX = ".safetensors"
# kohya's ss_base_model_version per family tag and prediction
_SS_BASE = {("sd1", "eps"): "sd_v1", ("sd2", "eps"): "sd_v2", ("sd2", "v"): "sd_v2_768_v", ("sdxl", "eps"): "sdxl_base_v1-0"}


# ---------------------------------------------------------------------------------------------
# Writing


def bundle_tensors(embedding: CrossInitEmbedding, name: str) -> dict[str, torch.Tensor]:
    """The token as A1111 reads it from a LoRA file: SD 1.x/2.x as `string_to_param.*`, SDXL as clip_l + clip_g."""
    family = family_of(embedding.vectors)
    if family is None:
        raise InvalidInputError(f"embedding: it holds {embedding.describe()}, not the encoders of one SD family; "
                                "connect the embedding the LoRA was trained around.")
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in embedding.vectors.items()}
    if family is SDXL:
        return {f"{BUNDLE_PREFIX}{name}.{key}": tensors[key] for key in family.keys}
    return {f"{BUNDLE_PREFIX}{name}.string_to_param.*": tensors[family.keys[0]]}


def check_token_fits_lora(embedding: CrossInitEmbedding | None, lora: LoraModel) -> None:
    """Refuses a token of another model family than the LoRA's (its `base_model` metadata, when it records one): the
    file would bundle a token its model cannot read, and the token's own file would name the wrong LoRA."""
    if embedding is None:
        return
    token_family = family_of(embedding.vectors)
    lora_tag = str(lora.metadata.get("base_model", "")).partition("-")[0]
    lora_family = next((f for f in FAMILIES if f.tag == lora_tag), None)
    if token_family is not None and lora_family is not None and token_family is not lora_family:
        raise InvalidInputError(f"embedding: it is a token for {token_family.name} ({embedding.describe()}), but the LoRA "
                                f"was trained on {lora_family.name}; connect the token the LoRA was trained around, or "
                                "leave embedding empty to bundle the LoRA's own token.")


def ss_metadata(lora: LoraModel, name: str) -> dict[str, str]:
    """The kohya `ss_` keys a LoRA browser shows (rank, alpha, base model, steps, ...), from the run's metadata."""
    meta = lora.metadata
    shapes = module_shapes(lora)
    ranks = {shape[0] for shape in shapes.values()}
    alphas = {shape[3] for shape in shapes.values()}
    family, _, prediction = meta.get("base_model", "unknown-eps").partition("-")
    resolution = meta.get("lora_resolution", "512")
    images = meta.get("num_images", "0")
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "dynamic",
        "ss_network_alpha": f"{alphas.pop():g}" if len(alphas) == 1 else "dynamic",
        "ss_base_model_version": _SS_BASE.get((family, prediction), family),
        "ss_v2": str(family == "sd2"),
        "ss_v_parameterization": str(prediction == "v"),
        "ss_network_train_unet_only": "True",
        "ss_steps": meta.get("steps", ""),
        "ss_max_train_steps": meta.get("lora_steps", meta.get("steps", "")),
        "ss_learning_rate": meta.get("lora_learning_rate", ""),
        "ss_unet_lr": meta.get("lora_learning_rate", ""),
        "ss_text_encoder_lr": "0",
        "ss_batch_size_per_device": meta.get("lora_batch_size", ""),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_seed": meta.get("lora_seed", ""),
        "ss_num_train_images": images,
        "ss_output_name": name,
        "ss_tag_frequency": json.dumps({"cross_init": {name: int(images) if images.isdigit() else 0}}),
        "ss_training_comment": f"Cross-Init pivotal tuning: the LoRA was trained around the token {name} "
                               f"(bundled; in ComfyUI embedding:{name}).",
    }


def lora_file_tensors(lora: LoraModel, embedding: CrossInitEmbedding | None, name: str,
                      bundle: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The LoRA file's tensors (the LoRA, and the bundled token when `bundle`) and its metadata."""
    module_shapes(lora)  # a damaged LoRA is refused before anything is written
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in lora.items() if not k.startswith(BUNDLE_PREFIX)}
    metadata = {**{k: str(v) for k, v in lora.metadata.items()}, **ss_metadata(lora, name)}
    metadata["format"] = "cross_init_pivotal_lora"
    if bundle and embedding is not None:
        tensors.update(bundle_tensors(embedding, name))
        metadata["cross_init_bundled_token"] = name
    return tensors, metadata


def _embedding_file(embedding: CrossInitEmbedding, lora: LoraModel, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, metadata = to_file_dict(embedding)
    metadata["lora_file"] = name + SUFFIX  # the LoRA trained around this token
    metadata.setdefault("base_model", lora.metadata.get("base_model", ""))
    return tensors, metadata


@dataclass(frozen=True)
class PivotalFiles:
    loras: list[Path]
    embeddings: list[Path]


def pivotal_names(loras: list[LoraModel], name: str) -> list[tuple[LoraModel, str]]:
    """NAME for one LoRA; for a list (the stage's checkpoints), NAME-stepNNNN per item (its `steps`) and NAME for the last."""
    stem = validate_name(name)
    if len(loras) == 1:
        return [(loras[0], stem)]
    named = []
    for index, lora in enumerate(loras, start=1):
        steps = trained_steps(getattr(lora, "metadata", {}))
        if steps is None:
            raise InvalidInputError(f"lora: item {index} of the {len(loras)} in the list has no step count (metadata "
                                    "steps); a list to save comes from the Pivotal LoRA node's checkpoints output.")
        named.append((lora, validate_name(checkpoint_name(stem, steps))))
    seen = [n for _l, n in named]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise InvalidInputError(f"lora: the list holds the same step twice ({', '.join(twice)}); save each run separately.")
    return [*named, (loras[-1], stem)]


def _check_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_file():
        raise EmbeddingFileError(f"name: {path} exists and is not a file (a folder?). Choose another name.")
    if path.exists() and not overwrite:
        raise EmbeddingExistsError(f"name: {path} already exists. Choose another name, or set overwrite to true to replace it.")


def taken_files(name: str, loras_dir: str | os.PathLike[str] | None,
                embeddings_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The files a save under `name` could replace: NAME and NAME-stepNNNN in the loras folder and, when Save LoRA
    also writes the token, in the embeddings folder; those that exist."""
    return [path for folder in (loras_dir, embeddings_dir) if folder is not None
            for path in embedding_io.run_files(folder, name)]


def taken_message(files: list[Path], name: str) -> str:
    """The error for a LoRA save whose files are taken: which file, and the two ways out."""
    stem = validate_name(name)
    more = f" (and {len(files) - 1} more of this save's names)" if len(files) > 1 else ""
    return (f"name: {files[0]} already exists{more}; Cross-Init Save LoRA under {stem} writes loras/{stem} and "
            f"embeddings/{stem} (from a checkpoints list also {stem}-stepNNNN). Choose another name, or turn on "
            "overwrite to replace them.")


def save_pivotal(named: list[tuple[LoraModel, CrossInitEmbedding | None, str]], loras_dir: str | os.PathLike[str],
                 embeddings_dir: str | os.PathLike[str] | None, overwrite: bool = False, bundle: bool = True,
                 token_name: str = "") -> PivotalFiles:
    """Writes each (lora, token, name) as loras/NAME.safetensors (+ embeddings/NAME.safetensors when there is a token
    and `embeddings_dir`). `token_name`: the bundled token's name (A1111's prompt word, the `ss_` trigger word) when it
    is not the file's NAME (the batch runner saves NAME-RUNID on a server and brings back a file bundling NAME).

    Every name in both folders is checked first: a taken one (without `overwrite`) stops the save before anything is
    written. Each folder is written all or none (atomic_files.write_all); when the embeddings fail, the LoRA files
    just written are taken back.
    """
    from safetensors.torch import save

    loras_folder = Path(loras_dir).resolve()
    embeddings_folder = Path(embeddings_dir).resolve() if embeddings_dir is not None else None
    token = validate_name(token_name) if token_name else ""
    if bundle and named and any(embedding is not None for _l, embedding, _n in named):
        # the last item is NAME (a checkpoints list saves NAME-stepNNNN before it); their tokens share its word
        validate_bundle_name(token or named[-1][2], "token_name" if token else "name")
    for lora, embedding, _name in named:
        check_token_fits_lora(embedding, lora)
    lora_files: list[tuple[str, bytes, bool]] = []
    embedding_files: list[tuple[str, bytes, bool]] = []
    for lora, embedding, name in named:
        stem = validate_name(name)
        _check_free(loras_folder / f"{stem}{SUFFIX}", overwrite)
        # a checkpoint NAME-stepNNNN bundles its token as NAME-stepNNNN, unless a token name is given
        lora_files.append((stem + SUFFIX, save(*lora_file_tensors(lora, embedding, token or stem, bundle)), overwrite))
        if embedding is not None and embeddings_folder is not None:
            _check_free(embeddings_folder / f"{stem}{SUFFIX}", overwrite)
            embedding_files.append((stem + SUFFIX, save(*_embedding_file(embedding, lora, stem)), overwrite))
    before = {n: (loras_folder / n).read_bytes() for n, _d, _o in lora_files if (loras_folder / n).is_file()}
    written = atomic_files.write_all(loras_folder, lora_files)
    try:
        embedded = atomic_files.write_all(embeddings_folder, embedding_files) if embedding_files and embeddings_folder else []
    except BaseException:
        for path in written:  # put the LoRA folder back as it was
            if path.name in before:
                atomic_files.replace_atomically(path, before[path.name])
            else:
                path.unlink(missing_ok=True)
        raise
    log.info("Saved pivotal LoRA %s", ", ".join(str(p) for p in written))
    return PivotalFiles(written, embedded)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class LoraFile:
    lora: dict[str, torch.Tensor]  # the LoRA's own keys (no bundles)
    bundles: dict[str, dict[str, torch.Tensor]]  # NAME -> {rest of the key: tensor}
    metadata: dict[str, str]
    path: Path


def read_lora_file(path: str | os.PathLike[str], what: str = "lora_name") -> LoraFile:
    """A LoRA file's tensors, bundles and metadata; safetensors only, so nothing is ever unpickled."""
    p = Path(path)
    if p.suffix.lower() != SUFFIX:
        raise EmbeddingFileError(f"{what}: {p.name} is not a .safetensors file; .pt/.ckpt/.bin files are pickles, which "
                                 "this node never unpickles (they can run code). Convert it to safetensors first.")
    if not p.is_file():
        raise EmbeddingFileError(f"{what}: {p} is not a file; refresh the node list (press R).")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            data = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # every parser failure becomes one clear message
        first_line = next(iter(str(exc).splitlines()), "")[:200]
        raise EmbeddingFileError(f"{what}: {p.name} cannot be read as safetensors ({type(exc).__name__}: {first_line}). "
                                 "It may be truncated, or a renamed pickle, which is never unpickled.") from None
    bundles: dict[str, dict[str, torch.Tensor]] = {}
    lora: dict[str, torch.Tensor] = {}
    for key, tensor in data.items():
        if key.startswith(BUNDLE_PREFIX):
            _prefix, name, rest = [*key.split(".", 2), "", ""][:3]
            if name and rest:
                bundles.setdefault(name, {})[rest] = tensor
                continue
        lora[key] = tensor
    return LoraFile(lora, bundles, metadata, p)


def _as_2d(tensor: Any, where: str) -> torch.Tensor:
    if not torch.is_tensor(tensor) or tensor.ndim not in (1, 2) or not tensor.is_floating_point():
        raise EmbeddingFileError(f"{where}: expected float vectors [n, width]; got {getattr(tensor, 'shape', type(tensor).__name__)}.")
    t = tensor.detach().float().cpu()
    return t.unsqueeze(0) if t.ndim == 1 else t


def _single_key(width: int, slots: list[EncoderSlot], where: str) -> str:
    """The encoder key of a bundle's single tensor: the CLIP's own when it has one encoder of that width, else the
    standard encoder of that width."""
    if len(slots) == 1 and slots[0].width == width:
        return slots[0].key
    if width in WIDTH_KEYS:
        return WIDTH_KEYS[width]
    raise EmbeddingFileError(f"{where}: the token vectors are {width} wide; {WIDTHS_MESSAGE}.")


def bundled_embedding(lora_file: LoraFile, slots: list[EncoderSlot], token: str = "", what: str = "lora_name") -> CrossInitEmbedding:
    """The bundled token named `token` (or the file's only one) as an embedding for this CLIP's encoders.

    Refuses (before anything runs) a file without bundles, an unknown name, keys of other model families (t5 ...)
    and widths that do not fit the CLIP, with the family message of `check_matches_slots`.
    """
    source = lora_file.path.name
    names = sorted(lora_file.bundles)
    if not names:
        raise EmbeddingFileError(f"{what}: {source} holds no bundled token (no bundle_emb.* keys); use it with a "
                                 "separate embedding (Cross-Init Load Embedding), or choose a file with a bundled token.")
    if token and token not in lora_file.bundles:
        raise InvalidInputError(f"token: {source} bundles {', '.join(names)}, not {token!r}; give one of those names.")
    if not token and len(names) > 1:
        raise InvalidInputError(f"token: {source} bundles several tokens ({', '.join(names)}); give the one to use.")
    name = token or names[0]
    where = f"{what}: {source} token {name}"
    parts = dict(lora_file.bundles[name])
    # OneTrainer also bundles an output embedding (clip_l_out ...), which replaces the token in the text encoder's
    # output: ComfyUI's CLIP takes input vectors only, so the token works without it (weaker than in OneTrainer)
    unused = sorted(k for k in parts if k.endswith("_out") and k[: -len("_out")] in KEY_WIDTHS)
    if unused and len(unused) == len(parts):
        raise EmbeddingFileError(f"{where}: holds only {', '.join(unused)}, OneTrainer's output embedding, which ComfyUI's "
                                 "CLIP cannot use; choose a file that bundles the token's input vectors (clip_l ...).")
    if unused:
        for key in unused:
            parts.pop(key)
        log.warning("%s: %s (OneTrainer's output embedding) is not used; ComfyUI's CLIP takes the input vectors only.",
                    where, ", ".join(unused))
    encoder_keys = [k for k in parts if k in KEY_WIDTHS]
    if len(parts) == 1:
        # string_to_param.*, emb_params, or one encoder's vectors: routed by their width (OneTrainer names the SD 2.x
        # encoder's vectors clip_l too)
        tensor = _as_2d(next(iter(parts.values())), where)
        vectors = {_single_key(int(tensor.shape[1]), slots, where): tensor}
    elif encoder_keys:
        other = sorted(set(parts) - set(encoder_keys))
        if other:
            known = ", ".join(f.name for f in FAMILIES)
            raise EmbeddingFileError(f"{where}: also holds {', '.join(other)}, encoders of a model family this pack does "
                                     f"not train for (supported: {known}); use it with that model.")
        vectors = {k: _as_2d(parts[k], f"{where} {k}") for k in encoder_keys}
    else:
        raise EmbeddingFileError(f"{where}: keys {sorted(parts)} are not a bundled embedding (expected string_to_param.*, "
                                 "emb_params, or clip_l / clip_h / clip_g).")
    for key, v in vectors.items():
        if not torch.isfinite(v).all():
            raise EmbeddingFileError(f"{where}: {key} holds NaN or infinite values.")
    try:
        embedding = CrossInitEmbedding(vectors=vectors, metadata={"source_file": source, "bundle_name": name})
    except InvalidInputError as exc:
        raise EmbeddingFileError(f"{where}: {exc}") from None
    check_matches_slots(embedding, slots, what=f"{what} ({source}, token {name})")
    return embedding
