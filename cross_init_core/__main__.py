"""`python -m cross_init_core train|eval ...`: the batch runner (cross_init_core/cli.py) and the evaluation
(cross_init_core/eval_cli.py)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["eval"]:
        from .eval_cli import main as eval_main

        sys.exit(eval_main(sys.argv[2:]))
    from .cli import main

    sys.exit(main())
