"""Where insightface model packs live: ComfyUI's `insightface` folder key, and the usual mistakes.

Layout: <insightface folder>/models/<pack>/*.onnx, e.g. ComfyUI/models/insightface/models/antelopev2/.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import host

logger = logging.getLogger(__name__)

FOLDER_KEY = "insightface"
MODEL_PACKS = ("antelopev2", "buffalo_l")
# The detector of each pack: the only file face preparation loads.
DETECTOR_FILES = {"antelopev2": "scrfd_10g_bnkps.onnx", "buffalo_l": "det_10g.onnx"}
# The ArcFace recognizer of each pack (512-d embeddings): what the identity score loads.
RECOGNIZER_FILES = {"antelopev2": "glintr100.onnx", "buffalo_l": "w600k_r50.onnx"}


def register_insightface_folder() -> list[str]:
    """The `insightface` model folders (ComfyUI/models/insightface plus extra_model_paths.yaml entries), registering the key."""
    return host.register_model_folder(FOLDER_KEY)


def insightface_roots() -> list[Path]:
    """All registered insightface folders, in search order (registering first if needed)."""
    return [Path(p) for p in register_insightface_folder()]


def _onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


@dataclass(frozen=True)
class PackSearch:
    model_dir: Path | None  # the folder that directly holds the pack's .onnx files
    problem: str | None  # what is wrong, with the exact fix, when model_dir is None


def search_model_pack(pack: str, roots: list[Path]) -> PackSearch:
    if pack not in MODEL_PACKS:
        return PackSearch(None, f"unknown insightface model pack {pack!r}; choose one of {', '.join(MODEL_PACKS)}")
    for root in roots:
        if _onnx_files(root / "models" / pack):
            return PackSearch(root / "models" / pack, None)
    expected = roots[0] / "models" / pack if roots else Path("ComfyUI/models/insightface/models") / pack
    for root in roots:
        right = root / "models" / pack
        for wrong in (right / pack, root / pack):  # nested twice, or without the models/ level
            found = _onnx_files(wrong)
            if found:
                names = ", ".join(f.name for f in found)
                return PackSearch(
                    None,
                    (
                        f"The insightface {pack} files are in the wrong folder: {wrong} holds {names}. "
                        f"Move these .onnx files to {right} (that folder must contain them directly, "
                        f"not inside another {wrong.name} folder), then run the workflow again."
                    ),
                )
    searched = "; ".join(str(r / "models" / pack) for r in roots) or "(no insightface folder is registered)"
    return PackSearch(
        None,
        (
            f"No insightface {pack} model files found. Searched: {searched}. Put the pack's .onnx files "
            f"(including {DETECTOR_FILES[pack]}) directly in {expected}, or add an `insightface:` entry "
            "to extra_model_paths.yaml pointing at a folder that contains models/" + pack + "/. "
            "Or choose detector `mtcnn` (built in), which needs no model files."
        ),
    )
