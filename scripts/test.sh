#!/usr/bin/env bash
# The one test command: ruff, then the whole test suite on each host lane (see scripts/test_env.sh):
#   oldest = ComfyUI 0.3.75 with pinned dependencies, newest = upstream ComfyUI 0.33 with today's dependencies.
# Usage: bash scripts/test.sh [--lane oldest|newest|both] [--require-newest] [pytest args...]
# Env:   CROSS_INIT_NEWEST_COMFYUI  a ComfyUI checkout to use as the newest host (instead of the tarball)
#        CROSS_INIT_NEWEST_TARBALL  the newest host's tarball (default ../shared/hosts/ComfyUI-0.33.0.tar.gz)
#        CROSS_INIT_CACHE           where cached venvs and hosts live (default ~/.cache/cross-init-comfyui)
#        CI=true                    as --require-newest
# Where the newest host is absent, that lane is skipped with a loud warning; --require-newest (or CI=true)
# makes that a failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=scripts/test_env.sh
source scripts/test_env.sh

lanes=(oldest newest)
require_newest=0
[ "${CI:-}" = "true" ] && require_newest=1
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lane) shift; case "${1:-}" in both) lanes=(oldest newest) ;; oldest|newest) lanes=("$1") ;;
              *) log "--lane takes oldest, newest or both"; exit 2 ;; esac ;;
    --lane=*) v="${1#--lane=}"; if [ "$v" = both ]; then lanes=(oldest newest); else lanes=("$v"); fi ;;
    --require-newest) require_newest=1 ;;
    *) args+=("$1") ;;
  esac
  shift
done

# pytest's rootdir is tests/ (the repo root is the ComfyUI package itself): default to the whole suite when
# no test path is given, e.g. `bash scripts/test.sh -k cancel`
has_path=0
for arg in "${args[@]+"${args[@]}"}"; do
  case "$arg" in
    -*) ;;
    *) if [ -e "${arg%%::*}" ]; then has_path=1; fi ;;
  esac
done
if [ "$has_path" = 0 ]; then args+=(tests); fi

passed=0
failed=0
ruff_done=0
for lane in "${lanes[@]}"; do
  rc=0
  ensure_lane "$lane" || rc=$?
  if [ "$rc" = 3 ]; then
    if [ "$require_newest" = 1 ]; then
      log "ERROR: $NEWEST_MISSING"
      failed=$((failed + 1))
    else
      log "WARNING: the newest-host lane is SKIPPED: $NEWEST_MISSING"
      log "WARNING: only the oldest supported ComfyUI was tested"
    fi
    continue
  elif [ "$rc" != 0 ]; then
    log "ERROR: could not set up the $lane lane"
    failed=$((failed + 1))
    continue
  fi
  if [ "$ruff_done" = 0 ]; then
    log "ruff"
    "$VENV/bin/ruff" check . || { failed=$((failed + 1)); ruff_done=1; continue; }
    ruff_done=1
  fi
  log "pytest, lane $lane"
  set +e
  "$VENV/bin/python" -m pytest -c tests/pytest.ini --rootdir tests "${args[@]}"
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); log "lane $lane: pytest exited $rc"; fi
done
echo "lanes: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
