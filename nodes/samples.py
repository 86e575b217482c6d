"""Cross-Init Sample Batch: the samples of several prompts as one batch, with their prompts, for the scores."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..cross_init_core import scoring
from ..cross_init_core.common.errors import InvalidInputError
from .common import CATEGORY

PAIRS = 4  # prompts one node can take


class CrossInitSampleBatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = []
        for number in range(1, PAIRS + 1):
            optional = number > 1
            inputs += [
                io.Image.Input(f"image_{number}", optional=optional,
                               tooltip=f"The images rendered from prompt_{number}."),
                io.String.Input(f"prompt_{number}", optional=optional, force_input=True,
                                tooltip=f"The prompt image_{number} was rendered from (the same text node that feeds its "
                                        "text encoder)."),
            ]
        return io.Schema(
            node_id="CrossInitSampleBatch",
            display_name="Cross-Init Sample Batch",
            category=CATEGORY,
            description=(
                "Puts the samples of up to four prompts into one batch, in order, and lists their prompts one line per "
                "image: connect images to Identity Score and Prompt Score, prompts to Prompt Score's prompts."
            ),
            inputs=inputs,
            outputs=[
                io.Image.Output(display_name="images", tooltip="Every image, prompt by prompt."),
                io.String.Output(display_name="prompts", tooltip="The prompt of each image, one line per image."),
            ],
        )

    @classmethod
    def execute(cls, image_1: torch.Tensor, prompt_1: str, **more: torch.Tensor | str | None) -> io.NodeOutput:  # type: ignore[override]
        images, prompts = [image_1], [prompt_1]
        for number in range(2, PAIRS + 1):
            image, text = more.get(f"image_{number}"), more.get(f"prompt_{number}")
            if image is None and text is None:
                continue
            if image is None or text is None:
                missing = f"image_{number}" if image is None else f"prompt_{number}"
                raise InvalidInputError(f"{missing}: connect it too, or disconnect its pair (each image needs its prompt).")
            images.append(image)
            prompts.append(str(text))
        batch, lines = scoring.sample_batch(images, prompts)
        return io.NodeOutput(batch, lines)
