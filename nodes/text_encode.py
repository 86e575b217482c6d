from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core.common.prompt_text import PLACEHOLDER
from ..cross_init_core.method import personalized_encode
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
                # newer and last, so saved workflows still load: a prompt typed once in a text node reaches every node
                # that needs it through this labelled socket (newer frontends hide a widget fed by a link)
                io.String.Input("prompt", optional=True, force_input=True,
                                tooltip="The prompt from a text node (String (Multiline)): used instead of text, so one "
                                        "prompt can feed this node and Cross-Init Prompt Score."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning with the learned face tokens, for any sampler.")],
        )

    @classmethod
    def execute(cls, clip, embedding, text: str, placeholder: str = PLACEHOLDER,  # type: ignore[override]
                prompt: str | None = None) -> io.NodeOutput:
        return io.NodeOutput(personalized_encode.encode_prompt(clip, embedding, text if prompt is None else prompt, placeholder))
