"""Generates the shipped workflows: the API-format graphs and their drag-and-drop (UI-format) versions.

The graphs are described once, in `build_api_workflow` below, and written as
  workflows/api/<name>.json        API format ({id: {class_type, inputs, _meta}}), what /prompt accepts
  workflows/<name>.json            UI format (nodes, links, widgets_values), what the editor opens; ComfyUI's
                                   template browser lists this folder too (one of its accepted folder names)
The UI files are derived from the API graphs with the node definitions of a headless ComfyUI (input
order, socket/widget split, extra `control_after_generate` and upload widget values), so they cannot
drift from the nodes; every supported ComfyUI version generates the same files (see HOST_DEPENDENT_OUTPUTS).
tests/test_workflows.py converts them back with an independent converter.

Usage (venv and COMFYUI_PATH from `source scripts/test_env.sh && ensure_test_env`):
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


class Workflow(NamedTuple):
    """One shipped workflow: trainer mode, checkpoint, and the pixel size used for training, face crops and renders.

    `kind` is "train" (photo -> embedding -> renders) or "eval" (embedding -> renders -> identity and prompt
    scores). (A NamedTuple, not a dataclass: tests load this script with importlib without registering it in
    sys.modules.)
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
}
FACE_IMAGE = "face.png"
EMBEDDING_NAME = "my_face"
SAMPLER_SEED = 1234
# the eval workflow: images per prompt (the batch), and the CLIP scoring model it names (the paper's ViT-B/32,
# in models/clip_scoring/<name>/ as docs/evaluation.md describes)
EVAL_BATCH = 4
EVAL_PROMPT = "a photo of a <face> person"
CLIP_SCORING_MODEL = "clip-vit-base-patch32"
# `control_after_generate` values the UI stores after seed widgets: a fixed trainer seed keeps the trained
# embedding cached while prompts change; the samplers draw new images on every queue.
SEED_CONTROL = {"CrossInitTrainer": "fixed"}
DEFAULT_SEED_CONTROL = "randomize"
# editor-only nodes: never executed, skipped by the API conversion
NOTE_TEXT = (
    "Cross-Init: a personal face token in seconds (Cross Initialization textual inversion).\n\n"
    "1. Load Checkpoint: the SD 1.x / 2.x / SDXL checkpoint you will generate with.\n"
    "2. Face photo: upload a clear photo of one person's face (a square crop around the head works best).\n"
    "3. Queue. The trainer learns the tokens ({mode}), saves them as models/embeddings/{name}.safetensors "
    "and renders a portrait and an edit with them.\n\n"
    "Use the face anywhere: write embedding:{name} in any CLIP Text Encode, or <face> in Cross-Init CLIP Text Encode.\n"
    "Save Embedding never replaces an existing file: pick a new name for a new face (or turn on overwrite).\n"
    "SD 2.x 768-v models: set the trainer's resolution and the latent size to 768. SDXL: 1024."
)
SDXL_NOTE_TEXT = (
    "Cross-Init for SDXL: a personal face token for both SDXL text encoders (clip_l and clip_g).\n\n"
    "1. Load Checkpoint: an SDXL base checkpoint (sd_xl_base_1.0 or a fine-tune of it).\n"
    "2. Face photo: upload a clear photo of one person's face; face prep crops it to 1024 px.\n"
    "3. Queue. The trainer learns the tokens ({mode}) at 1024 px, saves them as "
    "models/embeddings/{name}.safetensors (keys clip_l and clip_g) and renders a portrait and an edit.\n\n"
    "Use the face anywhere: write embedding:{name} in any CLIP Text Encode, or <face> in Cross-Init CLIP Text Encode.\n"
    "Less GPU memory: set the trainer's resolution to 768 or 512 and lower batch_size (custom mode); "
    "renders stay at 1024.\n"
    "Save Embedding never replaces an existing file: pick a new name for a new face (or turn on overwrite)."
)
PAPER_NOTE_TEXT = (
    "Cross-Init, the paper's setting: SD 2.1-base, full preset (320 steps, batch 8, lr 0.005), the reference's name "
    "list and captions.\n\n"
    "1. Load Checkpoint: SD 2.1-base (v2-1_512-ema-pruned.safetensors, 512 px, epsilon).\n"
    "2. Face photo: upload a clear photo of one person's face (the paper: one photo per person).\n"
    "3. Queue. The trainer learns the tokens ({mode}), saves them as models/embeddings/{name}.safetensors and "
    "renders two of the paper's evaluation prompts as the paper samples: DPM-Solver++ (2M), 50 steps, CFG 7.5, "
    "no negative prompt, 512 px.\n\n"
    "Score the result with the cross_init_eval workflow or `python -m cross_init_core eval` (docs/evaluation.md)."
)
EVAL_NOTE_TEXT = (
    "Cross-Init evaluation: how well a trained token keeps the face and follows the prompt.\n\n"
    "1. Load Checkpoint: the checkpoint the embedding was trained on (the paper: SD 2.1-base).\n"
    "2. Load Embedding: the trained file; Reference face photo: a photo of that person (several: batch them).\n"
    "3. Prompt: one with <face> where the person goes (the paper's 20 are in cross_init_core/data/eval_prompts.txt). "
    "The latent's batch_size is the number of images.\n"
    "4. Queue. Identity Score compares each image's face with the photo (insightface ArcFace: cosine, higher is "
    "better; dlib: distance, lower is better); Prompt Score is the CLIP cosine of image and prompt without <face> "
    "(a full CLIP in models/clip_scoring/, see docs/evaluation.md).\n\n"
    "All 20 prompts at once, with a table and a contact sheet: python -m cross_init_core eval."
)
NOTES = {"sd": NOTE_TEXT, "sdxl": SDXL_NOTE_TEXT, "paper": PAPER_NOTE_TEXT, "eval": EVAL_NOTE_TEXT}
MODE_TEXT = {"fast": "fast preset: 25 steps", "full": "full preset: 320 steps, the paper's setting", "": ""}

log = logging.getLogger("make_ui_workflows")

# ---------------------------------------------------------------------------------------------
# Node definitions, as ComfyUI's /object_info serves them to the editor

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _plain(value: Any) -> Any:
    """IO enum members (str subclasses) as plain strings, so they compare and serialize as JSON does."""
    return str(value.value) if hasattr(value, "value") and isinstance(value, str) else value


def node_info(class_type: str) -> dict[str, Any]:
    """The /object_info entry of one node (the logic of server.PromptServer's `node_info`)."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 nodes
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


class Slot:
    """One input of a node definition, classified as the editor does (socket or widget)."""

    def __init__(self, name: str, spec: tuple | list, optional: bool) -> None:
        kind = spec[0]
        self.name = name
        self.options: dict[str, Any] = dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
        self.optional = optional
        self.is_combo = isinstance(kind, list) or _plain(kind) == "COMBO"
        self.type = "COMBO" if self.is_combo else _plain(kind)
        self.combo_options = kind if isinstance(kind, list) else list(self.options.get("options", []))
        self.is_widget = (self.is_combo or self.type in WIDGET_TYPES) and not self.options.get("forceInput", False)

    def extra_widget_values(self, class_type: str) -> list[Any]:
        """Values of the widgets the editor adds right after this one (seed control, upload button)."""
        extra: list[Any] = []
        control = self.options.get("control_after_generate")
        if self.is_widget and (control or (self.type == "INT" and self.name in ("seed", "noise_seed"))):
            extra.append(SEED_CONTROL.get(class_type, DEFAULT_SEED_CONTROL))
        if self.options.get("image_upload"):
            extra.append("image")
        for upload in ("video_upload", "audio_upload", "animated_image_upload"):
            if self.options.get(upload):
                raise NotImplementedError(f"{class_type}.{self.name}: {upload} widgets are not supported by this generator")
        return extra

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.is_combo:
            return self.combo_options[0] if self.combo_options else ""
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[self.type]


def input_slots(info: dict[str, Any]) -> list[Slot]:
    """Required then optional inputs in definition order; hidden inputs are not slots."""
    slots = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            slots.append(Slot(name, info["input"][section][name], optional=section == "optional"))
    return slots


# ---------------------------------------------------------------------------------------------
# The graphs


class Graph:
    """An API-format prompt under construction; node ids are "1", "2", ... in the order of `add`."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, inputs: dict[str, Any], title: str | None = None, defaults: bool = False) -> str:
        info = node_info(class_type)
        if defaults:  # widgets not given take the node's defaults (for nodes wired generically)
            for slot in input_slots(info):
                if slot.is_widget and slot.name not in inputs:
                    inputs[slot.name] = slot.default()
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or info["display_name"]}}
        return node_id


def _output_slots(class_type: str, wanted: str) -> list[int]:
    return [i for i, t in enumerate(node_info(class_type)["output"]) if _plain(t) == wanted]


def _pack_presets() -> dict[str, Any]:
    """cross_init_core.settings.PRESETS, imported from this repository (no ComfyUI needed for that)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))  # last: the repository root also holds folders named like host modules (nodes)
    from cross_init_core.settings import PRESETS

    return PRESETS


# The trainer's steps/batch/lr widgets show the chosen preset's values (used as is once mode is `custom`),
# so a `fast` workflow never displays the full schedule's numbers.
PRESET_WIDGETS = {
    mode: {"steps": preset.steps, "batch_size": preset.batch_size, "learning_rate": preset.learning_rate}
    for mode, preset in _pack_presets().items()
}


def _preset_widgets(mode: str) -> dict[str, Any]:
    return dict(PRESET_WIDGETS[mode])


def build_api_workflow(mode: str, face_prep: str | None = FACE_PREP_NODE, checkpoint: str = CHECKPOINT,
                       resolution: int = 512, sampling: Sampling = DEFAULT_SAMPLING) -> dict[str, dict[str, Any]]:
    """Checkpoint + face photo -> Cross-Init init -> trainer -> saved embedding, portrait and edit renders.

    `resolution` is the trainer's resolution, the face crop size and the render size (SDXL: 1024).
    """
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": checkpoint})
    model, clip, vae = [ckpt, 0], [ckpt, 1], [ckpt, 2]
    photo = g.add("LoadImage", {"image": FACE_IMAGE}, title="Face photo")
    images: list[Any] = [photo, 0]
    masks: list[Any] | None = None
    prep_preview: list[Any] | None = None
    if face_prep:
        image_input = next(s.name for s in input_slots(node_info(face_prep)) if s.type == "IMAGE")
        prep = g.add(face_prep, {image_input: images}, defaults=True)
        if "crop_size" in g.nodes[prep]["inputs"]:
            g.nodes[prep]["inputs"]["crop_size"] = resolution  # in place: keeps the definition's input order
        image_outs, mask_outs = _output_slots(face_prep, "IMAGE"), _output_slots(face_prep, "MASK")
        images = [prep, image_outs[0]]
        masks = [prep, mask_outs[0]] if mask_outs else None
        prep_preview = [prep, image_outs[1]] if len(image_outs) > 1 else None
    init = g.add("CrossInitEmbeddingInit", {"clip": clip, "num_tokens": 2, "names": "", "source": "names", "name_list": "reference"})
    loss = g.add("CrossInitLossSettings", {"reg_weight": 1e-05, "background_weight": 1.0})
    trainer_inputs: dict[str, Any] = {
        "model": model, "clip": clip, "vae": vae, "images": images, "embedding": [init, 0], "loss": [loss, 0],
        "mode": mode, **_preset_widgets(mode), "seed": 0, "resolution": resolution, "memory": "auto",
        "preview_every": -1,
    }
    if masks:
        trainer_inputs["masks"] = masks
    trainer = g.add("CrossInitTrainer", trainer_inputs)
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
    g.add("PreviewImage", {"images": [trainer, 1]}, title="Training loss")
    if prep_preview:
        g.add("PreviewImage", {"images": prep_preview}, title="Detected faces")
    return g.nodes


def _sampler_widgets(sampling: Sampling) -> dict[str, Any]:
    return {"steps": sampling.steps, "cfg": sampling.cfg, "sampler_name": sampling.sampler, "scheduler": sampling.scheduler}


def build_eval_workflow(checkpoint: str = PAPER_CHECKPOINT, resolution: int = 512,
                        sampling: Sampling = PAPER_SAMPLING) -> dict[str, dict[str, Any]]:
    """Checkpoint + saved embedding -> a batch of renders of one prompt -> identity and prompt scores.

    One text node holds the prompt: it feeds both the encoder and the prompt score, so the score always sees
    the prompt the images were made from. `python -m cross_init_core eval` runs this graph once per prompt
    (nodes found by type), so every node it reads is here exactly once.
    """
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": checkpoint})
    model, clip, vae = [ckpt, 0], [ckpt, 1], [ckpt, 2]
    embedding = g.add("CrossInitLoadEmbedding", {"name": f"{EMBEDDING_NAME}.safetensors"})
    prompt = g.add("PrimitiveStringMultiline", {"value": EVAL_PROMPT}, title="Prompt (<face> = the person)")
    positive = g.add("CrossInitCLIPTextEncode", {"clip": clip, "embedding": [embedding, 0], "text": [prompt, 0],
                                                 "placeholder": "<face>"}, title="Prompt with the embedding")
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
    reference = g.add("LoadImage", {"image": FACE_IMAGE}, title="Reference face photo")
    identity = g.add("CrossInitIdentityScore", {"reference": [reference, 0], "images": images, "backend": "auto"})
    prompt_score = g.add("CrossInitPromptScore", {"images": images, "prompt": [prompt, 0], "model": CLIP_SCORING_MODEL})
    g.add("PreviewAny", {"source": [identity, 1]}, title="Identity report")
    g.add("PreviewAny", {"source": [prompt_score, 1]}, title="Prompt score report")
    g.add("PreviewImage", {"images": [identity, 2]}, title="Identity (annotated)")
    return g.nodes


# ---------------------------------------------------------------------------------------------
# API format -> UI format

SOCKET_ROW, WIDGET_ROW, MULTILINE_ROW, TITLE_PAD = 22, 26, 96, 10
IMAGE_NODES = {"LoadImage", "PreviewImage", "SaveImage"}
TEXT_PREVIEW_NODES = {"PreviewAny"}
# Nodes whose outputs depend on the host: ComfyUI 0.33 gave SaveImage and PreviewImage an IMAGE output that
# 0.3.75 lacks (and PreviewAny a STRING output). The files list no outputs for them, so they are the same whichever host generates them and
# each editor shows the node as its own host defines it: frontend 1.49 adds a definition's outputs that a
# file lacks, while 1.32 keeps every output a file lists (a dead socket where the host has none).
HOST_DEPENDENT_OUTPUTS = {"PreviewAny", "PreviewImage", "SaveImage"}
GAP_X, GAP_Y, ORIGIN = 70, 50, (40, 40)
NOTE_WIDTH = 320  # the first column's width (the checkpoint loader), so the note does not reach the second


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _topological_order(api: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            raise ValueError(f"cycle through node {node_id}")
        state[node_id] = 1
        for value in api[node_id]["inputs"].values():
            if _is_link(value):
                visit(value[0])
        state[node_id] = 2
        order.append(node_id)

    for node_id in sorted(api, key=int):
        visit(node_id)
    return order


def _columns(api: dict[str, dict[str, Any]], order: list[str]) -> dict[str, int]:
    """Left-to-right columns: sinks at their longest-path depth, every other node just left of its first consumer."""
    depth: dict[str, int] = {}
    for node_id in order:
        sources = [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
        depth[node_id] = 1 + max((depth[s] for s in sources), default=-1)
    consumers: dict[str, set[str]] = {n: set() for n in api}
    for node_id, node in api.items():
        for value in node["inputs"].values():
            if _is_link(value):
                consumers[value[0]].add(node_id)
    column: dict[str, int] = {}
    for node_id in reversed(order):
        users = consumers[node_id]
        column[node_id] = min(column[u] for u in users) - 1 if users else depth[node_id]
    return column


def _size(class_type: str, slots: list[Slot], n_outputs: int) -> list[int]:
    sockets = sum(1 for s in slots if not s.is_widget)
    height = TITLE_PAD + SOCKET_ROW * max(sockets, n_outputs, 1)
    for slot in slots:
        if slot.is_widget:
            height += MULTILINE_ROW if slot.options.get("multiline") else WIDGET_ROW
            height += WIDGET_ROW * len(slot.extra_widget_values(class_type))
    width = 400 if any(s.options.get("multiline") for s in slots) else 320
    if class_type in IMAGE_NODES:
        height += 280
    if class_type in TEXT_PREVIEW_NODES:  # room for the text the node shows after a run
        width, height = 400, height + 200
    return [width, height]


def api_to_ui(api: dict[str, dict[str, Any]], note: str | None = None) -> dict[str, Any]:
    """The editor's workflow JSON (schema version 0.4) for an API-format prompt."""
    order = _topological_order(api)
    column = _columns(api, order)
    links: list[list[Any]] = []
    ui_nodes: dict[str, dict[str, Any]] = {}
    infos = {node_id: node_info(node["class_type"]) for node_id, node in api.items()}
    for node_id in sorted(api, key=int):
        node, info = api[node_id], infos[node_id]
        class_type = node["class_type"]
        slots = input_slots(info)
        names = {s.name for s in slots}
        unknown = sorted(set(node["inputs"]) - names)
        if unknown:
            raise ValueError(f"node {node_id} ({class_type}): no inputs named {unknown}")
        outputs = [
            {"name": _plain(name), "type": _plain(kind), "links": [], "slot_index": i}
            for i, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))
            if class_type not in HOST_DEPENDENT_OUTPUTS
        ]
        ui_nodes[node_id] = {
            "id": int(node_id),
            "type": class_type,
            "pos": [0, 0],
            "size": _size(class_type, slots, len(outputs)),
            "flags": {},
            "order": order.index(node_id),
            "mode": 0,
            "inputs": [],
            "outputs": outputs,
            "properties": {"Node name for S&R": class_type},
            "widgets_values": [],
        }
        if node["_meta"]["title"] != info["display_name"]:
            ui_nodes[node_id]["title"] = node["_meta"]["title"]
    # inputs and links, in the order the editor numbers slots: sockets, then widgets converted to inputs
    for node_id in sorted(api, key=int):
        node, ui = api[node_id], ui_nodes[node_id]
        slots = input_slots(infos[node_id])
        sockets = [s for s in slots if not s.is_widget]
        converted = [s for s in slots if s.is_widget and _is_link(node["inputs"].get(s.name))]
        for target_slot, slot in enumerate(sockets + converted):
            value = node["inputs"].get(slot.name)
            entry: dict[str, Any] = {"name": slot.name, "type": slot.type}
            if slot.is_widget:
                entry["widget"] = {"name": slot.name}
            entry["link"] = None
            if value is not None:
                if not _is_link(value):
                    raise ValueError(f"node {node_id}: socket input {slot.name} needs a link, got {value!r}")
                source, source_slot = value
                if source_slot >= len(ui_nodes[source]["outputs"]):
                    raise ValueError(f"node {node_id} ({node['class_type']}): input {slot.name} links output {source_slot} of node "
                                     f"{source} ({api[source]['class_type']}), which this file does not list: "
                                     "link from another node (see HOST_DEPENDENT_OUTPUTS)")
                link_id = len(links) + 1
                link_type = ui_nodes[source]["outputs"][source_slot]["type"]
                links.append([link_id, int(source), source_slot, int(node_id), target_slot, link_type])
                ui_nodes[source]["outputs"][source_slot]["links"].append(link_id)
                entry["link"] = link_id
            elif not slot.optional:
                raise ValueError(f"node {node_id} ({node['class_type']}): required input {slot.name} is not connected")
            ui["inputs"].append(entry)
        for slot in slots:
            if not slot.is_widget:
                continue
            value = node["inputs"].get(slot.name, slot.default())
            ui["widgets_values"].append(slot.default() if _is_link(value) else value)
            ui["widgets_values"].extend(slot.extra_widget_values(node["class_type"]))
    _place(ui_nodes, column)
    nodes_out = [ui_nodes[n] for n in sorted(ui_nodes, key=int)]
    if note is not None:
        nodes_out.append(_note(len(nodes_out) + 1, note, nodes_out))
    return {
        "last_node_id": max(n["id"] for n in nodes_out),
        "last_link_id": len(links),
        "nodes": nodes_out,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def _place(ui_nodes: dict[str, dict[str, Any]], column: dict[str, int]) -> None:
    first = min(column.values())
    x = ORIGIN[0]
    for col in range(first, max(column.values()) + 1):
        members = sorted((n for n in ui_nodes if column[n] == col), key=int)
        y = ORIGIN[1]
        for node_id in members:
            ui_nodes[node_id]["pos"] = [x, y]
            y += ui_nodes[node_id]["size"][1] + GAP_Y
        x += max((ui_nodes[n]["size"][0] for n in members), default=0) + GAP_X


def _note(node_id: int, text: str, placed: list[dict[str, Any]]) -> dict[str, Any]:
    """A Note under the first column (editor-only: it has no class in ComfyUI and is never executed)."""
    first_x = min(n["pos"][0] for n in placed)
    bottom = max(n["pos"][1] + n["size"][1] for n in placed if n["pos"][0] == first_x)
    return {
        "id": node_id,
        "type": "Note",
        "pos": [first_x, bottom + GAP_Y],
        "size": [NOTE_WIDTH, 360],
        "flags": {},
        "order": len(placed),
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "properties": {"text": ""},
        "widgets_values": [text],
        "color": "#432",
        "bgcolor": "#653",
    }


# ---------------------------------------------------------------------------------------------
# Files


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_all() -> dict[Path, str]:
    """Every generated file and its text (ComfyUI must be booted)."""
    files: dict[Path, str] = {}
    for stem, workflow in WORKFLOWS.items():
        if workflow.kind == "eval":
            api = build_eval_workflow(workflow.checkpoint, workflow.resolution, workflow.sampling)
        else:
            api = build_api_workflow(workflow.mode, checkpoint=workflow.checkpoint, resolution=workflow.resolution,
                                     sampling=workflow.sampling)
        api_text = dumps(api)
        files[API_DIR / f"{stem}.json"] = api_text
        note = NOTES[workflow.note].format(mode=MODE_TEXT[workflow.mode], name=EMBEDDING_NAME)
        ui_text = dumps(api_to_ui(json.loads(api_text), note=note))
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
