#!/usr/bin/env bash
# One device call that measures what only a GPU can, inside the device tool's 10-minute command limit:
#   - bench_speed at 512², 4 s of the speech, 25 steps (official vs ours, every memory lever, the attention census)
#   - bench_gpu env + models + soak: device memory after 50 consecutive 2 s runs (issue 18 item 7)
# Each bench writes its own results file (provenance inside) under bench/results; both are copied to $OUT.
# Prepare here first with scripts/gpu_bundle.sh, then call the device tool's run with
#   command "bash bench/gpu_session.sh", carry [".gpu_bundle"], timeout_s 600
# SPEED_S / GPU_S bound each bench (seconds); a bench cut off keeps what it saved (`complete: false`).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
mkdir -p /tmp/site && tar -xJf .gpu_bundle/site.tar.xz -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD SONIC_OFFICIAL_DIR=$PWD/.gpu_bundle/sonic-official
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/sonic-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
$PY -c 'import torch, diffusers, transformers, av; print(torch.__version__, diffusers.__version__,
transformers.__version__, av.__version__, torch.cuda.get_device_name())' || exit 1
timeout "${SPEED_S:-330}" $PY bench/bench_speed.py --sizes 512 --levers-sizes 512 --seconds 4 2>&1 | tee "$OUT/bench_speed.log"
echo "bench_speed rc=${PIPESTATUS[0]}"
timeout "${GPU_S:-200}" $PY bench/bench_gpu.py --phases env models soak --soak-runs 50 --soak-seconds 2 --sizes 512 \
  --audio-dir .gpu_bundle/audio 2>&1 | tee "$OUT/bench_gpu.log"
echo "bench_gpu rc=${PIPESTATUS[0]}"
cp bench/results/speed.json bench/results/gpu.json "$OUT/"
