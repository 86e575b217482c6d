from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core.common.settings import DEFAULT_REG_WEIGHT, LossSettings
from .common import CATEGORY, LossSettingsType


class CrossInitLossSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitLossSettings",
            display_name="Cross-Init Loss Settings",
            category=CATEGORY,
            description="Weights of the training objective: the pull toward the Cross-Init start and the face mask.",
            inputs=[
                io.Float.Input("reg_weight", default=DEFAULT_REG_WEIGHT, min=0.0, max=1.0, step=1e-6,
                               tooltip="How strongly the token is held near its start: higher keeps it easier to edit "
                                       "with prompts, lower lets it match the face more closely. 0 = off; the method's "
                                       "1e-5 is the default; 1e-3 and up holds it almost still."),
                io.Float.Input("background_weight", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much the background counts when the trainer gets face masks: 1 = as much as "
                                       "the face (masks change nothing), 0 = only the face is learned. Without masks it "
                                       "changes nothing."),
            ],
            outputs=[LossSettingsType.Output(display_name="loss", tooltip="Connect to the trainer's loss input.")],
        )

    @classmethod
    def execute(cls, reg_weight: float, background_weight: float = 1.0) -> io.NodeOutput:  # type: ignore[override]
        return io.NodeOutput(LossSettings(reg_weight=reg_weight, background_weight=background_weight).validated())
