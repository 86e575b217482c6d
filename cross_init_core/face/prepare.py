"""Face preparation end to end: IMAGE batch -> aligned square crops, face masks and a preview."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .alignment import DEFAULT_MARGIN, MAX_MARGIN, face_oval_mask, similarity_transform, template_points, warp_face
from .choose import choose_detector
from .detection import FACE_SELECTIONS, Detection, FaceDetector, select_face
from .errors import FacePrepError, NoFaceError
from .images import split_batch, to_uint8
from .pixels import pad_edges, resize
from .preview import draw_preview

logger = logging.getLogger(__name__)

ON_NO_FACE = ("error", "skip")
MIN_CROP, MAX_CROP = 64, 2048
DETECT_MAX_PIXELS = 2048 * 2048  # detection runs on a copy no larger than this; crops come from the full photo
PAD_FRACTION = 0.3  # retry padding: detectors miss faces cut by the frame (close-ups)
UPSCALE_BELOW = 400  # retry 2x upscaled when the photo's long side is at most this


@dataclass(frozen=True)
class FacePrepOptions:
    detector: str = "auto"
    model_pack: str = "antelopev2"
    provider: str = "CPU"
    crop_size: int = 512
    margin: float = DEFAULT_MARGIN
    face_select: str = "largest"
    on_no_face: str = "error"

    def check(self) -> None:
        if not MIN_CROP <= self.crop_size <= MAX_CROP:
            raise FacePrepError(f"crop_size {self.crop_size} is outside {MIN_CROP}..{MAX_CROP}")
        if not 0.0 <= self.margin <= MAX_MARGIN:
            raise FacePrepError(f"margin {self.margin} is outside 0..{MAX_MARGIN}")
        if self.face_select not in FACE_SELECTIONS:
            raise FacePrepError(f"face_select {self.face_select!r} is not one of {', '.join(FACE_SELECTIONS)}")
        if self.on_no_face not in ON_NO_FACE:
            raise FacePrepError(f"on_no_face {self.on_no_face!r} is not one of {', '.join(ON_NO_FACE)}")


@dataclass
class FacePrepResult:
    images: torch.Tensor  # [N, S, S, 3] aligned crops
    masks: torch.Tensor  # [N, S, S] face oval inside the photo
    preview: torch.Tensor  # [B, P, P, 3] one per input photo, skipped ones framed red
    kept: list[int] = field(default_factory=list)  # input index of each crop
    faces: list[Detection | None] = field(default_factory=list)  # chosen face per input photo
    matrices: list[np.ndarray] = field(default_factory=list)  # source -> crop transform per crop
    detector: str = ""


def prepare_faces(image: torch.Tensor | Sequence[torch.Tensor], options: FacePrepOptions, input_name: str = "image") -> FacePrepResult:
    options.check()
    photos = split_batch(image, input_name)
    detector = choose_detector(options.detector, options.model_pack, options.provider)
    size, margin = options.crop_size, options.margin
    template = template_points(size, margin)
    oval = face_oval_mask(size, margin)
    crops, masks, previews, kept, chosen_faces, matrices = [], [], [], [], [], []
    for index, rgb in enumerate(photos):
        height, width = rgb.shape[:2]
        faces = find_faces(detector, rgb)
        label = f"#{index}"
        if not faces:
            message = (
                f"No face found in input `{input_name}`, image index {index} ({width}x{height} px) by the "
                f"{detector.name} detector, after retrying {detector.attempts} detection settings, with padding"
                f"{' and 2x upscaling' if max(height, width) <= UPSCALE_BELOW else ''}. Use a sharp, frontal, "
                "well-lit photo where the face is at least ~100 px wide (crop closer if it is small), "
                "or set on_no_face to `skip` to drop this image."
            )
            if options.on_no_face == "error":
                raise NoFaceError(message)
            logger.warning("%s Skipping it.", message)
            previews.append(draw_preview(rgb, [], None, label))
            chosen_faces.append(None)
            continue
        face = select_face(faces, options.face_select, width, height)
        matrix = similarity_transform(face.landmarks, template)
        _warn_if_upscaled(matrix, index, input_name)
        crop, valid = warp_face(rgb, matrix, size)
        crops.append(crop)
        masks.append(oval * valid)
        matrices.append(matrix)
        kept.append(index)
        chosen_faces.append(face)
        previews.append(draw_preview(rgb, faces, face, label))
    if not crops:
        raise NoFaceError(
            f"No face found in any of the {len(photos)} images of input `{input_name}`, so there is nothing "
            "to train on. See the warnings above for each image; use clearer, closer photos of the face."
        )
    logger.info("Face prep: %d face crops from %d photos with %s", len(crops), len(photos), detector.name)
    return FacePrepResult(
        images=torch.from_numpy(np.stack(crops)),
        masks=torch.from_numpy(np.stack(masks)),
        preview=torch.from_numpy(np.stack(previews)),
        kept=kept,
        faces=chosen_faces,
        matrices=matrices,
        detector=detector.name,
    )


def find_faces(detector: FaceDetector, rgb: np.ndarray) -> list[Detection]:
    """Faces in source pixel coordinates; retries every detector setting on each fallback view."""
    for view, pixels, factor, offset in _views(to_uint8(rgb)):
        for attempt in range(detector.attempts):
            faces = detector.detect(pixels, attempt)
            if faces:
                if view != "photo" or attempt:
                    logger.info("Face prep: face found on retry (%s, detector setting %d)", view, attempt)
                return [face.scaled(factor, offset) for face in faces]
    return []


def _views(rgb: np.ndarray) -> Iterator[tuple[str, np.ndarray, float, tuple[float, float]]]:
    """(name, pixels, factor, offset) with source = found * factor - offset, cheapest view first."""
    height, width = rgb.shape[:2]
    scale = min(1.0, (DETECT_MAX_PIXELS / (height * width)) ** 0.5)
    base = resize(rgb, max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1 else rgb
    scale_x = base.shape[1] / width  # the rounded size sets the real factor
    yield "photo", base, 1.0 / scale_x, (0.0, 0.0)
    pad = int(PAD_FRACTION * max(base.shape[:2]))
    yield "padded", pad_edges(base, pad), 1.0 / scale_x, (pad / scale_x, pad / scale_x)
    if max(base.shape[:2]) <= UPSCALE_BELOW:
        bigger = resize(base, base.shape[1] * 2, base.shape[0] * 2)
        yield "upscaled 2x", bigger, 0.5 / scale_x, (0.0, 0.0)


def _warn_if_upscaled(matrix: np.ndarray, index: int, input_name: str) -> None:
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if zoom > 2.0:
        logger.warning(
            "Face prep: input `%s`, image index %d: the face is small, its crop is enlarged %.1fx and will be "
            "soft; a closer or larger photo trains better.",
            input_name,
            index,
            zoom,
        )
