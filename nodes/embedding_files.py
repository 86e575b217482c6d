from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..cross_init_core import host
from ..cross_init_core.common import embedding_names
from ..cross_init_core.common.embedding_names import MAX_RUN_STEPS
from ..cross_init_core.common.errors import EmbeddingExistsError, EmbeddingFileError, InvalidInputError
from ..cross_init_core.embeddings import embedding_io
from .common import CATEGORY, UNLINKED, Embedding, single

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
                # lazy: the node checks its name before whatever computes the embedding (the training) runs
                Embedding.Input("embedding", lazy=True, tooltip="The trained embedding, or the trainer's checkpoints list."),
                io.String.Input("name", default="my_face",
                                tooltip="File name without extension: letters, digits, _ - . (no spaces or folders). "
                                        "Prompts then use embedding:NAME (embedding:NAME-step0080 for a checkpoint)."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="On: replace existing files of this name. Off: a name already in use is refused "
                                         "when you press Run, before any training, and no file is ever touched."),
                io.Boolean.Input("copy_to_output", default=False, optional=True,
                                 tooltip="Also put a copy under output/cross_init_embeddings/, where ComfyUI's /view "
                                         "serves it: for scripts that fetch the file over the HTTP API (the batch runner)."),
                Embedding.Input("best", optional=True, lazy=True,
                                tooltip="The best checkpoint from Cross-Init Checkpoint Report: also saved, as NAME-best."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the file was written (NAME.safetensors).")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
            is_input_list=True,  # the whole checkpoints list at once: all names are checked before any is written
        )

    @classmethod
    def _saver(cls) -> str:
        """This node's id in the graph ("" when called outside a graph, as tests do)."""
        hidden = getattr(cls, "hidden", None)
        return str(getattr(hidden, "unique_id", None) or "")

    @classmethod
    def _taken(cls, name: str, overwrite: bool, allow_own: bool) -> str | None:
        """Why `name` cannot be saved to (taken, and overwrite off), or None. `allow_own`: files this node wrote in
        this session pass (the queue check: a graph run again after its own save is served from ComfyUI's cache)."""
        folders = host.embedding_directories()
        if overwrite or not folders:
            return None
        files = embedding_io.run_files(folders[0], name)
        if not files or (allow_own and embedding_io.written_by(cls._saver(), files)):
            return None
        return embedding_io.taken_message(files, name)

    @classmethod
    def validate_inputs(cls, name=None, overwrite=False) -> bool | str:  # type: ignore[override]
        """Runs when the graph is queued (Run), so an unusable or taken name is refused before any training starts:
        a bad name, one too long for the checkpoints NAME-stepNNNN a run could write, or a taken NAME or
        NAME-stepNNNN (overwrite off). A name linked from another node is checked when the node runs."""
        name, overwrite = single(name), single(overwrite)
        if not isinstance(name, str):
            return True
        try:
            embedding_names.validate_run_name(name, MAX_RUN_STEPS)
        except InvalidInputError as exc:
            return str(exc)
        return cls._taken(name, overwrite is True, allow_own=True) or True

    @classmethod
    def check_lazy_status(cls, name, overwrite, embedding=None, copy_to_output=None,  # type: ignore[override]
                          best=UNLINKED) -> list[str]:
        """Runs before the embedding is computed: a taken name stops the graph here rather than after the training
        (for example a graph run again after its own save, whose training changed)."""
        name, overwrite = single(name), bool(single(overwrite))
        embedding_names.validate_run_name(name, MAX_RUN_STEPS)
        problem = cls._taken(name, overwrite, allow_own=False)
        if problem:
            raise EmbeddingExistsError(problem)
        return ["embedding"] if best is UNLINKED else ["embedding", "best"]

    @classmethod
    def execute(cls, embedding, name, overwrite, copy_to_output=None, best=None) -> io.NodeOutput:  # type: ignore[override]
        name, overwrite, copy_to_output = single(name), bool(single(overwrite)), bool(single(copy_to_output or [False]))
        folders = host.embedding_directories()
        if not folders:
            raise InvalidInputError("name: ComfyUI has no embeddings folder configured (models/embeddings).")
        named = embedding_io.checkpoint_names(embedding if isinstance(embedding, list) else [embedding], name)
        if best is not None:  # before NAME itself, which stays last (the batch runner reads the last entry as NAME)
            named.insert(len(named) - 1, (single(best), embedding_io.best_name(name)))
        paths = embedding_io.save_embeddings(named, folders[0], overwrite=overwrite)
        embedding_io.remember_written(cls._saver(), paths)
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
                "on, and the optimizer goes on where it stopped (files from 0.3.0 on), with the same CLIP layer."
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
