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
# pytest's rootdir is tests/ (the repo root is the ComfyUI package itself): default to the whole suite when
# no test path is given, e.g. `bash scripts/test.sh -k cancel`
has_path=0
for arg in "$@"; do
  case "$arg" in
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then has_path=1; fi ;;
  esac
done
if [ "$has_path" = 0 ]; then set -- "$@" tests; fi
"$VENV/bin/python" -m pytest -c tests/pytest.ini --rootdir tests "$@"
rc=$?
set -e
exit $rc
