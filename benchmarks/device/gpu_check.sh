#!/usr/bin/env bash
# Issue #19's GPU rows, on the lent GPU machine, from the repository root:
#   benchmarks/device/fetch_wheels.sh            # here, once
#   run: bash benchmarks/device/gpu_check.sh     # there, carry .device_wheels
# Installs the carried wheels into a folder on PYTHONPATH (nothing else is
# installed there), prints what JAX and torch see, then times the train step
# of ResNet-50 and BN-Inception at 224 px, batch 128, bfloat16 against
# PyTorch + PML (benchmarks/train_step.py --platform=gpu: images/s, FLOP/s,
# MFU). Results go to $OUT (the device tool's folder) or /tmp/dmlx_gpu.
set -euo pipefail
OUT=${OUT:-/tmp/dmlx_gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# Into a folder of their own (the image's site-packages may be read-only).
SITE=/tmp/dmlx_device_site
if ls .device_wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target "$SITE" .device_wheels/*.whl
fi
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
$PY - <<'PYEOF' | tee "$OUT/devices.txt"
import jax, torch
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYEOF
# PLATFORM=cpu EXTRA='--image-size=32 --batch=16 --threads=1' NETS=resnet18
# dry-runs the script on a CPU machine.
timeout ${STEP_TIMEOUT:-420} $PY benchmarks/train_step.py \
  --platform=${PLATFORM:-gpu} --nets=${NETS:-resnet50,bn_inception} \
  --steps=${STEPS:-10} ${EXTRA:-} \
  --out="$OUT/train_step_gpu.json" 2>&1 | tee "$OUT/train_step_gpu.txt"
