from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..cross_init_core import embedding_io, host
from ..cross_init_core.errors import EmbeddingFileError, InvalidInputError
from .common import CATEGORY, Embedding

log = logging.getLogger(__name__)


class CrossInitSaveEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitSaveEmbedding",
            display_name="Cross-Init Save Embedding",
            category=CATEGORY,
            description="Saves the embedding to models/embeddings as NAME.safetensors; use it anywhere as embedding:NAME.",
            inputs=[
                Embedding.Input("embedding", tooltip="The trained embedding."),
                io.String.Input("name", default="my_face",
                                tooltip="File name without extension: letters, digits, _ - . (no spaces or folders). "
                                        "Prompts then use embedding:NAME."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name. Off: an existing file is never touched."),
                io.Boolean.Input("copy_to_output", default=False, optional=True,
                                 tooltip="Also put a copy under output/cross_init_embeddings/, where ComfyUI's /view "
                                         "serves it: for scripts that fetch the file over the HTTP API (the batch runner)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name: str | None = None, overwrite: bool | None = False) -> bool | str:  # type: ignore[override]
        """Runs when the prompt is queued, so an unusable name is refused before any training starts.

        A name that is merely taken is refused when the node runs instead: every queue re-validates, and a
        re-queued graph (new sample seeds) must not fail because its own earlier run saved the file. The
        trainer's result stays cached, so renaming and queueing again does not retrain.
        """
        if not isinstance(name, str):
            return True  # linked from another node: checked when it runs
        try:
            embedding_io.validate_name(name)
        except InvalidInputError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, embedding, name: str, overwrite: bool = False,  # type: ignore[override]
                copy_to_output: bool = False) -> io.NodeOutput:
        folders = host.embedding_directories()
        if not folders:
            raise InvalidInputError("name: ComfyUI has no embeddings folder configured (models/embeddings).")
        path = embedding_io.save_embedding(embedding, folders[0], name, overwrite=overwrite)
        stem = embedding_io.validate_name(name)
        message = f"Saved {path}. Use it in any prompt as embedding:{stem}"
        log.info(message)
        if not copy_to_output:
            return io.NodeOutput(str(path), ui=ui.PreviewText(message))
        # the UI result lands in /history: HTTP clients find the copy's name, size and checksum there
        entry = embedding_io.copy_for_download(path, host.output_directory())
        entry["name"] = stem
        history = embedding.loss_history
        entry["final_loss"] = float(history[-1][0]) if history else None
        return io.NodeOutput(str(path), ui={"text": [message], "cross_init_embedding": [entry]})


class CrossInitLoadEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitLoadEmbedding",
            display_name="Cross-Init Load Embedding",
            category=CATEGORY,
            description="Loads an embedding file (ours, A1111 .pt/.safetensors, or the reference learned_embeds.bin).",
            inputs=[
                io.Combo.Input("name", options=host.list_embedding_files(),
                               tooltip="A file from the embeddings folders (models/embeddings and extra paths)."),
            ],
            outputs=[Embedding.Output(display_name="embedding", tooltip="The vectors, for Cross-Init CLIP Text Encode or more training.")],
        )

    @classmethod
    def fingerprint_inputs(cls, name: str) -> str:  # type: ignore[override]
        """A file re-saved under the same name is read again instead of served from ComfyUI's cache."""
        path = host.embedding_file_path(name)
        if path is None:
            return f"missing:{name}"
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, name: str) -> io.NodeOutput:  # type: ignore[override]
        path = host.embedding_file_path(name)
        if path is None:
            raise EmbeddingFileError(f"name: {name!r} is not in the embeddings folders; refresh the node list (press R).")
        return io.NodeOutput(embedding_io.load_embedding(path))
