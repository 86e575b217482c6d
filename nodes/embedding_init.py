from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core.method import initialization
from ..cross_init_core.method import names as name_lists
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
                                tooltip="One name per line to average (duplicates count twice). Empty = the list "
                                        "chosen in name_list (recommended). Names written here take precedence."),
                io.Combo.Input("source", options=["names", "words"], default="names",
                               tooltip="Where the face token starts. names: the average of many well-known people's names "
                                       "(the method; a start that already reads as a person). words: the words typed in "
                                       "names, e.g. 'woman face', as the start."),
                # optional, so API prompts saved before this input existed still run (with the default)
                io.Combo.Input("name_list", options=list(name_lists.NAME_LIST_FILES), default=name_lists.DEFAULT_NAME_LIST,
                               optional=True,
                               tooltip="Used when names is empty. reference: the paper's list "
                                       f"({len(name_lists.builtin_names('reference'))} lines as its training script "
                                       "reads them, repeats kept), which gives the paper's start vectors. pack: this "
                                       f"pack's own list of {len(name_lists.builtin_names('pack'))} well-known people."),
            ],
            outputs=[Embedding.Output(display_name="embedding", tooltip="Start vectors (per text encoder) for the trainer.")],
        )

    @classmethod
    def execute(cls, clip, num_tokens: int, names: str, source: str = "names",  # type: ignore[override]
                name_list: str = name_lists.DEFAULT_NAME_LIST) -> io.NodeOutput:
        lines = name_lists.names_from_input(names, name_list)
        return io.NodeOutput(initialization.cross_initialize(clip, num_tokens, lines, source))
