"""Cross-Init Checkpoint Report: the best step of a run, from its checkpoints and their scores."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..cross_init_core.scoring import checkpoint_report
from .common import CATEGORY, Embedding, single

_RULE = checkpoint_report.RULE.format(margin="prompt_tolerance", direction="highest ArcFace cosine, or lowest dlib distance")


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
            ],
            outputs=[
                io.String.Output(display_name="table", tooltip="One line per checkpoint: step, identity, faces found, "
                                                               "prompt score, loss; the best marked."),
                io.String.Output(display_name="json", tooltip="The same table as JSON, with the rule and the best step."),
                io.Image.Output(display_name="plot", tooltip="Identity, prompt score and loss against step; the best step "
                                                             "marked in yellow."),
                Embedding.Output(display_name="best", tooltip="The best checkpoint: save it with Cross-Init Save Embedding."),
            ],
            is_output_node=True,
            is_input_list=True,  # every checkpoint and score at once
        )

    @classmethod
    def execute(cls, checkpoints, identity=None, prompt=None, prompt_tolerance=None) -> io.NodeOutput:  # type: ignore[override]
        margin_value = single(prompt_tolerance) if prompt_tolerance is not None else checkpoint_report.DEFAULT_MARGIN
        report = checkpoint_report.build_report(list(checkpoints), list(identity or []), list(prompt or []), float(margin_value))
        text = report.as_text()
        plot = checkpoint_report.render_plot(report)
        return io.NodeOutput(text, report.as_json(), plot, checkpoints[report.best], ui=ui.PreviewText(text))
