"""Prompt score: CLIP cosine between each generated image and its prompt, placeholder removed.

The model is a full CLIP (text and vision towers with their projections) in Hugging Face transformers
layout, one folder per model inside a `clip_scoring` models folder (default ComfyUI/models/clip_scoring):

    clip_scoring/clip-vit-base-patch32/
        config.json                        CLIPConfig (model_type "clip")
        model.safetensors                  (or pytorch_model.bin)
        vocab.json, merges.txt, ...        optional: without them ComfyUI's own CLIP BPE files are used
        preprocessor_config.json           optional: image mean/std (OpenAI's values otherwise)

The score is the raw cosine of the L2-normalized projected embeddings, as the Cross Initialization
paper reports it (e.g. 0.2859), not CLIPScore's 2.5 * max(cos, 0) and not x100.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import host
from ..common.errors import CrossInitError
from ..common.prompt_text import scored_prompt
from ..face.errors import ModelFilesError
from ..face.images import split_batch

logger = logging.getLogger(__name__)

FOLDER_KEY = "clip_scoring"
# OpenAI CLIP's image normalization (every released CLIP ViT uses it) when the folder has no preprocessor_config.json
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
BATCH = 16  # images per forward pass
MIN_SIDE = 16  # CLIP upsamples smaller images; below this there is nothing left to judge
NO_MODEL = "(no CLIP model found)"  # the combo's only option when the folder is empty

_cache: dict[str, LoadedClip] = {}


def register_clip_scoring_folder() -> list[str]:
    """The `clip_scoring` model folders (ComfyUI/models/clip_scoring plus extra_model_paths.yaml entries), registering the key."""
    return host.register_model_folder(FOLDER_KEY)


def clip_scoring_roots() -> list[Path]:
    return [Path(p) for p in register_clip_scoring_folder()]


def list_models(roots: list[Path] | None = None) -> list[str]:
    """Model folders (holding config.json) directly inside a root, or one level deeper (e.g. openai/clip-vit-base-patch32)."""
    roots = clip_scoring_roots() if roots is None else roots
    names: list[str] = []
    for root in roots:
        if not root.is_dir():
            continue
        for config in sorted([*root.glob("*/config.json"), *root.glob("*/*/config.json")]):
            name = config.parent.relative_to(root).as_posix()
            if name not in names:
                names.append(name)
    return names


def _where(roots: list[Path]) -> str:
    return "; ".join(str(r) for r in roots) or "(no clip_scoring folder is registered)"


def _layout_hint(roots: list[Path]) -> str:
    first = roots[0] if roots else Path("ComfyUI/models/clip_scoring")
    return (
        f"Put a full CLIP in Hugging Face transformers layout in its own folder there, e.g. {first / 'clip-vit-base-patch32'} "
        "holding config.json and model.safetensors (the files of openai/clip-vit-base-patch32, the paper's model, or "
        "openai/clip-vit-large-patch14), or add a `clip_scoring:` entry to extra_model_paths.yaml. See docs/evaluation.md."
    )


def missing_model_problem(name: str, roots: list[Path] | None = None) -> str | None:
    """Why `name` cannot be used (naming the searched folders and the fix), None when it is there."""
    roots = clip_scoring_roots() if roots is None else roots
    models = list_models(roots)
    if name in models:
        return None
    if name == NO_MODEL or not models:
        return f"No CLIP model for the prompt score in the clip_scoring folders ({_where(roots)}). {_layout_hint(roots)}"
    return (
        f"CLIP model {name!r} was not found in the clip_scoring folders ({_where(roots)}); found: "
        f"{', '.join(models)}. {_layout_hint(roots)}"
    )


def find_model(name: str, roots: list[Path] | None = None) -> Path:
    roots = clip_scoring_roots() if roots is None else roots
    problem = missing_model_problem(name, roots)
    if problem is not None:
        raise ModelFilesError(problem)
    return next(root / name for root in roots if (root / name / "config.json").is_file())


@dataclass
class LoadedClip:
    folder: Path
    model: Any  # transformers CLIPModel, kept on the offload device between calls
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_length: int


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


def load_clip(folder: Path) -> LoadedClip:
    """A full CLIP from `folder` (local files only), cached per folder and file times."""
    from transformers import CLIPModel, CLIPTokenizer

    stamp = ",".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(folder.iterdir()) if p.is_file())
    key = f"{folder}|{stamp}"
    if key in _cache:
        return _cache[key]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "clip":
        raise ModelFilesError(
            f"{folder / 'config.json'} describes a {config.get('model_type')!r} model; the prompt score needs a full CLIP "
            "(model_type 'clip': text and vision towers with their projections), e.g. openai/clip-vit-base-patch32. A "
            "text encoder alone (as in ComfyUI/models/clip) cannot compare text with images."
        )
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelFilesError(
            f"{folder} has config.json but no weights ({' or '.join(WEIGHT_FILES[:2])}); copy the model's weight file there."
        )
    try:
        # Loaded outside ComfyUI's inference mode so the cached weights are ordinary tensors.
        with torch.inference_mode(False):
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelFilesError(f"transformers could not load the CLIP in {folder} ({type(exc).__name__}: {exc}).") from exc
    tokenizer_folder = folder if _has_tokenizer(folder) else host.clip_tokenizer_folder()
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    mean, std = OPENAI_MEAN, OPENAI_STD
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        values = json.loads(preprocessor.read_text(encoding="utf-8"))
        mean = tuple(values.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(values.get("image_std", std))  # type: ignore[assignment]
    loaded = LoadedClip(
        folder=folder,
        model=model,
        tokenizer=tokenizer,
        image_size=int(model.config.vision_config.image_size),
        mean=mean,
        std=std,
        max_length=int(model.config.text_config.max_position_embeddings),
    )
    _cache.clear()  # one scoring model in memory at a time
    _cache[key] = loaded
    logger.info("Prompt score: CLIP from %s (tokenizer %s)", folder, tokenizer_folder)
    return loaded


def preprocess(images: list[torch.Tensor], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP's image preprocessing in torch: shorter side to `size` (bicubic, antialiased), center crop, normalize.
    `images` are HxWx3 float tensors in [0, 1]; returns [N, 3, size, size]."""
    out = []
    for image in images:
        chw = image.permute(2, 0, 1)[None].float()
        height, width = chw.shape[-2:]
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        if (new_h, new_w) != (height, width):
            chw = F.interpolate(chw, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out.append(chw[..., top : top + size, left : left + size])
    pixels = torch.cat(out)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _features(output: Any) -> torch.Tensor:
    # transformers 4.x returns the projected embeddings as a tensor; 5.x returns a model output whose
    # pooler_output holds them.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def embed_text(clip: LoadedClip, texts: list[str], device: torch.device) -> torch.Tensor:
    tokens = clip.tokenizer(texts, padding="max_length", max_length=clip.max_length, truncation=True, return_tensors="pt")
    feats = clip.model.get_text_features(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device))
    return F.normalize(_features(feats).float(), dim=-1)


def embed_images(clip: LoadedClip, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    chunks = [_features(clip.model.get_image_features(pixel_values=pixels[i : i + BATCH].to(device))) for i in range(0, len(pixels), BATCH)]
    return F.normalize(torch.cat(chunks).float(), dim=-1)


@dataclass(frozen=True)
class PromptScoreResult:
    mean: float
    report: dict[str, Any]

    def report_json(self) -> str:
        return json.dumps(self.report, indent=2)


def image_prompts(prompt: str, count: int) -> list[str]:
    """The prompt of each of `count` images, as scored: one line per image when the text has exactly `count`
    lines (a batch of several prompts, e.g. one sample per prompt and checkpoint), else the whole text for all."""
    lines = [line for line in prompt.splitlines() if line.strip()]
    if len(lines) > 1 and len(lines) != count:
        logger.warning("Prompt score: the prompt has %d lines for %d images, so the whole text is scored for each image "
                       "(one line per image needs as many lines as images)", len(lines), count)
    texts = [scored_prompt(line) for line in lines] if count > 1 and len(lines) == count else [scored_prompt(prompt)] * count
    if not all(texts):
        raise CrossInitError(
            "Input `prompt` is empty once the placeholder <face> is removed; give the prompt the images were generated from, "
            "e.g. 'a photo of <face> person as an astronaut' (or one such line per image)."
        )
    return texts


def sample_batch(images: Sequence[torch.Tensor], prompts: Sequence[str]) -> tuple[torch.Tensor, str]:
    """Samples of several prompts as one batch for the scores: the images in order, and their prompts one line per
    image (each prompt repeated for its images), which is what `image_prompts` reads back."""
    first = images[0]
    for number, batch in enumerate(images[1:], start=2):
        if batch.shape[1:] != first.shape[1:]:
            raise CrossInitError(
                f"image_{number}: its images are {batch.shape[2]}x{batch.shape[1]} px but image_1's are "
                f"{first.shape[2]}x{first.shape[1]}; render every prompt at the same size (one Empty Latent Image)."
            )
    lines = []
    for number, (batch, text) in enumerate(zip(images, prompts, strict=True), start=1):
        if not text.strip() or "\n" in text.strip():
            raise CrossInitError(f"prompt_{number}: give the one prompt image_{number} was generated from, on one line.")
        lines += [text.strip()] * batch.shape[0]
    return torch.cat(list(images), dim=0), "\n".join(lines)


def score_prompt(
    images: torch.Tensor | Sequence[torch.Tensor], prompt: str, model: str, roots: list[Path] | None = None
) -> PromptScoreResult:
    """CLIP cosine of every image with its prompt (placeholder removed) using the CLIP folder `model`: `prompt` for
    all images, or line i for image i when the prompt has one line per image."""
    photos = split_batch(images, "images", min_side=MIN_SIDE)
    texts = image_prompts(prompt, len(photos))
    distinct = list(dict.fromkeys(texts))
    row_of = {text: row for row, text in enumerate(distinct)}
    clip = load_clip(find_model(model, roots))
    device, offload = host.evaluation_devices()
    pixels = preprocess([torch.from_numpy(p) for p in photos], clip.image_size, clip.mean, clip.std)
    try:
        with torch.no_grad():
            clip.model.to(device)
            text_embeds = embed_text(clip, distinct, device)
            image_embeds = embed_images(clip, pixels, device)
            rows = torch.tensor([row_of[t] for t in texts], device=image_embeds.device)
            scores = (image_embeds * text_embeds[rows]).sum(dim=1).cpu().tolist()
    finally:
        clip.model.to(offload)
    mean = float(sum(scores) / len(scores))
    report = {
        "model": model,
        "prompt": distinct[0] if len(distinct) == 1 else distinct,
        "metric": "cosine",
        "mean": mean,
        "images": [{"index": i, "score": float(s), **({"prompt": t} if len(distinct) > 1 else {})}
                   for i, (s, t) in enumerate(zip(scores, texts, strict=True))],
    }
    logger.info("Prompt score (%s): mean %.4f over %d images for %s", model, mean, len(scores),
                repr(distinct[0]) if len(distinct) == 1 else f"{len(distinct)} prompts")
    return PromptScoreResult(mean=mean, report=report)
