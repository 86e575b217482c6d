#!/usr/bin/env bash
# One-command GPU check: half-precision training speed, memory and gradient agreement on real-size
# SD 1.5 and SD 2.1-base (random weights) at 512 px, on both host lanes, plus a diffusers peer step.
# Writes its rows into the marked section of docs/benchmarks.md and prints a summary (bench/gpu_check.py).
#
# Usage: bash bench/gpu_check.sh [--smoke] [--lane oldest|newest|both|current] [--output FILE] [--models sd15 sd21]
#   (default)   CUDA machine, lanes oldest and newest, writes docs/benchmarks.md; under 8 minutes on one H100
#   --smoke     CPU smoke run with tiny models (seconds); prints only, writes only to an explicit --output
#   --lane current  use the python in CROSS_INIT_PYTHON (or $VENV/bin/python) and COMFYUI_PATH as they are
#               (a machine where the lane venvs cannot be built, or the test suite's own venv)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

smoke=0
lanes="oldest newest"
output=""
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --lane) shift; case "$1" in both) lanes="oldest newest" ;; oldest|newest|current) lanes="$1" ;;
              *) echo "gpu_check: --lane takes oldest, newest, both or current (got '$1')" >&2; exit 2 ;; esac ;;
    --output) shift; output="$1" ;;
    --models) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do models+=("$1"); shift; done; continue ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$smoke" = 0 ] && [ -z "$output" ]; then output="docs/benchmarks.md"; fi

export CROSS_INIT_NO_APT=1  # the browser test's packages are not needed here
started=$SECONDS
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rows="$work/rows.jsonl"
notes=()
status=0
flags=()
[ "$smoke" = 1 ] && flags+=(--smoke)
[ "${#models[@]}" -gt 0 ] && flags+=(--models "${models[@]}")

# Sets VENV and COMFYUI_PATH for a host lane (scripts/test_env.sh builds or reuses its cached venv;
# it returns 3 when the newest host's source is absent on this machine).
lane_env() {
  unset COMFYUI_PATH
  # shellcheck source=scripts/test_env.sh
  source scripts/test_env.sh
  ensure_lane "$1" >&2
}

for lane in $lanes; do
  if [ "$lane" = current ]; then
    python="${CROSS_INIT_PYTHON:-}"
    if [ -z "$python" ] && [ -n "${VENV:-}" ]; then python="$VENV/bin/python"; fi
    if [ -z "${COMFYUI_PATH:-}" ] || [ -z "$python" ] || [ ! -x "$python" ]; then
      echo "gpu_check: --lane current needs COMFYUI_PATH and CROSS_INIT_PYTHON (or VENV) set" >&2; exit 2
    fi
  else
    if ! lane_env "$lane"; then
      echo "gpu_check: LANE $lane NOT MEASURED: its test environment could not be set up here (see above)" >&2
      notes+=("Lane $lane: not measured (its test environment could not be set up on this machine).")
      status=1
      continue
    fi
    python="$VENV/bin/python"
  fi
  echo "gpu_check: lane $lane: $python, ComfyUI at $COMFYUI_PATH" >&2
  COMFYUI_PATH="$COMFYUI_PATH" "$python" bench/gpu_check.py measure --lane "$lane" --rows "$rows" "${flags[@]}" || status=1
done

report=(--rows "$rows" --wall "$((SECONDS - started))")
[ -n "$output" ] && report+=(--output "$output")
[ "$smoke" = 1 ] && report+=(--smoke)
for note in "${notes[@]+"${notes[@]}"}"; do report+=(--note "$note"); done
"${python:-python3}" bench/gpu_check.py report "${report[@]}" || status=1
echo "gpu_check: done in $((SECONDS - started)) s" >&2
exit $status
