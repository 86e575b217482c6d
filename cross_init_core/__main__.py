"""`python -m cross_init_core train ...`: the headless batch runner (see cross_init_core/cli.py)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
