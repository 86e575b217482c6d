"""Caption templates for training (ImageNet-style photo templates around 'a face of {} person')."""

from __future__ import annotations

PHOTO_TEMPLATES: tuple[str, ...] = (
    "a photo of a face of {} person",
    "a rendering of a face of {} person",
    "a cropped photo of the face of {} person",
    "the photo of a face of {} person",
    "a photo of a clean face of {} person",
    "a photo of a dirty face of {} person",
    "a dark photo of the face of {} person",
    "a photo of my face of {} person",
    "a photo of the cool face of {} person",
    "a close-up photo of a face of {} person",
    "a bright photo of the face of {} person",
    "a cropped photo of a face of {} person",
    "a photo of the face of {} person",
    "a good photo of the face of {} person",
    "a photo of one face of {} person",
    "a close-up photo of the face of {} person",
    "a rendition of the face of {} person",
    "a photo of the clean face of {} person",
    "a rendition of a face of {} person",
    "a photo of a nice face of {} person",
    "a good photo of a face of {} person",
    "a photo of the nice face of {} person",
    "a photo of the small face of {} person",
    "a photo of the weird face of {} person",
    "a photo of the large face of {} person",
    "a photo of a cool face of {} person",
    "a photo of a small face of {} person",
)
