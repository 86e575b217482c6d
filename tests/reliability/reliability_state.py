"""Host-state snapshots for the reliability suite: everything a failed run could leave behind.

`snapshot(m)` records, for tiny MODEL/CLIP/VAE `m`: outputs and weight objects (test_training's
host_fingerprint), VAE weights, every module hook and instance-level `forward` override, the ModelPatchers'
patch registries, the CLIP encoders' layer options, the identity of the functions of the ComfyUI and torch
modules a trainer could monkeypatch, and torch's global autograd state. `assert_unchanged` compares.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from helpers import assert_host_unchanged, host_fingerprint

PATCHER_FIELDS = (
    "patches", "object_patches", "object_patches_backup", "weight_wrapper_patches", "backup", "hook_patches",
    "injections", "additional_models", "callbacks", "wrappers", "attachments",
)
PATCHABLE_MODULES = (
    "comfy.ops", "comfy.clip_model", "comfy.sd1_clip", "comfy.sd", "comfy.model_base", "comfy.model_patcher",
    "comfy.model_management", "comfy.utils", "comfy.ldm.modules.attention",
    "comfy.ldm.modules.diffusionmodules.openaimodel", "comfy.ldm.modules.diffusionmodules.model", "torch.nn.functional",
)


def host_modules(m) -> dict[str, torch.nn.Module]:
    return {"unet": m.model.model, "clip": m.clip.cond_stage_model, "vae": m.vae.first_stage_model}


def _structure(value: Any) -> Any:
    """Keys and sizes of a patch registry (the registries hold lists and nested dicts)."""
    if isinstance(value, dict):
        return {str(k): _structure(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return ("seq", len(value))
    return ("obj", type(value).__name__)


def patcher_state(patcher) -> dict[str, Any]:
    state = {name: _structure(getattr(patcher, name, None)) for name in PATCHER_FIELDS}
    state["model_options"] = _structure(patcher.model_options)
    return state


def hooks_and_overrides(modules: dict[str, torch.nn.Module]) -> list[str]:
    """Every forward/backward hook and instance-level forward override on any host module."""
    found = []
    for label, root in modules.items():
        for name, module in root.named_modules():
            for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                         "_state_dict_hooks", "_load_state_dict_pre_hooks"):
                if getattr(module, attr, None):
                    found.append(f"{label}.{name}: {attr}")
            if "forward" in module.__dict__:
                found.append(f"{label}.{name}: instance forward override")
    return found


def global_hook_counts() -> tuple[int, ...]:
    mod = torch.nn.modules.module
    return tuple(len(getattr(mod, n)) for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                "_global_backward_hooks", "_global_backward_pre_hooks"))


def function_identities(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    """id() of each function/class attribute of the patchable modules, of their classes' methods, and of
    the methods of every module class the host models use (a monkeypatch changes one of these)."""
    ids: dict[str, int] = {}
    classes: set[type] = {torch.Tensor}
    for name in PATCHABLE_MODULES:
        mod = importlib.import_module(name)
        for attr, value in vars(mod).items():
            if callable(value):
                ids[f"{name}.{attr}"] = id(value)
                if inspect.isclass(value) and value.__module__ == name:
                    classes.add(value)
    for root in modules.values():
        classes.update(type(m) for m in root.modules())
    for cls in classes:
        for klass in cls.__mro__:
            if klass is object:
                continue
            for attr, value in vars(klass).items():
                if callable(value) or isinstance(value, (staticmethod, classmethod, property)):
                    ids[f"{klass.__module__}.{klass.__qualname__}.{attr}"] = id(value)
    return ids


def clip_options(clip) -> list[tuple[Any, ...]]:
    csm = clip.cond_stage_model
    encoders = [getattr(csm, n) for n in ("clip_l", "clip_h", "clip_g") if hasattr(csm, n)]
    return [(e.layer, e.layer_idx, e.return_projected_pooled, e.layer_norm_hidden_state) for e in encoders]


def torch_state() -> dict[str, Any]:
    return {
        "grad": torch.is_grad_enabled(),
        "inference": torch.is_inference_mode_enabled(),
        "saved_tensor_hooks": torch._C._autograd._top_saved_tensors_default_hooks(False),
        "anomaly": torch.is_anomaly_enabled(),
        "default_dtype": torch.get_default_dtype(),
    }


def snapshot(m) -> dict[str, Any]:
    import comfy.model_management as mm
    import comfy.utils

    modules = host_modules(m)
    return {
        "fingerprint": host_fingerprint(m),
        "vae_weights": {n: (p, p.requires_grad) for n, p in modules["vae"].state_dict(keep_vars=True).items()},
        "patchers": {"model": patcher_state(m.model), "clip": patcher_state(m.clip.patcher)},
        "hooks": hooks_and_overrides(modules),
        "global_hooks": global_hook_counts(),
        "functions": function_identities(modules),
        "clip_options": clip_options(m.clip),
        "clip_layer_idx": m.clip.layer_idx,
        "progress_hook": comfy.utils.PROGRESS_BAR_HOOK,
        "interrupted": mm.processing_interrupted(),
        "torch": torch_state(),
    }


def assert_unchanged(before: dict[str, Any], m) -> None:
    """The host is exactly as `snapshot` found it (weights, outputs, hooks, patches, options, globals)."""
    assert_host_unchanged(before["fingerprint"], m)
    after = snapshot(m)
    for name, (tensor, requires_grad) in before["vae_weights"].items():
        assert after["vae_weights"][name][0] is tensor, f"vae {name}: tensor object replaced"
        assert tensor.requires_grad == requires_grad and tensor.grad is None, f"vae {name}: requires_grad/grad leaked"
    for key in ("patchers", "hooks", "global_hooks", "clip_options", "clip_layer_idx", "interrupted", "torch"):
        assert after[key] == before[key], f"{key} changed: {before[key]!r} -> {after[key]!r}"
    assert after["progress_hook"] is before["progress_hook"], "the host's progress-bar hook was replaced"
    changed = sorted(k for k in before["functions"] if after["functions"].get(k) != before["functions"][k])
    added = sorted(set(after["functions"]) - set(before["functions"]))
    assert not changed and not added, f"patched functions left behind: {changed[:10]} added: {added[:10]}"


class SpyVAE:
    """Stands in for the VAE: any use means work started before the inputs were checked."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, pixels):
        self.calls += 1
        raise AssertionError("the VAE was used before the inputs were checked")


def node(name: str):
    """A pack node class as ComfyUI registered it."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]
