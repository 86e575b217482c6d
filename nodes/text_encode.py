from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core import personalized_encode
from ..cross_init_core.prompt_text import PLACEHOLDER
from .common import CATEGORY, Embedding


class CrossInitCLIPTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitCLIPTextEncode",
            display_name="Cross-Init CLIP Text Encode",
            category=CATEGORY,
            description="Encodes a prompt in which the placeholder stands for the learned face tokens.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP the embedding was trained with."),
                Embedding.Input("embedding", tooltip="A trained (or loaded) Cross-Init embedding."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default=f"a photo of {PLACEHOLDER} person",
                                tooltip="The prompt; write the placeholder where the person goes. Weights like "
                                        "(<face>:1.2) work as in CLIPTextEncode."),
                io.String.Input("placeholder", default=PLACEHOLDER, optional=True,
                                tooltip="The marker in the text that stands for the learned tokens."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning with the learned face tokens, for any sampler.")],
        )

    @classmethod
    def execute(cls, clip, embedding, text: str, placeholder: str = PLACEHOLDER) -> io.NodeOutput:  # type: ignore[override]
        return io.NodeOutput(personalized_encode.encode_prompt(clip, embedding, text, placeholder))
