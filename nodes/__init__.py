"""The pack's nodes: thin schemas over cross_init_core."""

from __future__ import annotations

from comfy_api.latest import io

from .checkpoint_report import CrossInitCheckpointReport, CrossInitLoraCheckpointReport
from .embedding_files import CrossInitLoadEmbedding, CrossInitSaveEmbedding
from .embedding_init import CrossInitEmbeddingInit
from .face_prep import CrossInitFacePrep
from .load_photos import CrossInitLoadPhotos
from .loss_settings import CrossInitLossSettings
from .pivotal import CrossInitLoadLoraToken, CrossInitPivotalLora, CrossInitSaveLora
from .samples import CrossInitSampleBatch
from .scores import CrossInitIdentityScore, CrossInitPromptScore
from .text_encode import CrossInitCLIPTextEncode
from .trainer import CrossInitTrainer

NODE_CLASSES: list[type[io.ComfyNode]] = [
    CrossInitLoadPhotos,
    CrossInitFacePrep,
    CrossInitEmbeddingInit,
    CrossInitLossSettings,
    CrossInitTrainer,
    CrossInitCLIPTextEncode,
    CrossInitSaveEmbedding,
    CrossInitLoadEmbedding,
    CrossInitIdentityScore,
    CrossInitPromptScore,
    CrossInitSampleBatch,
    CrossInitCheckpointReport,
    CrossInitPivotalLora,
    CrossInitSaveLora,
    CrossInitLoadLoraToken,
    CrossInitLoraCheckpointReport,
]
