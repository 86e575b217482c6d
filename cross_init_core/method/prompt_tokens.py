"""Prompts whose placeholder stands for the learned tokens, tokenized by the host tokenizer.

The placeholder is replaced by n copies of a sentinel word that is a single BPE token; after
tokenization each sentinel becomes one learned vector (k-th sentinel -> vector k mod n), which is the
same layout ComfyUI builds for `embedding:NAME`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import host
from ..common.errors import InvalidInputError
from ..common.families import EncoderSlot

SENTINEL_CANDIDATES = ("sks", "ohwx", "zwx", "xqz", "qwv")


@dataclass(frozen=True)
class PromptLayout:
    """Host tokens of a prompt with the learned-token positions: (chunk, index, vector row) per slot."""

    tokens: dict[str, list[list[tuple[Any, float]]]]
    positions: dict[str, list[tuple[int, int, int]]]

    def fill(self, vectors: dict[str, torch.Tensor], slots: Sequence[EncoderSlot]) -> dict[str, list[list[tuple[Any, float]]]]:
        """Token dict with each sentinel replaced by its learned vector (tensors keep autograd links)."""
        out: dict[str, list[list[tuple[Any, float]]]] = {}
        for slot in slots:
            chunks = [list(chunk) for chunk in self.tokens[slot.token_key]]
            for chunk_index, index, row in self.positions[slot.token_key]:
                weight = chunks[chunk_index][index][1]
                chunks[chunk_index][index] = (vectors[slot.key][row], weight)
            out[slot.token_key] = chunks
        return out


def _single_token_id(clip: Any, slot: EncoderSlot, word: str) -> int | None:
    ids = host.hf_tokenizer(clip, slot)(word)["input_ids"][1:-1]
    return ids[0] if len(ids) == 1 else None


def _token_ids(tokens: dict[str, Any], token_key: str) -> set[int]:
    return {t for chunk in tokens[token_key] for t, _w in chunk if isinstance(t, int)}


def layout_prompt(clip: Any, slots: Sequence[EncoderSlot], text: str, placeholder: str, num_tokens: int) -> PromptLayout:
    """Tokenizes `text`, mapping every `placeholder` to the learned tokens."""
    if not placeholder.strip():
        raise InvalidInputError("placeholder: it is empty. Use a marker such as <face> and write it in the text.")
    if placeholder not in text:
        raise InvalidInputError(
            f"text: the placeholder {placeholder!r} does not appear in the prompt, so the learned face would not be "
            f"used. Write it where the person goes, e.g. 'a photo of {placeholder} person'."
        )
    plain = host.tokenize(clip, text.replace(placeholder, " "))
    for sentinel in SENTINEL_CANDIDATES:
        ids = {slot.token_key: _single_token_id(clip, slot, sentinel) for slot in slots}
        if any(i is None or i in _token_ids(plain, slot.token_key) for slot, i in zip(slots, ids.values(), strict=True)):
            continue
        marked = text.replace(placeholder, " " + " ".join([sentinel] * num_tokens) + " ")
        tokens = host.tokenize(clip, marked)
        positions: dict[str, list[tuple[int, int, int]]] = {}
        for slot in slots:
            found = [
                (c, i) for c, chunk in enumerate(tokens[slot.token_key]) for i, (t, _w) in enumerate(chunk) if t == ids[slot.token_key]
            ]
            positions[slot.token_key] = [(c, i, k % num_tokens) for k, (c, i) in enumerate(found)]
        return PromptLayout(tokens=tokens, positions=positions)
    raise InvalidInputError("text: the prompt uses every marker word this node can stand in for the placeholder; rephrase it.")
