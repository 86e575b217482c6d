"""The pack loads and works without its optional packages (insightface, onnxruntime) and without OpenCV.

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

import numpy as np
import pytest
from face_photos import ASTRONAUT_EYES, ASTRONAUT_NOSE

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
        # a smooth gradient: nothing face-like in it (random noise can fool any detector now and then)
        ramp = torch.linspace(0.2, 0.8, 96)
        faces = torch.stack([ramp.expand(96, 96), ramp.expand(96, 96).T, torch.full((96, 96), 0.5)], dim=-1)[None]
        prep = nodes.NODE_CLASS_MAPPINGS["CrossInitFacePrep"]
        for detector in ("auto", "insightface"):
            try:
                prep.execute(image=[faces], detector=[detector], model_pack=["antelopev2"], provider=["CPU"],
                             crop_size=[64], margin=[0.25], face_select=["largest"], on_no_face=["error"])
                out[detector] = "ran"
            except ValueError as exc:
                out[detector] = str(exc)
        # a real photo through the node and the core call behind it: detected, landmarks, aligned crop
        from skimage import data
        photo = torch.from_numpy(data.astronaut().astype("float32") / 255.0)[None]
        images, masks, preview = prep.execute(image=[photo], detector=["auto"], model_pack=["antelopev2"], provider=["CPU"],
                                              crop_size=[128], margin=[0.25], face_select=["largest"], on_no_face=["error"]).result
        out["shapes"] = [list(images.shape), list(masks.shape), list(preview.shape)]
        result = pack.cross_init_core.face.prepare_faces(photo, pack.cross_init_core.face.FacePrepOptions(crop_size=128))
        out["detector"] = result.detector
        out["landmarks"] = result.faces[0].landmarks.tolist()
        out["same_crop"] = bool(torch.equal(result.images, images))
    out["cv2_imported"] = sys.modules.get("cv2") is not None
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
    "CrossInitCLIPTextEncode",
    "CrossInitCheckpointReport",
    "CrossInitEmbeddingInit",
    "CrossInitFacePrep",
    "CrossInitIdentityScore",
    "CrossInitLoadEmbedding",
    "CrossInitLoadLoraToken",
    "CrossInitLoadPhotos",
    "CrossInitLoraCheckpointReport",
    "CrossInitLossSettings",
    "CrossInitPivotalLora",
    "CrossInitPromptScore",
    "CrossInitSampleBatch",
    "CrossInitSaveEmbedding",
    "CrossInitSaveLora",
    "CrossInitTrainer",
]


@pytest.mark.slow
def test_pack_works_without_insightface(pack):
    out = run_child(["insightface", "onnxruntime"])
    assert out["registered"] == ALL_NODES
    assert out["init_shape"] == [2, 64]
    # auto falls back to the built-in detector (a gradient holds no face: its own clear no-face error)
    assert "No face found" in out["auto"] and "mtcnn detector" in out["auto"]
    assert "insightface package is not installed" in out["insightface"] and "pip install insightface" in out["insightface"]
    assert out["detector"] == "mtcnn" and out["shapes"] == [[1, 128, 128, 3], [1, 128, 128], [1, 512, 512, 3]]


@pytest.mark.slow
def test_face_prep_detects_and_aligns_where_opencv_cannot_be_imported(pack):
    """OpenCV 5 dropped the Haar cascades and wheels may be absent or broken: face prep must not need cv2."""
    out = run_child(["cv2", "insightface", "onnxruntime"])
    assert out["registered"] == ALL_NODES
    assert out["init_shape"] == [2, 64]
    assert not out["cv2_imported"]
    assert "No face found" in out["auto"] and "mtcnn detector" in out["auto"]  # no face in it: the named no-face error
    assert out["detector"] == "mtcnn" and out["same_crop"]
    assert out["shapes"] == [[1, 128, 128, 3], [1, 128, 128], [1, 512, 512, 3]]
    landmarks = np.array(out["landmarks"])
    assert np.abs(landmarks[:2] - np.array(ASTRONAUT_EYES)).max() < 3.0  # on her pupils
    assert np.abs(landmarks[2] - np.array(ASTRONAUT_NOSE)).max() < 3.0
