"""The pack loads and works without its optional packages (insightface, onnxruntime, OpenCV).

Each case runs in a fresh Python process in which those imports fail, boots ComfyUI, loads the pack
through ComfyUI's loader and runs nodes; the child prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CHILD = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` now raises ImportError, as if it were not installed
    sys.path.insert(0, {tests!r})
    import torch
    import host, tiny_models
    pack = host.boot(Path(tempfile.mkdtemp()))
    import nodes
    out = {{"registered": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("CrossInit"))}}
    m = tiny_models.build("sd1")
    with torch.inference_mode():
        emb = nodes.NODE_CLASS_MAPPINGS["CrossInitEmbeddingInit"].execute(clip=m.clip, num_tokens=2, names="Tom Hanks").result[0]
        out["init_shape"] = list(emb.vectors["clip_l"].shape)
        faces = torch.rand(1, 96, 96, 3)
        prep = nodes.NODE_CLASS_MAPPINGS["CrossInitFacePrep"]
        for detector in ("auto", "insightface"):
            try:
                prep.execute(image=[faces], detector=[detector], model_pack=["antelopev2"], provider=["CPU"],
                             crop_size=[64], margin=[0.25], face_select=["largest"], on_no_face=["error"])
                out[detector] = "ran"
            except ValueError as exc:
                out[detector] = str(exc)
    print("RESULT " + json.dumps(out))
    """
)


def run_child(blocked: list[str]) -> dict:
    code = CHILD.format(blocked=blocked, tests=str(TESTS))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


ALL_NODES = [
    "CrossInitCLIPTextEncode", "CrossInitEmbeddingInit", "CrossInitFacePrep", "CrossInitIdentityScore", "CrossInitLoadEmbedding",
    "CrossInitLossSettings", "CrossInitPromptScore", "CrossInitSaveEmbedding", "CrossInitTrainer",
]


@pytest.mark.slow
def test_pack_works_without_insightface(pack):
    out = run_child(["insightface", "onnxruntime"])
    assert out["registered"] == ALL_NODES
    assert out["init_shape"] == [2, 64]
    # auto falls back to the OpenCV detector (random pixels hold no face: its own clear no-face error)
    assert "No face found" in out["auto"] and "opencv" in out["auto"].lower()
    assert "insightface package is not installed" in out["insightface"] and "pip install insightface" in out["insightface"]


@pytest.mark.slow
def test_pack_loads_without_opencv_and_face_prep_says_what_to_install(pack):
    out = run_child(["cv2", "insightface", "onnxruntime"])
    assert out["registered"] == ALL_NODES
    assert out["init_shape"] == [2, 64]
    assert "needs OpenCV" in out["auto"] and "pip install opencv" in out["auto"]
