from __future__ import annotations

from comfy_api.latest import io

from ..cross_init_core.settings import DEFAULT_REG_WEIGHT, LossSettings
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
                               tooltip="Weight of mean ||v - v_init|| (keeps tokens near their start; 0 = off, "
                                       "method default 1e-5, 1e-3 and up holds them almost fixed)."),
                io.Float.Input("background_weight", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Loss weight outside the face when the trainer gets masks: 1 = whole image "
                                       "(off), 0 = face only. Ignored without masks."),
            ],
            outputs=[LossSettingsType.Output(display_name="loss", tooltip="Connect to the trainer's loss input.")],
        )

    @classmethod
    def execute(cls, reg_weight: float, background_weight: float = 1.0) -> io.NodeOutput:  # type: ignore[override]
        return io.NodeOutput(LossSettings(reg_weight=reg_weight, background_weight=background_weight).validated())
