"""Cross-Init for ComfyUI: personal face tokens by Cross Initialization textual inversion.

ComfyUI imports this package from custom_nodes and calls `comfy_entrypoint`.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
MINIMUM_COMFYUI = "0.3.75"

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError as exc:  # older hosts lack the V3 node API this pack uses
    raise ImportError(
        f"Cross-Init needs ComfyUI {MINIMUM_COMFYUI} or newer (the comfy_api V3 node API was not found: {exc}). "
        "Update ComfyUI, then restart it."
    ) from exc

from .cross_init_core import __version__  # noqa: E402
from .cross_init_core.face import register_insightface_folder  # noqa: E402
from .cross_init_core.scoring import register_clip_scoring_folder  # noqa: E402
from .nodes import NODE_CLASSES  # noqa: E402


class CrossInitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


# `insightface` models folder key, so extra_model_paths.yaml can point it elsewhere
register_insightface_folder()
# `clip_scoring` models folder key: full CLIP models for the prompt score
register_clip_scoring_folder()


async def comfy_entrypoint() -> CrossInitExtension:
    log.info("Cross-Init %s: %d nodes", __version__, len(NODE_CLASSES))
    return CrossInitExtension()


__all__ = ["__version__", "comfy_entrypoint"]
