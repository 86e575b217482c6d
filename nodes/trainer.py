from __future__ import annotations

import logging

from comfy_api.latest import io

from ..cross_init_core import host
from ..cross_init_core.common import settings
from ..cross_init_core.common.settings import PRESETS
from ..cross_init_core.training import loss_plot, preview
from ..cross_init_core.training import trainer as training
from ..cross_init_core.training.memory import MEMORY_CHOICES, parse_memory
from ..cross_init_core.training.preview import MAX_PREVIEW_STEPS, PREVIEW_PROMPT, PREVIEW_STEPS
from .common import CATEGORY, Embedding, LossSettingsType, refuse_taken_saves

log = logging.getLogger(__name__)
FAST, FULL = PRESETS["fast"], PRESETS["full"]


class CrossInitTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitTrainer",
            display_name="Cross-Init Trainer",
            category=CATEGORY,
            description=(
                "Learns the embedding's tokens from face photos on the loaded MODEL/CLIP/VAE (textual inversion "
                "with the Cross-Init regularizer). Only the tokens are trained; your models are not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to train against (SD 1.x/2.x eps or v, SDXL)."),
                io.Clip.Input("clip", tooltip="The CLIP from the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE from the same checkpoint (encodes the faces once)."),
                io.Image.Input("images", tooltip="1-5 photos of one person's face (aligned square crops work best)."),
                Embedding.Input("embedding", tooltip="Where training starts: Cross-Init Embedding Init for a new face, or Cross-Init "
                                "Load Embedding to go on from a saved file (its steps count on)."),
                LossSettingsType.Input("loss", optional=True, tooltip="Optional loss settings (default reg_weight 1e-5)."),
                io.Combo.Input("mode", options=list(settings.MODES), default="fast",
                               tooltip=f"How long and how hard to train. fast: {FAST.steps} steps, batch {FAST.batch_size}, "
                                       f"learning rate {FAST.learning_rate:g}, a good token in seconds on a GPU. full: the "
                                       f"paper's {FULL.steps} steps, batch {FULL.batch_size}, learning rate "
                                       f"{FULL.learning_rate:g}, the best likeness. custom: the paper's values, changed by "
                                       "the fields below. In every mode a field left at 0 keeps the mode's value."),
                io.Int.Input("steps", default=settings.USE_PRESET, min=settings.USE_PRESET, max=settings.STEPS.high,
                             tooltip=f"0 = the mode's ({FAST.steps} fast, {FULL.steps} full). More steps: a closer likeness, "
                                     "but prompts change the face less. To go on from a loaded embedding, the steps to add."),
                io.Int.Input("batch_size", default=settings.USE_PRESET, min=settings.USE_PRESET, max=settings.BATCH_SIZE.high,
                             tooltip=f"0 = the mode's ({FULL.batch_size}). Photo variations per step: more gives steadier "
                                     "training, and takes longer and more memory."),
                io.Float.Input("learning_rate", default=float(settings.USE_PRESET), min=float(settings.USE_PRESET),
                               max=settings.LEARNING_RATE_MAX, step=1e-4,
                               tooltip=f"0 = the mode's ({FAST.learning_rate:g} fast, {FULL.learning_rate:g} full). How far "
                                       "the token moves each step: higher learns faster but can drift from a natural face."),
                io.Int.Input("seed", default=0, min=settings.SEED.low, max=settings.SEED.high, control_after_generate=True,
                             tooltip="Seed for faces, flips, timesteps, noise and captions; same seed = same result on CPU."),
                io.Int.Input("resolution", default=settings.AUTO_RESOLUTION, min=settings.AUTO_RESOLUTION,
                             max=settings.RESOLUTION.high, step=settings.RESOLUTION.multiple, optional=True,
                             tooltip="Training resolution in pixels, a multiple of 64. 0 = auto: 1024 for SDXL, 512 for "
                                     "SD 1.x/2.x. SDXL on less memory: 768 or 512."),
                io.Mask.Input("masks", optional=True, tooltip="Optional face masks (from face prep) for a face-weighted loss; "
                                                                "set background_weight in the loss settings."),
                io.Combo.Input("memory", options=list(MEMORY_CHOICES), default="auto", optional=True,
                               tooltip="GPU memory training may use, in GB (weights + activations). auto: the free memory of "
                                       "the GPU (no limit on the CPU). A budget such as 8 splits each step's batch into "
                                       "smaller forward/backward passes and, if needed, turns on gradient checkpointing; "
                                       "the result is the same, only slower. none: no limit."),
                io.Int.Input("preview_every", default=-1, min=-1, max=settings.STEPS.high, optional=True,
                             tooltip="Every N steps, show a quick sample of preview_prompt with the current tokens beside "
                                     "your face in the progress preview. -1 = auto (about 5 previews), 0 = off (fastest)."),
                # the inputs below are newer: optional and last, so saved workflows and API prompts still load
                io.Int.Input("save_every", default=0, min=0, max=settings.STEPS.high, optional=True,
                             tooltip="Every N steps (and at the end) keep the tokens as a checkpoint in the checkpoints "
                                     "output, each with its step count, to pick the best step afterwards. 0 = off: the "
                                     "checkpoints output holds only the final tokens. The full preset with 80 gives 4."),
                io.String.Input("preview_prompt", default=PREVIEW_PROMPT, optional=True,
                                tooltip="The prompt of the preview samples (the validation image of each preview); write "
                                        "<face> where the person goes."),
                io.Int.Input("preview_steps", default=PREVIEW_STEPS, min=1, max=MAX_PREVIEW_STEPS, optional=True,
                             tooltip="Sampler steps of each preview sample (more: a truer picture, slower previews)."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[
                Embedding.Output(display_name="embedding", tooltip="The learned tokens: save them or use them in prompts."),
                io.Image.Output(display_name="loss_curve", tooltip="Loss per step (light), its moving average (dark) "
                                                                   "and the tokens' distance from their start "
                                                                   "(unweighted, orange, right axis)."),
                Embedding.Output(display_name="checkpoints", is_output_list=True,
                                 tooltip="A list: the tokens after every save_every steps and at the end, each with its "
                                         "step count (metadata steps). Connected nodes run once per checkpoint; Cross-Init "
                                         "Save Embedding saves them all as NAME-stepNNNN."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, embedding, mode: str, steps: int, batch_size: int,  # type: ignore[override]
                learning_rate: float, seed: int, loss=None, resolution: int = settings.AUTO_RESOLUTION, masks=None,
                memory: str = "auto", preview_every: int = -1, save_every: int = 0, preview_prompt: str = PREVIEW_PROMPT,
                preview_steps: int = PREVIEW_STEPS) -> io.NodeOutput:
        refuse_taken_saves(cls)
        resolution = settings.auto_resolution(resolution, host.is_sdxl_model(model))
        choice = settings.resolve_choice(mode, steps, batch_size, learning_rate, seed, resolution)
        chosen = choice.settings
        memory_settings = parse_memory(memory)
        log.info("Cross-Init %s", choice.describe(mode))
        every = preview.default_interval(chosen.steps) if preview_every < 0 else preview_every
        hook = preview.progress_preview(model, clip, vae, images, chosen.resolution, seed, preview_prompt,
                                        preview_steps) if every > 0 else None
        result = training.train(model, clip, vae, images, embedding, chosen, loss, masks=masks, mode=mode,
                                memory=memory_settings, preview=hook, preview_every=every, save_every=save_every)
        curve = loss_plot.render_loss_curve(result.losses, result.regs)
        return io.NodeOutput(result.embedding, curve, result.checkpoints)
