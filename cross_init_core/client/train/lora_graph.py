"""`train --lora`: the pivotal-tuning stage added to one job's training graph at runtime (the shipped workflows stay
as they are): Cross-Init Pivotal LoRA fed by the trainer's token and the trainer's own model, clip, vae, photos (and
masks, loss and memory where the trainer has them), and Cross-Init Save LoRA writing the LoRA under the run's
NAME-RUNID with the token bundled as NAME, copied where /view serves it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ...common.lora_settings import PRESETS

PIVOTAL_LORA = "CrossInitPivotalLora"
LORA_SAVER = "CrossInitSaveLora"
# what the runner sets on Save LoRA, which packs before 0.4.0 lack (such a server is refused before any work)
LORA_SAVER_INPUTS = {"copy_to_output", "save_embedding", "token_name"}
# the trainer's inputs the LoRA stage takes as they are (links or values), so both train on the same things
_SHARED_INPUTS = ("model", "clip", "vae", "images", "masks", "loss", "memory")
TRAINER_EMBEDDING_OUTPUT = 0  # the trainer's final token (its checkpoints list is output 2)


@dataclass(frozen=True)
class LoraGraph:
    """The LoRA stage's settings in every job's graph: the preset, and the values that switch it to `custom`."""

    mode: str = "fast"
    steps: int | None = None
    rank: int | None = None
    batch_size: int | None = None

    def node_values(self) -> dict[str, Any]:
        """The Pivotal LoRA node's mode and training widgets. An override switches to `custom` with the preset's other
        values; alpha follows the rank so that the update scale alpha / rank stays the preset's."""
        preset = PRESETS[self.mode]
        rank = self.rank if self.rank is not None else preset.rank
        values: dict[str, Any] = {"mode": self.mode, "rank": rank, "alpha": preset.alpha * rank / preset.rank,
                                  "learning_rate": preset.learning_rate,
                                  "steps": self.steps if self.steps is not None else preset.steps,
                                  "batch_size": self.batch_size if self.batch_size is not None else preset.batch_size,
                                  "token_learning_rate": 0.0}
        if any(v is not None for v in (self.steps, self.rank, self.batch_size)):
            values["mode"] = "custom"
        return values


def lora_graph(args: argparse.Namespace) -> LoraGraph | None:
    """The run's LoRA settings from --lora and its options; None without --lora."""
    if not getattr(args, "lora", False):
        return None
    return LoraGraph(args.lora_mode, args.lora_steps, args.lora_rank, args.lora_batch_size)


def _next_id(prompt: dict[str, Any]) -> int:
    return max((int(k) for k in prompt if k.isdigit()), default=0) + 1


def add_lora_stage(prompt: dict[str, Any], trainer: str, settings: LoraGraph, seed: int, save_as: str,
                   token_name: str) -> str:
    """Adds the LoRA stage after `trainer` to `prompt`; returns the Save LoRA node's id.

    Save LoRA writes only models/loras/`save_as` (its embeddings copy is off: the graph's Cross-Init Save Embedding
    writes the token as `save_as` already, and two writers of one name would refuse each other), bundles the token as
    `token_name` (the prompt word A1111 reads), and copies the file under output/ for the runner to fetch."""
    t = prompt[trainer]["inputs"]
    lora_id, saver_id = str(_next_id(prompt)), str(_next_id(prompt) + 1)
    inputs: dict[str, Any] = {key: t[key] for key in _SHARED_INPUTS if key in t}
    inputs.update(settings.node_values(), embedding=[trainer, TRAINER_EMBEDDING_OUTPUT], seed=seed,
                  resolution=t.get("resolution", 0), save_every=0, preview_every=0)  # headless: no previews to show
    prompt[lora_id] = {"class_type": PIVOTAL_LORA, "inputs": inputs, "_meta": {"title": "Pivotal LoRA (CLI)"}}
    prompt[saver_id] = {"class_type": LORA_SAVER, "_meta": {"title": "Save LoRA (CLI)"},
                        "inputs": {"lora": [lora_id, 0], "name": save_as, "overwrite": False, "bundle_token": True,
                                   "save_embedding": False, "token_name": token_name, "copy_to_output": True}}
    return saver_id
