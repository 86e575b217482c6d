"""The model families the pack trains for: SD 1.x, SD 2.x and SDXL, in one table.

Each family is named by the text encoders of its CLIP (the keys an embedding file holds, the token keys
the host's tokenizer uses, the standard widths) and has a base resolution. Every other module asks this
table rather than spelling these facts out again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder of a CLIP: `key` names it in embedding files, `token_key` in token dicts."""

    key: str
    token_key: str
    width: int


CLIP_L = EncoderSlot("clip_l", "l", 768)
CLIP_H = EncoderSlot("clip_h", "h", 1024)
CLIP_G = EncoderSlot("clip_g", "g", 1280)


@dataclass(frozen=True)
class Family:
    name: str  # as messages name it
    tag: str  # as the `base_model` file metadata names it
    encoders: tuple[EncoderSlot, ...]  # in the order the host concatenates their outputs
    resolution: int  # the base training resolution (the trainer's resolution 0 = auto)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(e.key for e in self.encoders)


SD1 = Family("SD 1.x", "sd1", (CLIP_L,), 512)
SD2 = Family("SD 2.x", "sd2", (CLIP_H,), 512)
SDXL = Family("SDXL", "sdxl", (CLIP_L, CLIP_G), 1024)
FAMILIES = (SD1, SD2, SDXL)

# the parametrizations the UNet may predict, as `loss` names them -> as messages name them
PREDICTIONS = {"eps": "epsilon", "v": "v-prediction"}

# standard width of each encoder key, and the key a single tensor of a given width belongs to
KEY_WIDTHS = {e.key: e.width for family in FAMILIES for e in family.encoders}
WIDTH_KEYS = {width: key for key, width in KEY_WIDTHS.items()}
WIDTHS_MESSAGE = "supported widths are 768 (SD1), 1024 (SD2), 1280 (SDXL-G)"


def family_of(keys: Iterable[str]) -> Family | None:
    """The family whose CLIP has exactly these encoder keys (in any order); None for any other set."""
    wanted = sorted(keys)
    return next((f for f in FAMILIES if sorted(f.keys) == wanted), None)


def base_model(keys: Iterable[str], prediction: str) -> str:
    """The `base_model` metadata of a run, e.g. 'sd1-eps', 'sd2-v', 'sdxl-eps' ('unknown-...' otherwise)."""
    family = family_of(keys)
    return f"{family.tag if family else 'unknown'}-{prediction}"


def _encoders_brief(family: Family) -> str:
    if len(family.encoders) == 1:
        return f"({family.encoders[0].key}, {family.encoders[0].width})"
    return "(" + " + ".join(f"{e.key} {e.width}" for e in family.encoders) + ")"


SUPPORTED_MODELS = ", ".join(f"{f.name} {_encoders_brief(f)}" for f in FAMILIES)
ENCODER_WIDTHS = "; ".join(f"{f.name}: " + " + ".join(f"{e.key} {e.width}" for e in f.encoders) for f in FAMILIES)
SUPPORTED_PREDICTIONS = " or ".join(PREDICTIONS.values())
