#!/usr/bin/env bash
# The GPU check on a GPU machine without network, from .device/ alone (fill it first with
# `bash bench/device/prepare.sh` on a machine with the package index, and carry .device with the working tree).
#
# Usage: bash bench/device/run.sh [--smoke] [--deadline SECONDS] [--out DIR]
#   python       the python3 on PATH (on the GPU machine: the one with torch); ComfyUI takes the GPU when torch
#                sees one, and the CPU only where it does not
#   --deadline   seconds for everything, the report included (default 480)
#   --smoke      the same path at toy sizes on a CPU (the test suite's offline rehearsal)
#   --out        where gpu_rows.jsonl, gpu_check.log and benchmarks.md go (default: $OUT, else test-output/device)
# It installs .device/wheels with pip --no-index into a temp folder, unpacks .device/hosts and runs the
# measurements in priority order (bench/device/run_checks.py); each row is written the moment it is measured,
# and benchmarks.md is written whatever happens. Exit 0 when every row was measured without an error.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
case "${1:-}" in -h|--help) sed -n '2,14p' "$0"; exit 0 ;; esac
python="$(command -v python3)" || { echo "run.sh: no python3 on PATH" >&2; exit 2; }
exec "$python" bench/device/run_checks.py offline "$@"
