"""Helpers shared by several test modules: tiny inputs, settings, host fingerprints, independent references."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import torch
import workflow_runner as wr

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP_IMAGE_SIZE = 32  # the tiny scoring CLIP's vision input

NAMES = ["Tom Hanks", "Meryl Streep", "Denzel Washington", "Scarlett Johansson"]


def face_images(count: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    face = ((xx**2 / 0.4 + yy**2 / 0.6) < 1).float()
    base = torch.stack([0.8 * face + 0.1, 0.6 * face + 0.2, 0.5 * face + 0.25], dim=-1)
    return (base.expand(count, -1, -1, -1) + 0.05 * torch.rand(count, size, size, 3, generator=gen)).clamp(0, 1)


def init_embedding(core, clip):
    with torch.inference_mode():
        return core.method.initialization.cross_initialize(clip, 2, NAMES)


def settings(core, **kw):
    base = {"steps": 3, "batch_size": 2, "learning_rate": 0.01, "resolution": 64, "seed": 0}
    base.update(kw)
    return core.common.settings.TrainingSettings(**base)


def host_fingerprint(m) -> dict[str, torch.Tensor]:
    """Outputs of the host MODEL, CLIP and VAE on fixed inputs, plus every weight, as ComfyUI would use them."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    with torch.inference_mode():
        cond = m.clip.encode_from_tokens(m.clip.tokenize("a photo of a person"), return_pooled=True)
        out = {
            "unet": m.model.model.apply_model(x, torch.tensor([3.0]), c_crossattn=cond[0]).clone(),
            "clip": cond[0].clone(),
            "vae": m.vae.encode(torch.rand(1, 64, 64, 3, generator=gen)).clone(),
        }
        out.update(host_weights(m))
    return out


def host_weights(m) -> dict[str, object]:
    """Every UNet and CLIP weight the host holds (the tensors themselves) and its requires_grad flag."""
    out: dict[str, object] = {}
    for prefix, module in (("w.unet.", m.model.model), ("w.clip.", m.clip.cond_stage_model)):
        for name, p in module.state_dict(keep_vars=True).items():
            out[prefix + name] = p
            out["rg." + prefix + name] = p.requires_grad
    return out


def assert_host_unchanged(before: dict[str, torch.Tensor], m) -> None:
    assert_same_fingerprint(before, host_fingerprint(m))


def assert_same_fingerprint(before: dict, after: dict) -> None:
    """Same outputs, same weight objects, same requires_grad, no gradients left on host weights."""
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key.startswith("rg."):
            assert after[key] == value, f"{key}: requires_grad changed"
        elif key.startswith("w."):
            assert after[key] is value, f"{key}: the host's tensor object was replaced"
            assert after[key].grad is None, f"{key}: gradient left on a host weight"
        else:
            assert torch.equal(after[key], value), f"{key}: host output changed"


def manual_encode(clip, token_key: str, seq: torch.Tensor, layer_idx: int | None, final_ln: bool) -> torch.Tensor:
    """CLIP text transformer run by hand on input embeddings [1, L, D]: causal mask, positions, layers."""
    csm = clip.cond_stage_model
    encoder = {"l": getattr(csm, "clip_l", None), "h": getattr(csm, "clip_h", None), "g": getattr(csm, "clip_g", None)}[token_key]
    text_model = encoder.transformer.text_model
    from comfy.ldm.modules.attention import optimized_attention_for_device

    x = seq + text_model.embeddings.position_embedding.weight.float()[: seq.shape[1]]
    mask = torch.full((seq.shape[1], seq.shape[1]), -torch.finfo(x.dtype).max).triu_(1)
    attention = optimized_attention_for_device(x.device, mask=True, small_input=True)
    layers = text_model.encoder.layers
    stop = len(layers) if layer_idx is None else len(layers) + layer_idx + 1
    for layer in list(layers)[:stop]:
        x = layer(x.clone(), mask, attention)
    return text_model.final_layer_norm(x) if final_ln else x


def independent_init(clip, token_key: str, names: list[str], n: int, layer_idx: int | None, final_ln: bool) -> torch.Tensor:
    from transformers import CLIPTokenizer

    sd_tokenizer = getattr(clip.tokenizer, f"clip_{token_key}")
    tokenizer: CLIPTokenizer = sd_tokenizer.tokenizer
    csm = clip.cond_stage_model
    encoder = {"l": getattr(csm, "clip_l", None), "h": getattr(csm, "clip_h", None), "g": getattr(csm, "clip_g", None)}[token_key]
    table = encoder.transformer.text_model.embeddings.token_embedding.weight.float()
    columns: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for name in names:
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        for j, token in enumerate(ids[:n]):
            columns[j].append(table[token])
    means = torch.stack([torch.stack(c).mean(0) for c in columns])
    bos, eos = sd_tokenizer.start_token, sd_tokenizer.end_token
    pad = sd_tokenizer.pad_token
    ids = [bos] + [eos] + [pad] * (77 - 2 - n)
    embeds = table[torch.tensor(ids)]
    seq = torch.cat([embeds[:1], means, embeds[1:]]).unsqueeze(0)
    return manual_encode(clip, token_key, seq, layer_idx, final_ln)[0, 1 : 1 + n]


def save_tiny_clip(folder: Path, seed: int = 0) -> object:
    """A tiny full CLIP (both towers + projections) built from a transformers CLIPConfig and saved in the
    documented layout (config.json + model.safetensors, no tokenizer files: ComfyUI's BPE files are used)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_CLIP_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return model


def fast_eval_prompt(batch: int = 2) -> dict:
    """The eval workflow on tiny models: the loaded embedding is replaced by Cross-Init vectors of the tiny
    CLIP (a file of the tiny widths would be refused by the loader, which checks the real SD widths)."""
    prompt = json.loads((REPO / "workflows" / "api" / "cross_init_eval.json").read_text(encoding="utf-8"))
    (loader,) = wr.nodes_of(prompt, "CrossInitLoadEmbedding")
    (ckpt,) = wr.nodes_of(prompt, "CheckpointLoaderSimple")
    prompt[loader] = {"class_type": "CrossInitEmbeddingInit", "_meta": {"title": "tiny embedding"}, "inputs": {
        "clip": [ckpt, 1], "num_tokens": 2, "names": "", "source": "names", "name_list": "reference"}}
    wr.override(prompt, "KSampler", steps=1)
    wr.override(prompt, "EmptyLatentImage", width=64, height=64, batch_size=batch)
    wr.override(prompt, "CrossInitIdentityScore", backend="dlib")
    return prompt


@contextmanager
def extra_model_folder(key: str, folder: Path, register: Callable[[], object]) -> Iterator[None]:
    """ComfyUI's `key` model folder as extra_model_paths.yaml leaves it (just `folder`), before the pack's
    `register` runs; afterwards the entry is put back as it was and registered again."""
    import folder_paths

    saved = folder_paths.folder_names_and_paths.get(key)
    folder_paths.folder_names_and_paths[key] = ([str(folder)], set())
    try:
        yield
    finally:
        if saved is None:
            folder_paths.folder_names_and_paths.pop(key, None)
        else:
            folder_paths.folder_names_and_paths[key] = saved
        register()


@contextmanager
def one_draw_step_loss(core, m, emb, cfg) -> Iterator[tuple[object, object]]:
    """The trainer's StepLoss and one seeded draw of `cfg.batch_size` images, inside a training session on `m`."""
    with torch.inference_mode():
        run = core.training.run_setup.prepare_run(m.model, m.clip, m.vae, face_images(), emb, cfg)
    draw = run.sampler().draw(cfg.batch_size)
    with torch.inference_mode(), core.host.training_session(m.model, m.clip) as device:
        yield core.method.loss.StepLoss(run, device), draw


def loud_skip(reason: str, require_env: str) -> NoReturn:
    """Skips the calling test so that the run's summary says why: a warning (pytest hides a skipped test's stderr
    but lists every warning), or a failure where `require_env` is 1 (a machine that must run the test)."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{reason} {require_env}=1 makes this a failure.", pytrace=False)
    warnings.warn(reason, stacklevel=2)
    sys.stderr.write(f"\n{'!' * 100}\n{reason}\n{'!' * 100}\n")
    pytest.skip(reason)
