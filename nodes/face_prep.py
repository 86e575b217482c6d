"""CrossInitFacePrep: photos of one person -> aligned face crops, face masks and a detection preview."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..cross_init_core import face
from .common import CATEGORY

_DESCRIPTION = (
    "Finds the face in each photo, aligns it (eyes level, same size and place) to a square crop and "
    "outputs the crops, a mask of the face in each crop (for a face-only loss) and a preview with the "
    "detections drawn. 1-5 photos of one person work best. Uses insightface when installed and its "
    "model files are in ComfyUI/models/insightface/models/<pack>/, else the built-in MTCNN detector (no download)."
)


class CrossInitFacePrep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitFacePrep",
            display_name="Cross-Init Face Prep",
            category=CATEGORY,
            description=_DESCRIPTION,
            # Lists let photos of different sizes in (e.g. from a folder loader); all crops leave as one batch.
            is_input_list=True,
            inputs=[
                io.Image.Input(
                    "image", tooltip="Photos of one person (an IMAGE batch, any sizes >= 64 px; RGBA and grayscale are accepted)."
                ),
                io.Combo.Input(
                    "detector",
                    options=list(face.DETECTORS),
                    default="auto",
                    tooltip=(
                        "auto: insightface if installed and its model files are found, else mtcnn. insightface: most robust, "
                        "needs model files. mtcnn: built in (MTCNN with 5 landmarks), no download, mostly frontal faces."
                    ),
                ),
                io.Combo.Input(
                    "model_pack",
                    options=list(face.MODEL_PACKS),
                    default="antelopev2",
                    tooltip=(
                        "insightface model pack, in ComfyUI/models/insightface/models/<pack>/ (or an `insightface:` folder of "
                        "extra_model_paths.yaml)."
                    ),
                ),
                io.Combo.Input(
                    "provider",
                    options=list(face.PROVIDERS),
                    default="CPU",
                    tooltip=(
                        "onnxruntime device for insightface: CPU, CUDA (needs onnxruntime-gpu), ROCm, CoreML (macOS). Falls "
                        "back to CPU with a log line if missing."
                    ),
                ),
                io.Int.Input(
                    "crop_size",
                    default=512,
                    min=face.MIN_CROP,
                    max=face.MAX_CROP,
                    step=8,
                    tooltip=f"Side of the square face crops in pixels ({face.MIN_CROP}-{face.MAX_CROP}); 512 for SD1.x, 1024 for SDXL.",
                ),
                io.Float.Input(
                    "margin",
                    default=face.DEFAULT_MARGIN,
                    min=0.0,
                    max=face.MAX_MARGIN,
                    step=0.05,
                    tooltip=(
                        f"How much is kept around the face, 0-{face.MAX_MARGIN}: 0 = the face alone, from brows to chin; "
                        f"{face.DEFAULT_MARGIN} (default) = the whole head with hair, as in portrait photos; 1.0 = head "
                        "and shoulders. The token learns what the crops show."
                    ),
                ),
                io.Combo.Input(
                    "face_select",
                    options=list(face.FACE_SELECTIONS),
                    default="largest",
                    tooltip=(
                        "Which face to use when a photo shows several: largest, closest to the center, leftmost, rightmost, "
                        "or the most confident detection."
                    ),
                ),
                io.Combo.Input(
                    "on_no_face",
                    options=list(face.ON_NO_FACE),
                    default="error",
                    tooltip=(
                        "error: stop and name the photo without a face. skip: drop that photo and go on (an error if no photo is left)."
                    ),
                ),
            ],
            outputs=[
                io.Image.Output(
                    "images", display_name="images", tooltip="Aligned square face crops, crop_size x crop_size, one per photo with a face."
                ),
                io.Mask.Output(
                    "masks",
                    display_name="masks",
                    tooltip="1 on the face in each crop (0 outside the face and where the crop extends past the photo).",
                ),
                io.Image.Output(
                    "preview",
                    display_name="preview",
                    tooltip="Each input photo with its detections: chosen face green, others yellow, red frame = no face.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, detector: str | list[str] | None = None) -> bool | str:  # type: ignore[override]
        """Accepts detector names saved by earlier versions (e.g. `opencv`) besides the current options.

        Declaring `detector` here makes the host skip its own combo check for it (0.33+ checks V3 combos).
        """
        values = detector if isinstance(detector, list) else [detector]
        for value in values:
            if value is None:
                continue
            try:
                face.resolve_detector(value)
            except face.FacePrepError as exc:
                return str(exc)
        return True

    @classmethod
    def execute(
        cls,
        image: list[torch.Tensor],
        detector: list[str],
        model_pack: list[str],
        provider: list[str],
        crop_size: list[int],
        margin: list[float],
        face_select: list[str],
        on_no_face: list[str],
    ) -> io.NodeOutput:
        # is_input_list makes every input a list; the options are widgets, so one value each.
        options = face.FacePrepOptions(
            detector=detector[0],
            model_pack=model_pack[0],
            provider=provider[0],
            crop_size=crop_size[0],
            margin=margin[0],
            face_select=face_select[0],
            on_no_face=on_no_face[0],
        )
        result = face.prepare_faces(list(image), options)
        return io.NodeOutput(result.images, result.masks, result.preview)
