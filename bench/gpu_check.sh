#!/usr/bin/env bash
# The GPU check on a CUDA machine WITH the package index: builds (or reuses) the test lanes' venvs
# (scripts/test_env.sh), then runs the same measurements as the offline run (bash bench/device/run.sh) over their
# hosts, newest first (bench/device/run_checks.py): the user's path through a real main.py server, then the
# in-process rows. The report replaces the marked section of docs/benchmarks.md.
#
# Usage: bash bench/gpu_check.sh [--smoke] [--lane oldest|newest|both|current] [--deadline SECONDS] [--output FILE]
#   (default)       lanes newest and oldest, writes docs/benchmarks.md; rows, log and report also in test-output/gpu_check/
#   --smoke         toy sizes on the CPU (seconds); writes a page only to an explicit --output
#   --lane current  the python in CROSS_INIT_PYTHON (or $VENV/bin/python) and COMFYUI_PATH as they are
#   --deadline      seconds for everything (default 900)
# A lane that cannot be set up is named in the report's notes (the check then exits 1); the others are measured.
# A GPU machine without network: bash bench/device/prepare.sh here, then bash bench/device/run.sh there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

smoke=0
lanes="newest oldest"
output=""
deadline=900
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --lane) shift; case "${1:-}" in both) lanes="newest oldest" ;; oldest|newest|current) lanes="$1" ;;
              *) echo "gpu_check: --lane takes oldest, newest, both or current (got '${1:-}')" >&2; exit 2 ;; esac ;;
    --output) shift; output="$1" ;;
    --deadline) shift; deadline="$1" ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$smoke" = 0 ] && [ -z "$output" ]; then output="docs/benchmarks.md"; fi

export CROSS_INIT_NO_APT=1  # the browser test's packages are not needed here
hosts=()
notes=()
for lane in $lanes; do
  if [ "$lane" = current ]; then
    python="${CROSS_INIT_PYTHON:-}"
    if [ -z "$python" ] && [ -n "${VENV:-}" ]; then python="$VENV/bin/python"; fi
    if [ -z "${COMFYUI_PATH:-}" ] || [ -z "$python" ] || [ ! -x "$python" ]; then
      echo "gpu_check: --lane current needs COMFYUI_PATH and CROSS_INIT_PYTHON (or VENV) set" >&2; exit 2
    fi
    hosts+=(--host "=$python:$COMFYUI_PATH")
    continue
  fi
  unset COMFYUI_PATH
  # shellcheck source=scripts/test_env.sh
  source scripts/test_env.sh
  if ! ensure_lane "$lane" >&2; then
    note="Lane $lane was NOT MEASURED: its test environment could not be set up here (${NEWEST_MISSING:-see the setup log on stderr})."
    echo "gpu_check: $note" >&2
    notes+=(--note "$note")
    continue
  fi
  hosts+=(--host "=$VENV/bin/python:$COMFYUI_PATH")
done
if [ "${#hosts[@]}" = 0 ]; then echo "gpu_check: no host lane could be set up" >&2; exit 1; fi

flags=(--deadline "$deadline" --out "${GPU_CHECK_OUT:-test-output/gpu_check}")
[ "$smoke" = 1 ] && flags+=(--smoke)
[ -n "$output" ] && flags+=(--docs "$output")
exec python3 bench/device/run_checks.py hosts "${hosts[@]}" "${notes[@]+"${notes[@]}"}" "${flags[@]}"
