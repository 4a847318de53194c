#!/usr/bin/env bash
# Prepare what a device run needs and the device machine lacks (it has torch, transformers, huggingface_hub, but no
# diffusers or PyAV, and ../shared does not travel): a compressed copy of those packages from .venv, the official
# Sonic code (read at run time by bench_speed, never imported into the pack) and espeak-ng speech for bench_gpu,
# all in .gpu_bundle/ (git-ignored, about 35 MB: under the device tool's 64 MiB). Then, on a device run, carry
# .gpu_bundle and run bench/gpu_session.sh (see its header).
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf .gpu_bundle && mkdir -p .gpu_bundle
# PyAV's extension modules are abi3 (any CPython >= 3.8) and bring their FFmpeg in av.libs; diffusers and pydub
# are pure Python.
(cd "$SITE" && tar --exclude=__pycache__ -cf - diffusers diffusers-*.dist-info av av.libs av-*.dist-info pydub \
  pydub-*.dist-info) | xz -6 -T0 > .gpu_bundle/site.tar.xz
cp -r ../shared/reference/sonic-official .gpu_bundle/sonic-official && chmod -R u+w .gpu_bundle/sonic-official
.venv/bin/python bench/bench_gpu.py --make-audio .gpu_bundle/audio
du -sh .gpu_bundle
