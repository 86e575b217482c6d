"""The terminal client: `python -m cross_init_core train|eval`, an HTTP client of ComfyUI servers.

It is a program of its own beside the nodes: it imports no ComfyUI code (it talks to servers over their public
HTTP API) and of the pack only the pure shared pieces (settings, errors, embedding_names, atomic_files,
prompt_text, text_table); the server side never imports it. Its parts:

- `train/`: the batch runner (arguments, jobs, the training graph, the farm of servers);
- `eval/`: the paper's evaluation (arguments, plan and checks, the graph per prompt, the run, the tables);
- shared by both: `common` (exit codes, argument types, photos, one command's run), `comfy_client` (the
  HTTP/websocket client and a ComfyUI child process), `local_comfyui` (finding and starting the local ComfyUI),
  `preflight` (what a server must have), `prompt_graph` (API prompts as JSON, node types, shipped workflows),
  and `progress` (the progress output).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`train ...` (also the default) or `eval ...`; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["eval"]:
        from .eval.command import main as eval_main

        return eval_main(args[1:])
    from .train.command import main as train_main

    return train_main(args)
