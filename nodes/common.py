"""Shared node pieces: the pack's custom socket types and category, and list-node inputs."""

from __future__ import annotations

from comfy_api.latest import io

CATEGORY = "training/cross_init"

# A CrossInitEmbedding (cross_init_core.embeddings.embedding) travelling between the pack's nodes.
Embedding = io.Custom("CROSS_INIT_EMBEDDING")
# A LossSettings (cross_init_core.common.settings).
LossSettingsType = io.Custom("CROSS_INIT_LOSS")


def single(value):
    """One value of an input of a list node (ComfyUI passes every input of such a node as a list)."""
    return value[0] if isinstance(value, list) else value
