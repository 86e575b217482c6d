"""Scenario 6: 20 trainings + saves in a row in one process (as in a long-lived ComfyUI). After a warm-up of
5 runs, runs 6-20 must not grow what Python holds: gc-tracked objects, live tensors, traced memory, the
host's list of loaded models, log handlers; and no file may appear under the ComfyUI base directory except
the embeddings saved.

Thresholds, from measurement (2 shared CPU cores, torch 2.14, 15 runs after the warm-up): objects +32,
tensors +0, traced memory +35 KB -- noise from interned strings, logging and the host's caches. Asserted:
tensors +0 exactly (keeping one TrainingResult per run, as a cache or a list would, is +30 tensors and
+195 objects over 15 runs: this assertion catches it), objects < +2000 (a leaked autograd graph or
optimizer per run is hundreds of objects each), traced memory < +5 MB (one leaked latent batch plus Adam
state per run is > 0.3 MB x 15), host loaded-model list and log handlers +0.
"""

from __future__ import annotations

import gc
import logging
import tracemalloc
import uuid
from pathlib import Path

import torch
from helpers import face_images, init_embedding, settings

RUNS, WARMUP = 20, 5
MAX_OBJECTS, MAX_TENSORS, MAX_BYTES = 2000, 0, 5 * 2**20


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _live_tensors() -> int:
    # issubclass(type(o)) rather than isinstance: no __class__ lookup on the host's lazy/deprecated proxies
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _handlers() -> int:
    return sum(len(getattr(lg, "handlers", [])) for lg in [logging.getLogger(), *logging.root.manager.loggerDict.values()])


def test_twenty_trainings_in_a_row_hold_no_more_objects_tensors_memory_or_files(core, tiny, embeddings_dir):
    import comfy.model_management as mm
    import folder_paths

    m = tiny("sd1")
    emb = init_embedding(core, m.clip)
    images = face_images(1)
    base = Path(folder_paths.base_path).resolve()
    files_before = _files(base)
    tag = uuid.uuid4().hex[:8]
    saved: list[Path] = []

    def one_run(i: int) -> None:
        with torch.inference_mode():
            result = core.training.trainer.train(m.model, m.clip, m.vae, images, emb, settings(core, steps=1 + i % 2, batch_size=1, seed=i))
        saved.append(core.embeddings.embedding_io.save_embedding(result.embedding, embeddings_dir, f"repeat_{tag}_{i:02d}"))

    def measure() -> dict[str, int]:
        gc.collect()
        return {"objects": len(gc.get_objects()), "tensors": _live_tensors(), "loaded_models": len(mm.current_loaded_models),
                "handlers": _handlers(), "bytes": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0}

    try:
        for i in range(WARMUP):
            one_run(i)
        tracemalloc.start()
        start = measure()
        for i in range(WARMUP, RUNS):
            one_run(i)
        end = measure()
    finally:
        tracemalloc.stop()
    growth = {k: end[k] - start[k] for k in start}
    assert growth["tensors"] <= MAX_TENSORS, growth
    assert growth["objects"] < MAX_OBJECTS, growth
    assert growth["bytes"] < MAX_BYTES, growth
    assert growth["loaded_models"] == 0 and growth["handlers"] == 0, growth
    # files: exactly the 20 saved embeddings appeared; nothing else was created, removed or left behind
    files_after = _files(base)
    expected = {str(p.resolve().relative_to(base)) for p in saved}
    assert len(expected) == RUNS
    assert files_after - files_before == expected, sorted(files_after - files_before - expected)[:10]
    assert files_before <= files_after
    for p in saved:
        p.unlink()
