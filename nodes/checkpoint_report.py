"""Cross-Init Checkpoint Report: the best step of a run, from its checkpoints and their scores; Cross-Init LoRA
Checkpoint Report: the same for the pivotal LoRA stage's checkpoints, by the same rule (a node of its own, so each
input and output has one type: embeddings there, LORA_MODEL here)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..cross_init_core.scoring import checkpoint_report
from .common import CATEGORY, Embedding, single
from .pivotal import LoraModelType

_RULE = checkpoint_report.RULE.format(margin="prompt_tolerance", direction="highest ArcFace cosine, or lowest dlib distance")


def _score_inputs() -> list[io.Input]:
    """The reports and the tolerance, alike in both report nodes."""
    return [
        io.String.Input("identity", optional=True, force_input=True,
                        tooltip="The report output of Cross-Init Identity Score run on each checkpoint's samples "
                                "(one report per checkpoint, in the same order)."),
        io.String.Input("prompt", optional=True, force_input=True,
                        tooltip="The report output of Cross-Init Prompt Score run on each checkpoint's samples "
                                "(one report per checkpoint, in the same order)."),
        # named apart from Face Prep's `margin` (room around the face), which means something else
        io.Float.Input("prompt_tolerance", default=checkpoint_report.DEFAULT_MARGIN, min=0.0, max=1.0, step=0.001,
                       tooltip="How much prompt score you give up for a closer likeness: the best step is the "
                               "best likeness among the steps whose prompt score is at most this far below the "
                               "best one. 0 = the step that follows prompts best; larger = likeness counts more."),
    ]


def _report_outputs() -> list[io.Output]:
    return [
        io.String.Output(display_name="table", tooltip="One line per checkpoint: step, identity, faces found, "
                                                       "prompt score, loss; the best marked."),
        io.String.Output(display_name="json", tooltip="The same table as JSON, with the rule and the best step."),
        io.Image.Output(display_name="plot", tooltip="Identity, prompt score and loss against step; the best step "
                                                     "marked in yellow."),
    ]


def _report(items: list, identity, prompt, prompt_tolerance, stage: str):  # type: ignore[no-untyped-def]
    """(report, text, plot) of one list of checkpoints (ComfyUI hands every input of an input-list node as a list)."""
    margin_value = single(prompt_tolerance) if prompt_tolerance is not None else checkpoint_report.DEFAULT_MARGIN
    report = checkpoint_report.build_report(items, list(identity or []), list(prompt or []), float(margin_value), stage)
    return report, report.as_text(), checkpoint_report.render_plot(report)


class CrossInitCheckpointReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitCheckpointReport",
            display_name="Cross-Init Checkpoint Report",
            category=CATEGORY,
            description=(
                "Which step to keep: the trainer's checkpoints with the identity and prompt scores of each one's samples "
                f"give a table, a plot of identity, prompt score and loss against step, and the best checkpoint: {_RULE}."
            ),
            inputs=[
                Embedding.Input("checkpoints", tooltip="The trainer's checkpoints output (a list)."),
                *_score_inputs(),
            ],
            outputs=[
                *_report_outputs(),
                Embedding.Output(display_name="best", tooltip="The best checkpoint: save it with Cross-Init Save Embedding."),
            ],
            is_output_node=True,
            is_input_list=True,  # every checkpoint and score at once
        )

    @classmethod
    def execute(cls, checkpoints, identity=None, prompt=None, prompt_tolerance=None) -> io.NodeOutput:  # type: ignore[override]
        report, text, plot = _report(list(checkpoints), identity, prompt, prompt_tolerance, "token")
        return io.NodeOutput(text, report.as_json(), plot, checkpoints[report.best], ui=ui.PreviewText(text))


class CrossInitLoraCheckpointReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitLoraCheckpointReport",
            display_name="Cross-Init LoRA Checkpoint Report",
            category=CATEGORY,
            is_experimental=True,
            description=(
                "Which LoRA step to keep: Cross-Init Pivotal LoRA's checkpoints with the identity and prompt scores of "
                "each one's samples (sampled with that LoRA on the model) give a table, a plot of identity, prompt score "
                f"and loss against step, and the best LoRA, by the Checkpoint Report's rule: {_RULE}."
            ),
            inputs=[
                LoraModelType.Input("checkpoints", tooltip="Cross-Init Pivotal LoRA's checkpoints output (a list)."),
                *_score_inputs(),
            ],
            outputs=[
                *_report_outputs(),
                LoraModelType.Output(display_name="best", tooltip="The best LoRA checkpoint: save it with Cross-Init Save "
                                                                  "LoRA (its token is bundled)."),
                Embedding.Output(display_name="token", tooltip="The token the best LoRA was trained around (the pivot, "
                                                               "or where it trained on to)."),
            ],
            is_output_node=True,
            is_input_list=True,  # every checkpoint and score at once
        )

    @classmethod
    def execute(cls, checkpoints, identity=None, prompt=None, prompt_tolerance=None) -> io.NodeOutput:  # type: ignore[override]
        report, text, plot = _report(list(checkpoints), identity, prompt, prompt_tolerance, "lora")
        best = checkpoints[report.best]
        return io.NodeOutput(text, report.as_json(), plot, best, getattr(best, "embedding", None), ui=ui.PreviewText(text))
