#!/usr/bin/env bash
# The one test command: builds (or reuses) a cached venv with the pinned test host, then runs ruff + pytest.
# Usage: bash scripts/test.sh [pytest args...]
# Env:   COMFYUI_PATH   test against this ComfyUI checkout instead of the pinned 0.3.75
#        CROSS_INIT_CACHE  where cached venvs live (default ~/.cache/cross-init-comfyui)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=scripts/test_env.sh
source scripts/test_env.sh
ensure_test_env
log "ruff"
"$VENV/bin/ruff" check .
log "pytest"
set +e
if [ $# -eq 0 ]; then set -- tests; fi
"$VENV/bin/python" -m pytest -c tests/pytest.ini --rootdir tests "$@"
rc=$?
set -e
exit $rc
