from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..cross_init_core import embedding_io, host
from ..cross_init_core.errors import EmbeddingFileError, InvalidInputError
from .common import CATEGORY, Embedding, single

log = logging.getLogger(__name__)


class CrossInitSaveEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitSaveEmbedding",
            display_name="Cross-Init Save Embedding",
            category=CATEGORY,
            description=(
                "Saves the embedding to models/embeddings as NAME.safetensors; use it anywhere as embedding:NAME. Given "
                "the trainer's checkpoints (a list), saves each as NAME-stepNNNN.safetensors and the last also as NAME."
            ),
            inputs=[
                Embedding.Input("embedding", tooltip="The trained embedding, or the trainer's checkpoints list."),
                io.String.Input("name", default="my_face",
                                tooltip="File name without extension: letters, digits, _ - . (no spaces or folders). "
                                        "Prompts then use embedding:NAME (embedding:NAME-step0080 for a checkpoint)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace existing files of those names. Off: an existing file is never touched, "
                                         "and a taken name stops the save before anything is written."),
                io.Boolean.Input("copy_to_output", default=False, optional=True,
                                 tooltip="Also put a copy under output/cross_init_embeddings/, where ComfyUI's /view "
                                         "serves it: for scripts that fetch the file over the HTTP API (the batch runner)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written (NAME.safetensors).")],
            is_output_node=True,
            is_input_list=True,  # the whole checkpoints list at once: all names are checked before any is written
        )

    @classmethod
    def validate_inputs(cls, name=None, overwrite=False) -> bool | str:  # type: ignore[override]
        """Runs when the prompt is queued, so an unusable name is refused before any training starts.

        A name that is merely taken is refused when the node runs instead: every queue re-validates, and a
        re-queued graph (new sample seeds) must not fail because its own earlier run saved the file. The
        trainer's result stays cached, so renaming and queueing again does not retrain.
        """
        name = single(name)
        if not isinstance(name, str):
            return True  # linked from another node: checked when it runs
        try:
            embedding_io.validate_name(name)
        except InvalidInputError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, embedding, name, overwrite, copy_to_output=None) -> io.NodeOutput:  # type: ignore[override]
        name, overwrite, copy_to_output = single(name), bool(single(overwrite)), bool(single(copy_to_output or [False]))
        folders = host.embedding_directories()
        if not folders:
            raise InvalidInputError("name: ComfyUI has no embeddings folder configured (models/embeddings).")
        named = embedding_io.checkpoint_names(embedding if isinstance(embedding, list) else [embedding], name)
        paths = embedding_io.save_embeddings(named, folders[0], overwrite=overwrite)
        stem = embedding_io.validate_name(name)
        message = "\n".join(f"Saved {path}." for path in paths) + f" Use it in any prompt as embedding:{stem}"
        log.info(message)
        if not copy_to_output:
            return io.NodeOutput(str(paths[-1]), ui=ui.PreviewText(message))
        # the UI result lands in /history: HTTP clients find each copy's name, size and checksum there
        entries = []
        for (saved, file_name), path in zip(named, paths, strict=True):
            entry = embedding_io.copy_for_download(path, host.output_directory())
            history = saved.loss_history
            entries.append({**entry, "name": file_name, "steps": saved.metadata.get("steps"),
                            "final_loss": float(history[-1][0]) if history else None})
        # the last entry is NAME itself (the final tokens); earlier ones are the checkpoints
        return io.NodeOutput(str(paths[-1]), ui={"text": [message], "cross_init_embedding": entries})


class CrossInitLoadEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitLoadEmbedding",
            display_name="Cross-Init Load Embedding",
            category=CATEGORY,
            description=(
                "Loads an embedding file (ours, A1111 .pt/.safetensors, or the reference learned_embeds.bin). Into the "
                "trainer it continues that run: the regularizer still pulls toward its Cross-Init start, the steps count "
                "on, and the optimizer goes on where it stopped (files from 0.2.1 on), with the same CLIP layer."
            ),
            inputs=[
                io.Combo.Input("name", options=host.list_embedding_files(), optional=True,
                               tooltip="A file from the embeddings folders (models/embeddings and extra paths)."),
                io.String.Input("file", default="", optional=True,
                                tooltip="Instead of name: a file under ComfyUI's input folder by its relative path, e.g. "
                                        "one a script uploaded (the batch runner's --resume). Empty: use name."),
            ],
            outputs=[Embedding.Output(display_name="embedding", tooltip="The vectors, for Cross-Init CLIP Text Encode or more training.")],
        )

    @classmethod
    def _path(cls, name: str | None, file: str) -> str | None:
        return host.input_file_path(file) if file else host.embedding_file_path(name) if name else None

    @classmethod
    def fingerprint_inputs(cls, name: str | None = None, file: str = "") -> str:  # type: ignore[override]
        """A file re-saved under the same name is read again instead of served from ComfyUI's cache."""
        path = cls._path(name, file)
        if path is None:
            return f"missing:{name}:{file}"
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, name: str | None = None, file: str = "") -> io.NodeOutput:  # type: ignore[override]
        path = cls._path(name, file)
        if path is None and file:
            raise EmbeddingFileError(f"file: {file!r} is not a file in ComfyUI's input folder; upload it there first, or "
                                     "clear file and choose a name.")
        if path is None and not name:
            raise EmbeddingFileError("name: no embedding chosen; choose a file in name (press R to refresh the list), or "
                                     "give a file under ComfyUI's input folder in file.")
        if path is None:
            raise EmbeddingFileError(f"name: {name!r} is not in the embeddings folders; refresh the node list (press R).")
        return io.NodeOutput(embedding_io.load_embedding(path))
