from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core import initialization
from ..cross_init_core import names as name_lists
from .common import CATEGORY, Embedding


class CrossInitEmbeddingInit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitEmbeddingInit",
            display_name="Cross-Init Embedding Init",
            category=CATEGORY,
            description=(
                "Starts new tokens at the text encoder's output for the average of well-known people's names "
                "(Cross Initialization), so training needs 25-320 steps instead of thousands."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP of the checkpoint you will generate with (SD 1.x, SD 2.x or SDXL)."),
                io.Int.Input("num_tokens", default=2, min=1, max=initialization.MAX_TOKENS,
                             tooltip="How many new tokens stand for the face (1-16; the method uses 2)."),
                io.String.Input("names", multiline=True, default="",
                                tooltip="One name per line to average. Empty = the built-in list of "
                                        f"{len(name_lists.builtin_names())} well-known people (recommended)."),
                io.Combo.Input("source", options=["names", "words"], default="names",
                               tooltip="names: column-wise mean of each name's BPE tokens (the method). words: the "
                                       "text's first tokens, e.g. 'woman face', also passed through the encoder."),
            ],
            outputs=[Embedding.Output(display_name="embedding", tooltip="Start vectors (per text encoder) for the trainer.")],
        )

    @classmethod
    def execute(cls, clip, num_tokens: int, names: str, source: str = "names") -> io.NodeOutput:  # type: ignore[override]
        lines = name_lists.names_from_input(names)
        return io.NodeOutput(initialization.cross_initialize(clip, num_tokens, lines, source))
