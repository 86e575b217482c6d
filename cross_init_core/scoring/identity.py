"""Identity score: does each generated image show the person of the reference photos?

Every face of a generated image is embedded and compared with the largest face of every reference photo
(a face's score is the average of those pairwise scores); the image's score is its best-matching face's (the
highest cosine, the lowest distance), because prompts may show the person beside others (five of the
paper's twenty put them beside Anne Hathaway), and `mean` averages the images that have a face. Images without
a face are counted (`faces_found`) and left out of the mean; when no generated image has a face, `mean` is NaN
(null in the JSON report). A reference photo without a face is an error naming its index. Each backend reports
only its own metric and threshold.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..common.errors import CrossInitError
from ..face.errors import FacePrepError, MissingDependencyError
from ..face.images import split_batch, to_uint8
from ..face.pixels import fit_in_square
from . import arcface_backend, dlib_backend
from .arcface_backend import insightface_embedder
from .dlib_backend import INSTALL_HINT as DLIB_INSTALL_HINT
from .dlib_backend import dlib_embedder
from .metrics import FaceEmbedder, FoundFace, Metric, largest

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "insightface", "dlib")
TILE = 256  # side of one generated image in the annotated grid
CAPTION_HEIGHT = 46  # two caption lines
MATCH = (0, 200, 0)
NO_MATCH = (255, 140, 0)
NO_FACE = (230, 0, 0)
OTHER_FACE = (150, 150, 150)  # a face that was not the image's best match
FACE_CHOICE = "best match"  # the report's `face_choice`: which face of an image is scored


class NoReferenceFaceError(CrossInitError):
    """A reference photo shows no face the backend can find."""


@dataclass(frozen=True)
class IdentityResult:
    mean: float  # NaN when no generated image has a face
    report: dict[str, Any]
    annotated: torch.Tensor  # [1, H, W, 3]

    def report_json(self) -> str:
        return json.dumps(self.report, indent=2)


def choose_embedder(backend: str, insightface_roots: list[Path] | None = None) -> FaceEmbedder:
    """The embedder for the `backend` option. auto: insightface when its package and a complete model
    pack are usable, else dlib, else an error saying what to install."""
    if backend not in BACKENDS:
        raise CrossInitError(f"Input `backend` is {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "insightface":
        try:
            return insightface_embedder(insightface_roots)
        except FacePrepError as exc:
            raise type(exc)(f"backend is `insightface` but it cannot run: {exc} Or choose backend `dlib`.") from exc
    if backend == "dlib":
        return dlib_embedder()
    try:
        return insightface_embedder(insightface_roots)
    except FacePrepError as insightface_problem:
        try:
            embedder = dlib_embedder()
        except FacePrepError as dlib_problem:
            raise MissingDependencyError(
                "No face recognition backend is available for the identity score. For the numbers papers report, install "
                f"insightface with a model pack ({insightface_problem}). For a quick check without model downloads, install "
                f"dlib's: {DLIB_INSTALL_HINT} ({dlib_problem})."
            ) from dlib_problem
        logger.info("Identity score: insightface unusable (%s); using dlib", insightface_problem)
        return embedder


def backend_problem(backend: str, insightface_roots: list[Path] | None = None) -> str | None:
    """Why the `backend` option cannot run here, with the install line, or None: the queue-time check of the
    identity node (quick: no model is loaded; a broken model file is still found when the node runs)."""
    if backend not in BACKENDS:
        return f"backend: got {backend!r}; choose one of {', '.join(BACKENDS)}."
    insightface = arcface_backend.unavailable_reason(insightface_roots) if backend != "dlib" else None
    dlib = dlib_backend.unavailable_reason() if backend != "insightface" else None
    if backend == "insightface" and insightface:
        return f"backend is insightface, but {insightface}. Or choose backend dlib ({DLIB_INSTALL_HINT})."
    if backend == "dlib" and dlib:
        return f"backend is dlib, but {dlib}."
    if backend == "auto" and insightface and dlib:
        return (
            "backend: no face recognition backend is installed for the identity score. For the numbers papers report, "
            f"insightface with a model pack ({insightface}); for a quick check without model downloads: {DLIB_INSTALL_HINT}."
        )
    return None


def score_identity(
    reference: torch.Tensor | Sequence[torch.Tensor],
    images: torch.Tensor | Sequence[torch.Tensor],
    backend: str = "auto",
    embedder: FaceEmbedder | None = None,
) -> IdentityResult:
    """Scores `images` (generated) against `reference` (photos of the person)."""
    reference_photos = split_batch(reference, "reference")
    generated = split_batch(images, "images")
    embedder = choose_embedder(backend) if embedder is None else embedder
    metric = embedder.metric

    references: list[np.ndarray] = []
    for index, photo in enumerate(reference_photos):
        found = largest(embedder.faces(photo))
        if found is None:
            raise NoReferenceFaceError(
                f"Input `reference`, image index {index} (of {len(reference_photos)}): the {embedder.backend} backend finds no face "
                "in it. Use a clear photo where the face is frontal and at least ~80 px wide (the Face Prep crops work well), "
                "or remove that photo from the batch."
            )
        references.append(found.embedding)

    entries: list[dict[str, Any]] = []
    faces: list[list[FoundFace]] = []
    for index, photo in enumerate(generated):
        found_faces = embedder.faces(photo)
        faces.append(found_faces)
        entries.append(_entry(index, found_faces, references, metric))

    scores = [e["score"] for e in entries if e["face"]]
    mean = float(np.mean(scores)) if scores else math.nan
    if not scores:
        logger.warning("Identity score: no face in any of the %d generated images; mean is NaN", len(generated))
    report = {
        "backend": embedder.backend,
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "threshold": metric.threshold,
        "face_choice": FACE_CHOICE,
        "mean": None if math.isnan(mean) else mean,
        "faces_found": len(scores),
        "images": entries,
    }
    logger.info(
        "Identity score (%s, %s %s): mean %s over %d of %d images with a face (%d faces in all), %d reference photos",
        embedder.backend,
        embedder.model,
        metric.name,
        f"{mean:.4f}",
        len(scores),
        len(generated),
        sum(len(f) for f in faces),
        len(references),
    )
    caption = (
        f"{embedder.backend} {metric.name} ({metric.direction} is better), threshold {metric.threshold:g}, best-matching face",
        f"mean {mean:.3f}, faces {len(scores)}/{len(generated)}, references {len(references)}",
    )
    return IdentityResult(mean=mean, report=report, annotated=draw_grid(generated, faces, entries, caption))


def _entry(index: int, faces: list[FoundFace], references: list[np.ndarray], metric: Metric) -> dict[str, Any]:
    """One generated image's report entry: its best-matching face (`face_used`, counting left to right) of `faces`."""
    if not faces:
        return {"index": index, "face": False, "faces": 0, "face_used": None, "box": None, "score": None, "match": None}
    # Several reference photos: a face's score is the average of its pairwise scores.
    scores = [float(np.mean([metric.score(ref, face.embedding) for ref in references])) for face in faces]
    best = 0
    for k in range(1, len(scores)):
        if metric.better(scores[k], scores[best]):
            best = k
    box = [round(v, 1) for v in faces[best].box]
    return {"index": index, "face": True, "faces": len(faces), "face_used": best, "box": box, "score": scores[best],
            "match": metric.matches(scores[best])}


def _tile(rgb: np.ndarray, faces: list[FoundFace], entry: dict[str, Any]) -> Image.Image:
    canvas, scale, ox, oy, new_w, new_h = fit_in_square(to_uint8(rgb), TILE)
    draw = ImageDraw.Draw(canvas)
    if not faces:
        draw.rectangle((ox, oy, ox + new_w - 1, oy + new_h - 1), outline=NO_FACE, width=5)
        label, color = f"#{entry['index']} no face", NO_FACE
    else:
        color = MATCH if entry["match"] else NO_MATCH
        for k, face in enumerate(faces):  # the scored face last, so its box is on top
            if k != entry["face_used"]:
                x0, y0, x1, y1 = (round(v * scale) for v in face.box)
                draw.rectangle((x0 + ox, y0 + oy, x1 + ox, y1 + oy), outline=OTHER_FACE, width=1)
        x0, y0, x1, y1 = (round(v * scale) for v in faces[entry["face_used"]].box)
        draw.rectangle((x0 + ox, y0 + oy, x1 + ox, y1 + oy), outline=color, width=2)
        label = f"#{entry['index']} {entry['score']:.3f}" + (f" ({len(faces)} faces)" if len(faces) > 1 else "")
    font = ImageFont.load_default()
    draw.rectangle((0, 0, len(label) * 7 + 10, 20), fill=(0, 0, 0))
    draw.text((5, 4), label, fill=color, font=font)
    return canvas


def draw_grid(
    generated: list[np.ndarray], faces: list[list[FoundFace]], entries: list[dict[str, Any]], caption: tuple[str, str]
) -> torch.Tensor:
    """The generated images as TILE px tiles (the scored face's box and score, other faces in grey, red frame when no
    face) under a caption line."""
    columns = math.ceil(math.sqrt(len(generated)))
    rows = math.ceil(len(generated) / columns)
    sheet = Image.new("RGB", (max(columns * TILE, 2 * TILE), CAPTION_HEIGHT + rows * TILE))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for line, text in enumerate(caption):
        draw.text((6, 5 + 20 * line), text, fill=(255, 255, 255), font=font)
    for i, (rgb, found, entry) in enumerate(zip(generated, faces, entries, strict=True)):
        top, left = CAPTION_HEIGHT + (i // columns) * TILE, (i % columns) * TILE
        sheet.paste(_tile(rgb, found, entry), (left, top))
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)[None]
