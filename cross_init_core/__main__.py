"""`python -m cross_init_core train|eval ...`: the terminal client (cross_init_core/client/)."""

from __future__ import annotations

import sys

from .client import main

if __name__ == "__main__":
    sys.exit(main())
