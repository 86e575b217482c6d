"""Cross Initialization: the starting vectors of the learned tokens, as the paper's reference code computes them.

Per text encoder: column j collects the input embedding of the j-th BPE token of every name that has
one; m_j is the column mean. The sequence [BOS, m_0, ..., m_{n-1}, EOS, PAD...] is encoded by the host
CLIP exactly as it produces conditioning, and the outputs at positions 1..n are the initial vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .. import host
from ..common.errors import InvalidInputError
from ..common.families import EncoderSlot
from ..embeddings.embedding import CrossInitEmbedding
from . import names as name_lists

log = logging.getLogger(__name__)

MAX_TOKENS = 16


def bpe_ids(tokenizer: Any, text: str) -> list[int]:
    """BPE token ids of `text`, without BOS/EOS/padding."""
    return list(tokenizer(text)["input_ids"][1:-1])


def column_means(token_ids: Sequence[Sequence[int]], table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[num_tokens, width]: mean of the j-th token's embedding row over all names that have a j-th token."""
    rows = []
    for j in range(num_tokens):
        column = [ids[j] for ids in token_ids if len(ids) > j]
        if not column:
            longest = max((len(ids) for ids in token_ids), default=0)
            raise InvalidInputError(
                f"num_tokens: {num_tokens} learned tokens need names of at least {num_tokens} BPE tokens, but the "
                f"longest name has {longest}. Lower num_tokens or add longer names."
            )
        rows.append(table[torch.tensor(column)].mean(dim=0))
    return torch.stack(rows)


def word_means(token_ids: Sequence[int], table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Ordinary-words source: the phrase's first n BPE tokens, repeated cyclically if it has fewer."""
    if not token_ids:
        raise InvalidInputError("names: the words give no tokens. Write at least one word, e.g. 'face'.")
    return torch.stack([table[token_ids[j % len(token_ids)]] for j in range(num_tokens)])


def _validate_num_tokens(num_tokens: int) -> None:
    if not isinstance(num_tokens, int) or not 1 <= num_tokens <= MAX_TOKENS:
        raise InvalidInputError(f"num_tokens: got {num_tokens!r}; use a whole number from 1 to {MAX_TOKENS} (default 2).")


def source_means(clip: Any, slot: EncoderSlot, lines: Sequence[str], num_tokens: int, source: str) -> torch.Tensor:
    tokenizer = host.hf_tokenizer(clip, slot)
    table = host.token_table(clip, slot)
    if source == "words":
        return word_means(bpe_ids(tokenizer, " ".join(lines)), table, num_tokens)
    ids = [bpe_ids(tokenizer, name) for name in lines]
    ids = [i for i in ids if i]
    if not ids:
        raise InvalidInputError("names: none of the names gives any token. Write names in plain letters, one per line.")
    return column_means(ids, table, num_tokens)


def cross_encode(clip: Any, slots: Sequence[EncoderSlot], means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encodes [BOS, m_0..m_{n-1}, EOS, PAD...] per encoder through the host path; returns outputs 1..n."""
    empty = host.tokenize(clip, "")
    tokens: dict[str, Any] = {}
    for slot in slots:
        row = list(empty[slot.token_key][0])
        n = means[slot.key].shape[0]
        # After BOS; drop n trailing pads so the chunk keeps the host's length.
        spliced = [row[0]] + [(means[slot.key][j], 1.0) for j in range(n)] + row[1 : len(row) - n]
        tokens[slot.token_key] = [spliced]
    cond, _pooled = host.encode_conditioning(clip, tokens)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for slot in slots:
        n = means[slot.key].shape[0]
        out[slot.key] = cond[0, 1 : 1 + n, offset : offset + slot.width].detach().float().cpu().clone()
        offset += slot.width
    return out


def cross_initialize(clip: Any, num_tokens: int = 2, names: Sequence[str] = (), source: str = "names") -> CrossInitEmbedding:
    """Initial embedding for `clip`: one [num_tokens, width] tensor per text encoder.

    `names` are averaged as given, repeats included; the metadata records whether they are one of the
    shipped lists (`init_names`).
    """
    _validate_num_tokens(num_tokens)
    if source not in ("names", "words"):
        raise InvalidInputError(f"source: got {source!r}; use 'names' or 'words'.")
    if not names:
        raise InvalidInputError("names: the list is empty. Leave the field empty for the list chosen in name_list, or write names.")
    slots = host.encoder_slots(clip)
    with torch.inference_mode(False), torch.no_grad():
        means = {slot.key: source_means(clip, slot, names, num_tokens, source) for slot in slots}
        vectors = cross_encode(clip, slots, means)
    for key, v in vectors.items():
        if not torch.isfinite(v).all():
            raise InvalidInputError(f"clip: the text encoder produced non-finite values for {key}; the checkpoint may be broken.")
        log.info("Cross Initialization %s: %d tokens from %d %s, norms %s", key, num_tokens, len(names), source,
                 [round(float(x), 2) for x in v.norm(dim=1)])
    label = name_lists.list_label(names)
    metadata = {
        "init_source": source,
        "init_names": label,
        "init_count": str(len(names)),
        "num_tokens": str(num_tokens),
    }
    if label == name_lists.TYPED:  # so a saved run can be continued toward the same start (continuation.py)
        metadata["init_names_text"] = "\n".join(names)
    return CrossInitEmbedding(vectors=vectors, init_vectors={k: v.clone() for k, v in vectors.items()}, metadata=metadata)
