"""CrossInitLoadPhotos: photos from ComfyUI's input folder, each whole and upright, as an image list."""

from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core import host
from ..cross_init_core.face import photo_files
from .common import CATEGORY

_DESCRIPTION = (
    "Loads photos from ComfyUI's input folder as an image list: each photo whole, at its own size, and upright (the "
    "EXIF orientation phones write is applied). Unlike Load Image + Image Batch, photos of different shapes are not "
    "cropped to the first one's shape. Feed it to Cross-Init Face Prep or to the identity score's reference."
)


class CrossInitLoadPhotos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitLoadPhotos",
            display_name="Cross-Init Load Photos",
            category=CATEGORY,
            description=_DESCRIPTION,
            inputs=[
                io.String.Input(
                    "files",
                    multiline=True,
                    default="",
                    tooltip="One file name per line, relative to ComfyUI's input folder, as Load Image lists it (e.g. me.jpg or "
                    "faces/me2.png).",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "images",
                    display_name="images",
                    is_output_list=True,
                    tooltip="One image per photo, each at its own size and upright (an image list).",
                ),
            ],
        )

    @classmethod
    def execute(cls, files: str) -> io.NodeOutput:
        return io.NodeOutput(photo_files.load_photos(photo_files.photo_names(files), host.input_file_path))
