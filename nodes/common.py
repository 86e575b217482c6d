"""Shared node pieces: the pack's custom socket types and category, and list-node inputs."""

from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core import host
from ..cross_init_core.common.embedding_names import MAX_RUN_STEPS, validate_bundle_name, validate_run_name
from ..cross_init_core.common.errors import EmbeddingExistsError, InvalidInputError
from ..cross_init_core.embeddings import embedding_io
from ..cross_init_core.lora import files as lora_files

CATEGORY = "training/cross_init"

# A CrossInitEmbedding (cross_init_core.embeddings.embedding) travelling between the pack's nodes.
Embedding = io.Custom("CROSS_INIT_EMBEDDING")
# A LossSettings (cross_init_core.common.settings).
LossSettingsType = io.Custom("CROSS_INIT_LOSS")


UNLINKED = object()  # an optional input with no link (ComfyUI leaves it out of the call)


def single(value):
    """One value of an input of a list node (ComfyUI passes every input of such a node as a list)."""
    return value[0] if isinstance(value, list) else value


def refuse_taken_saves(node: type) -> None:
    """Before any step of a training node: a Save Embedding or Save LoRA below it that would save under a taken name
    stops the run here. ComfyUI runs a graph's other outputs even when a Save node failed its check at Run, so the
    training would otherwise go ahead and its result not be saved."""
    hidden = getattr(node, "hidden", None)
    prompt, node_id = getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None)
    if not isinstance(prompt, dict) or node_id is None:
        return
    embeddings, loras = host.embedding_directories(), host.lora_directories()
    for class_type, inputs in embedding_io.downstream_saves(prompt, str(node_id)):
        name = inputs["name"]
        lora = class_type == embedding_io.SAVE_LORA_NODE
        title = "Save LoRA" if lora else "Save Embedding"
        try:
            validate_run_name(name, MAX_RUN_STEPS)
            if lora and inputs.get("bundle_token", True) is True:  # the word the token is bundled under
                token = inputs.get("token_name")
                if isinstance(token, str) and token.strip():
                    validate_bundle_name(token, "token_name")
                elif not isinstance(token, list):  # a linked token_name is checked when Save LoRA runs
                    validate_bundle_name(name)
            if inputs.get("overwrite") is True:
                continue
            if lora:
                with_token = inputs.get("save_embedding") is not False
                files = lora_files.taken_files(name, loras[0] if loras else None,
                                               embeddings[0] if embeddings and with_token else None)
            else:
                files = embedding_io.run_files(embeddings[0], name) if embeddings else []
        except InvalidInputError as exc:  # the Save node's own check names it; stop before the training too
            raise InvalidInputError(f"{exc} (the {title} node that saves this training)") from None
        if files:
            message = lora_files.taken_message if lora else embedding_io.taken_message
            raise EmbeddingExistsError(message(files, name))
