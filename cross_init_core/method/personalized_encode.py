"""Conditioning for prompts that contain the learned tokens (what CrossInitCLIPTextEncode outputs)."""

from __future__ import annotations

from typing import Any

import torch

from .. import host
from ..common.prompt_text import PLACEHOLDER
from ..embeddings.embedding import CrossInitEmbedding, check_matches_slots
from .prompt_tokens import layout_prompt


def encode_prompt(clip: Any, embedding: CrossInitEmbedding, text: str, placeholder: str = PLACEHOLDER) -> list[list[Any]]:
    """CONDITIONING [[cond, {"pooled_output": pooled}]] through the host's own encode path."""
    slots = host.encoder_slots(clip)
    check_matches_slots(embedding, slots)
    layout = layout_prompt(clip, slots, text, placeholder, embedding.num_tokens)
    vectors = {k: v.detach().float() for k, v in embedding.vectors.items()}
    tokens = layout.fill(vectors, slots)
    with torch.no_grad():
        cond, pooled = host.encode_conditioning(clip, tokens)
    return [[cond, {"pooled_output": pooled}]]
