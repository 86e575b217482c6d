"""Pivotal tuning nodes: train a UNet LoRA around a Cross-Init token, save it with the token bundled, load any
bundled LoRA file (ours, A1111-style, OneTrainer) with its token."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io, ui

from ..cross_init_core import host
from ..cross_init_core.common import settings as token_settings
from ..cross_init_core.common.embedding_names import (
    LORA_DOWNLOAD_SUBFOLDER,
    MAX_RUN_STEPS,
    validate_bundle_name,
    validate_name,
    validate_run_name,
)
from ..cross_init_core.common.errors import EmbeddingExistsError, EmbeddingFileError, InvalidInputError
from ..cross_init_core.embeddings import embedding_io
from ..cross_init_core.lora import files, stage
from ..cross_init_core.lora import settings as lora_settings
from ..cross_init_core.lora.weights import LoraModel
from ..cross_init_core.training import loss_plot, preview
from ..cross_init_core.training.memory import MEMORY_CHOICES, parse_memory
from ..cross_init_core.training.preview import MAX_PREVIEW_STEPS, PREVIEW_PROMPT, PREVIEW_STEPS
from .common import CATEGORY, UNLINKED, Embedding, LossSettingsType, refuse_taken_saves, single

log = logging.getLogger(__name__)

# ComfyUI's own LoRA state-dict type (TrainLoraNode, Load LoRA Model, Save LoRA Weights; 0.3.75 and 0.33 alike)
LoraModelType = io.Custom("LORA_MODEL")
_FAST, _FULL = lora_settings.PRESETS["fast"], lora_settings.PRESETS["full"]


def _preset_text(preset: lora_settings.LoraSettings) -> str:
    return (f"rank {preset.rank}, alpha {preset.alpha:g}, lr {preset.learning_rate:g}, {preset.steps} steps of "
            f"batch {preset.batch_size}")


class CrossInitPivotalLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitPivotalLora",
            display_name="Cross-Init Pivotal LoRA",
            category=CATEGORY,
            is_experimental=True,
            description=(
                "Pivotal tuning: trains a small LoRA on the UNet's attention around your trained Cross-Init token, for a "
                "stronger likeness than the token alone. The token stays as it is unless token_learning_rate > 0. Your "
                "models are not changed; the model output is a patched copy for sampling."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD 1.x/2.x eps or v, SDXL) the token was trained on."),
                io.Clip.Input("clip", tooltip="The CLIP from the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE from the same checkpoint (encodes the faces once)."),
                io.Image.Input("images", tooltip="The face photos the token was trained on (face prep's output)."),
                Embedding.Input("embedding", tooltip="The pivot: the trainer's embedding, a loaded file, or the "
                                                     "checkpoint report's best."),
                io.Combo.Input("mode", options=list(lora_settings.MODES), default="fast",
                               tooltip=f"fast: {_preset_text(_FAST)}. full: {_preset_text(_FULL)} (replicate cog-sdxl's "
                                       "pivotal trainer). custom: uses rank, alpha, learning_rate, steps and batch_size."),
                io.Int.Input("rank", default=_FAST.rank, min=lora_settings.RANK.low, max=lora_settings.RANK.high,
                             tooltip="LoRA rank (custom mode): 8-32 is usual for a face; higher = bigger file, more capacity."),
                io.Float.Input("alpha", default=_FAST.alpha, min=0.01, max=lora_settings.ALPHA_MAX, step=0.5,
                               tooltip="LoRA alpha (custom mode): the update is scaled by alpha / rank."),
                io.Float.Input("learning_rate", default=_FAST.learning_rate, min=token_settings.LEARNING_RATE_WIDGET_MIN,
                               max=token_settings.LEARNING_RATE_MAX, step=1e-5,
                               tooltip="AdamW learning rate of the LoRA (custom mode; 1e-4 is the anchors' default)."),
                io.Int.Input("steps", default=_FAST.steps, min=token_settings.STEPS.low, max=token_settings.STEPS.high,
                             tooltip="Training steps (custom mode)."),
                io.Int.Input("batch_size", default=_FAST.batch_size, min=token_settings.BATCH_SIZE.low,
                             max=token_settings.BATCH_SIZE.high, tooltip="Samples per step (custom mode)."),
                io.Float.Input("token_learning_rate", default=0.0, min=0.0, max=lora_settings.TOKEN_LEARNING_RATE_MAX,
                               step=1e-5, tooltip="0 = the token stays at its pivot (default). Above 0 (e.g. 1e-4) the token "
                                                  "trains on, pulled toward its Cross-Init start by reg_weight."),
                io.Int.Input("seed", default=0, min=token_settings.SEED.low, max=token_settings.SEED.high,
                             control_after_generate=True, tooltip="Seed of the LoRA's start and the draws."),
                LossSettingsType.Input("loss", optional=True, tooltip="Optional loss settings (reg_weight for a training "
                                                                     "token, background_weight with masks)."),
                io.Mask.Input("masks", optional=True, tooltip="Optional face masks (face prep) for a face-weighted loss."),
                io.Int.Input("resolution", default=token_settings.AUTO_RESOLUTION, min=token_settings.AUTO_RESOLUTION,
                             max=token_settings.RESOLUTION.high, step=token_settings.RESOLUTION.multiple, optional=True,
                             tooltip="Training resolution; 0 = auto (1024 SDXL, 512 SD 1.x/2.x)."),
                io.Combo.Input("memory", options=list(MEMORY_CHOICES), default="auto", optional=True,
                               tooltip="GPU memory training may use, in GB, as the trainer's memory input."),
                io.Int.Input("save_every", default=0, min=0, max=token_settings.STEPS.high, optional=True,
                             tooltip="Every N steps (and at the end) keep the LoRA as a checkpoint (checkpoints output). "
                                     "0 = off."),
                io.Int.Input("preview_every", default=-1, min=-1, max=token_settings.STEPS.high, optional=True,
                             tooltip="Every N steps, show a quick sample of preview_prompt with the token and the LoRA so "
                                     "far beside your face. -1 = auto (about 5 previews), 0 = off (fastest)."),
                io.String.Input("preview_prompt", default=PREVIEW_PROMPT, optional=True,
                                tooltip="The prompt of the preview samples; write <face> where the person goes."),
                io.Int.Input("preview_steps", default=PREVIEW_STEPS, min=1, max=MAX_PREVIEW_STEPS, optional=True,
                             tooltip="Sampler steps of each preview sample."),
            ],
            outputs=[
                LoraModelType.Output(display_name="lora", tooltip="The LoRA (ComfyUI's LORA_MODEL): Cross-Init Save LoRA "
                                                                  "writes it with the token; core Load LoRA Model takes it too."),
                io.Model.Output(display_name="model", tooltip="Your model with the LoRA applied (a patched copy) for sampling."),
                Embedding.Output(display_name="embedding", tooltip="The token (unchanged unless token_learning_rate > 0)."),
                io.Image.Output(display_name="loss_curve", tooltip="Loss per step and its moving average."),
                LoraModelType.Output(display_name="checkpoints", is_output_list=True,
                                     tooltip="A list: the LoRA after every save_every steps and at the end, each with its "
                                             "step count; Cross-Init Save LoRA saves them as NAME-stepNNNN."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, embedding, mode: str, rank: int, alpha: float,  # type: ignore[override]
                learning_rate: float, steps: int, batch_size: int, token_learning_rate: float, seed: int, loss=None,
                masks=None, resolution: int = token_settings.AUTO_RESOLUTION, memory: str = "auto",
                save_every: int = 0, preview_every: int = -1, preview_prompt: str = PREVIEW_PROMPT,
                preview_steps: int = PREVIEW_STEPS) -> io.NodeOutput:
        refuse_taken_saves(cls)
        resolution = token_settings.auto_resolution(resolution, host.is_sdxl_model(model))
        custom = lora_settings.LoraSettings(rank=rank, alpha=alpha, learning_rate=learning_rate,
                                            token_learning_rate=token_learning_rate, steps=steps, batch_size=batch_size,
                                            seed=seed, resolution=resolution)
        chosen = lora_settings.resolve(mode, custom)
        if mode != "custom":
            log.info("Cross-Init LoRA %s preset: %s", mode, _preset_text(chosen))
        every = preview.default_interval(chosen.steps) if preview_every < 0 else preview_every
        hook = stage.progress_preview(model, clip, vae, images, chosen.resolution, chosen.seed, preview_prompt,
                                      preview_steps) if every > 0 else None
        result = stage.train_lora(model, clip, vae, images, embedding, chosen, loss, masks=masks,
                                  memory=parse_memory(memory), save_every=save_every, preview=hook, preview_every=every)
        curve = loss_plot.render_loss_curve(result.losses, result.regs)
        return io.NodeOutput(result.lora, result.model, result.embedding, curve, result.checkpoints)


class CrossInitSaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitSaveLora",
            display_name="Cross-Init Save LoRA",
            category=CATEGORY,
            is_experimental=True,
            description=(
                "Saves models/loras/NAME.safetensors (kohya/A1111 layout, the token bundled as bundle_emb.NAME) and "
                "models/embeddings/NAME.safetensors. Use with stock Load LoRA + embedding:NAME, A1111/Forge, or "
                "Cross-Init Load LoRA + Token. Given the checkpoints list, saves each as NAME-stepNNNN and the last as NAME."
            ),
            inputs=[
                # lazy: the node checks its names before whatever computes the LoRA (the training) runs
                LoraModelType.Input("lora", lazy=True, tooltip="The Pivotal LoRA node's lora, or its checkpoints list."),
                io.String.Input("name", default="my_face",
                                tooltip="File name without extension (letters, digits, _ -; a '.' only with bundle_token off); the "
                                        "token's prompt word too."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="On: replace existing files of those names. Off: a name already in use is "
                                         "refused when you press Run, before any training, and no file is touched."),
                Embedding.Input("embedding", optional=True, lazy=True,
                                tooltip="The token to bundle; empty: the token each LoRA was trained around."),
                io.Boolean.Input("bundle_token", default=True, optional=True,
                                 tooltip="Bundle the token into the LoRA file (A1111, OneTrainer, this pack read it). Off: "
                                         "the LoRA file holds only LoRA keys, as diffusers' load_lora_weights needs; the "
                                         "token is still saved in models/embeddings."),
                io.Boolean.Input("save_embedding", default=True, optional=True,
                                 tooltip="Also save the token alone as models/embeddings/NAME.safetensors. Off: only the "
                                         "LoRA file (when Cross-Init Save Embedding saves the token already)."),
                io.String.Input("token_name", default="", optional=True,
                                tooltip="The bundled token's name (A1111's prompt word) when it is not NAME; empty: NAME."),
                io.Boolean.Input("copy_to_output", default=False, optional=True,
                                 tooltip="Also put a copy of each LoRA file under output/cross_init_loras/, where "
                                         "ComfyUI's /view serves it: for scripts that fetch it over the HTTP API (the "
                                         "batch runner)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The LoRA file written (NAME.safetensors).")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
            is_input_list=True,  # the whole checkpoints list at once: every name is checked before any is written
        )

    @classmethod
    def _saver(cls) -> str:
        """This node's id in the graph ("" when called outside a graph, as tests do)."""
        return str(getattr(getattr(cls, "hidden", None), "unique_id", None) or "")

    @classmethod
    def _taken(cls, name: str, overwrite: bool, save_embedding: bool, allow_own: bool) -> str | None:
        """Why `name` cannot be saved to (taken, and overwrite off), or None. `allow_own`: files this node wrote in
        this session pass (the queue check: a graph run again after its own save is served from ComfyUI's cache)."""
        loras, embeddings = host.lora_directories(), host.embedding_directories()
        if overwrite:
            return None
        taken = files.taken_files(name, loras[0] if loras else None,
                                  embeddings[0] if embeddings and save_embedding else None)
        if not taken or (allow_own and embedding_io.written_by(cls._saver(), taken)):
            return None
        return files.taken_message(taken, name)

    @classmethod
    def validate_inputs(cls, name=None, overwrite=False, token_name=None,  # type: ignore[override]
                        save_embedding=None, bundle_token=None) -> bool | str:
        """Runs when the graph is queued (Run), so an unusable or taken name is refused before any training starts:
        a bad name, one too long for the checkpoints NAME-stepNNNN a run could write, a bundled token's name with a
        dot, or a taken NAME or NAME-stepNNNN in the loras or embeddings folder (overwrite off). A name linked from
        another node is checked when the node runs."""
        name, overwrite = single(name), single(overwrite)
        token = single(token_name) if token_name is not None else ""
        bundling = single(bundle_token) is not False
        if isinstance(token, str) and token.strip():  # an empty token_name means NAME
            try:
                validate_name(token)
            except InvalidInputError as exc:
                return f"token_name: {exc}"
            try:
                if bundling:
                    validate_bundle_name(token, "token_name")
            except InvalidInputError as exc:
                return str(exc)
        if not isinstance(name, str):
            return True
        try:
            validate_run_name(name, MAX_RUN_STEPS)
            if bundling and not (isinstance(token, str) and token.strip()):
                validate_bundle_name(name)
        except InvalidInputError as exc:
            return str(exc)
        with_token = single(save_embedding) is not False
        return cls._taken(name, overwrite is True, with_token, allow_own=True) or True

    @classmethod
    def check_lazy_status(cls, name, overwrite, lora=None, embedding=UNLINKED,  # type: ignore[override]
                          bundle_token=None, save_embedding=None, token_name=None, copy_to_output=None) -> list[str]:
        """Runs before the LoRA is computed: a taken name stops the graph here rather than after the training."""
        name, overwrite = single(name), bool(single(overwrite))
        validate_run_name(name, MAX_RUN_STEPS)
        problem = cls._taken(name, overwrite, single(save_embedding) is not False, allow_own=False)
        if problem:
            raise EmbeddingExistsError(problem)
        return ["lora"] if embedding is UNLINKED else ["lora", "embedding"]

    @classmethod
    def execute(cls, lora, name, overwrite, embedding=None, bundle_token=None,  # type: ignore[override]
                save_embedding=None, token_name=None, copy_to_output=None) -> io.NodeOutput:
        name, overwrite = single(name), bool(single(overwrite))
        bundle = bool(single(bundle_token)) if bundle_token is not None else True
        with_embedding = bool(single(save_embedding)) if save_embedding is not None else True
        token_stem = str(single(token_name) or "").strip() if token_name is not None else ""
        copy = bool(single(copy_to_output)) if copy_to_output is not None else False
        if isinstance(embedding, list) and len(embedding) > 1:
            raise InvalidInputError(f"embedding: got a list of {len(embedding)} tokens (a checkpoints output?); connect the "
                                    "one token the LoRA was trained around, or leave embedding empty to bundle each "
                                    "LoRA's own token.")
        token = single(embedding) if embedding is not None else None
        loras = lora if isinstance(lora, list) else [lora]
        folders, embedding_folders = host.lora_directories(), host.embedding_directories()
        if not folders:
            raise InvalidInputError("name: ComfyUI has no loras folder configured (models/loras).")
        named = []
        for item, file_name in files.pivotal_names(loras, name):
            if not isinstance(item, dict):
                raise InvalidInputError("lora: connect a LoRA (the Pivotal LoRA node's lora or checkpoints output).")
            item = item if isinstance(item, LoraModel) else LoraModel(item)
            named.append((item, token if token is not None else item.embedding, file_name))
        if bundle and any(t is None for _l, t, _n in named):
            raise InvalidInputError("embedding: this LoRA carries no token (it did not come from Cross-Init Pivotal LoRA); "
                                    "connect the embedding to bundle, or turn bundle_token off.")
        embeddings_folder = embedding_folders[0] if embedding_folders and with_embedding else None
        saved = files.save_pivotal(named, folders[0], embeddings_folder, overwrite=overwrite, bundle=bundle,
                                   token_name=token_stem)
        embedding_io.remember_written(cls._saver(), [*saved.loras, *saved.embeddings])
        stem = validate_name(name)
        message = "\n".join(f"Saved {path}." for path in [*saved.loras, *saved.embeddings])
        message += f"\nLoad {stem} with Load LoRA and write embedding:{stem} in the prompt (or Cross-Init Load LoRA + Token)."
        log.info(message)
        if not copy:
            return io.NodeOutput(str(saved.loras[-1]), ui=ui.PreviewText(message))
        # the UI result lands in /history: HTTP clients find each copy's name, size and checksum there (the last is NAME)
        entries = [{**embedding_io.copy_for_download(path, host.output_directory(), LORA_DOWNLOAD_SUBFOLDER),
                    "name": file_name, "steps": item.metadata.get("steps")}
                   for (item, _token, file_name), path in zip(named, saved.loras, strict=True)]
        return io.NodeOutput(str(saved.loras[-1]), ui={"text": [message], "cross_init_lora": entries})


class CrossInitLoadLoraToken(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CrossInitLoadLoraToken",
            display_name="Cross-Init Load LoRA + Token",
            category=CATEGORY,
            is_experimental=True,
            description=(
                "Loads a LoRA file from models/loras and its bundled token (bundle_emb.*, as A1111-style trainers and "
                "OneTrainer write it): the MODEL (and the CLIP where the file has text-encoder keys) with the LoRA applied, "
                "and the token as an embedding for Cross-Init CLIP Text Encode."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to apply the LoRA to."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint (the token must fit its encoders)."),
                io.Combo.Input("lora_name", options=host.list_lora_files(),
                               tooltip="A LoRA file with a bundled token (safetensors; pickles are refused)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="How strongly the LoRA changes the model (and CLIP)."),
                io.String.Input("token", default="", optional=True,
                                tooltip="The bundled token's name, when the file bundles several; empty: its only one."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the LoRA applied (a patched copy)."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the file's text-encoder LoRA, if it has one."),
                Embedding.Output(display_name="embedding", tooltip="The bundled token, for Cross-Init CLIP Text Encode."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model=None, clip=None, lora_name: str = "", strength: float = 1.0,  # type: ignore[override]
                           token: str = "") -> str:
        """A file re-saved under the same name is read again instead of served from ComfyUI's cache."""
        path = host.lora_file_path(lora_name) if lora_name else None
        if path is None:
            return f"missing:{lora_name}"
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}:{strength}:{token}"

    @classmethod
    def execute(cls, model, clip, lora_name: str, strength: float, token: str = "") -> io.NodeOutput:  # type: ignore[override]
        path = host.lora_file_path(lora_name) if lora_name else None
        if path is None:
            raise EmbeddingFileError(f"lora_name: {lora_name!r} is not in the loras folders; refresh the node list (press R).")
        lora_file = files.read_lora_file(path)
        slots = host.check_model_matches_clip(model, clip)
        embedding = files.bundled_embedding(lora_file, slots, token.strip())
        applied = host.apply_lora(model, clip, lora_file.lora, strength, strength)
        if applied.unused:
            raise InvalidInputError(
                f"lora_name: {len(applied.unused)} of the file's LoRA modules match no layer of this model (e.g. "
                f"{applied.unused[0]}); the LoRA is for another model family or block layout. Load it with its own "
                "checkpoint.")
        if applied.misfits:
            raise InvalidInputError(
                f"lora_name: {len(applied.misfits)} of the file's LoRA modules do not fit this model's layers ("
                f"{applied.misfits[0]}); the LoRA was made for another model family. Load it with its own checkpoint.")
        log.info("Cross-Init: %s applied (%d UNet and %d text-encoder modules, strength %g) with token %s", lora_name,
                 applied.unet_modules, applied.clip_modules, strength, embedding.metadata.get("bundle_name"))
        return io.NodeOutput(applied.model, applied.clip, embedding)
