"""Photo files -> ComfyUI images, each whole and upright: the EXIF orientation a phone writes is applied, and
photos of different shapes stay separate images of their own sizes (a list), never cropped to a common shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import InvalidImageError


def photo_names(text: str) -> list[str]:
    """The file names of a multiline input: one per non-blank line, surrounding spaces removed."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_photo(path: str) -> torch.Tensor:
    """One photo file as an IMAGE batch of one [1, H, W, 3], EXIF orientation applied (RGB; alpha dropped)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)  # a phone's sideways JPEG with Orientation=6 becomes upright
        rgb = np.asarray(upright.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb)[None]


def load_photos(names: Sequence[str], resolve: Callable[[str], str | None], input_name: str = "files") -> list[torch.Tensor]:
    """Each named photo as its own IMAGE batch of one, in order. `resolve` gives a name's file (None when there is
    none). Every name is checked before any photo is read; errors name the input, the file and the fix."""
    if not names:
        raise InvalidImageError(f"Input `{input_name}` names no photo; write one file name of ComfyUI's input folder per line.")
    paths = []
    count = len(names)
    for number, name in enumerate(names, start=1):
        path = resolve(name)
        if path is None:
            raise InvalidImageError(
                f"Input `{input_name}`, file {number} of {count} ({name!r}): no such file in ComfyUI's input folder. Upload the photo "
                "(Load Image's upload button, or the /upload/image route) and write its name as Load Image lists it."
            )
        paths.append(path)
    photos = []
    for number, (name, path) in enumerate(zip(names, paths, strict=True), start=1):
        try:
            photos.append(load_photo(path))
        except (OSError, ValueError) as exc:  # PIL: UnidentifiedImageError is an OSError; truncated files too
            raise InvalidImageError(
                f"Input `{input_name}`, file {number} of {count} ({name!r}): not a readable image ({exc}). Replace the file with a "
                "PNG, JPEG, WebP or BMP photo."
            ) from exc
    return photos
