"""The host's model folders: the pack's own keys, the embeddings folders, the output folder, the BPE files."""

from __future__ import annotations

import os
from pathlib import Path


def register_model_folder(key: str) -> list[str]:
    """Adds ComfyUI/models/<key> under the folder key `key`, after any extra_model_paths.yaml entries (so a
    `<key>:` entry there works); idempotent. Returns the key's folders in search order."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, key)
    entry = folder_paths.folder_names_and_paths.get(key)
    if entry is None:
        folder_paths.folder_names_and_paths[key] = ([default], set())
    elif default not in entry[0]:
        entry[0].append(default)
    return list(folder_paths.folder_names_and_paths[key][0])


def embedding_directories() -> list[str]:
    import folder_paths

    return list(folder_paths.get_folder_paths("embeddings"))


def list_embedding_files() -> list[str]:
    import folder_paths

    return sorted(folder_paths.get_filename_list("embeddings"))


def embedding_file_path(name: str) -> str | None:
    import folder_paths

    return folder_paths.get_full_path("embeddings", name)


def lora_directories() -> list[str]:
    import folder_paths

    return list(folder_paths.get_folder_paths("loras"))


def list_lora_files() -> list[str]:
    import folder_paths

    return sorted(folder_paths.get_filename_list("loras"))


def lora_file_path(name: str) -> str | None:
    import folder_paths

    return folder_paths.get_full_path("loras", name)


def output_directory() -> str:
    """ComfyUI's output folder: the one place besides input/temp that the server's /view serves files from."""
    import folder_paths

    return folder_paths.get_output_directory()


def clip_tokenizer_folder() -> Path:
    """The CLIP BPE files ComfyUI ships (comfy/sd1_tokenizer): the same vocabulary as every OpenAI CLIP."""
    import comfy.sd1_clip

    return Path(comfy.sd1_clip.__file__).resolve().parent / "sd1_tokenizer"


def input_file_path(relative: str) -> str | None:
    """A file under ComfyUI's input folder by its relative path (as the upload route names it); None when there
    is no such file or the path would leave the input folder."""
    import folder_paths

    root = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(root, relative))
    try:
        inside = os.path.commonpath((root, path)) == root
    except ValueError:  # Windows: another drive
        inside = False
    return path if inside and os.path.isfile(path) else None
