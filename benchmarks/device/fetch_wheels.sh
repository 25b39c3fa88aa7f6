#!/usr/bin/env bash
# Downloads, on a machine with the package registries, the wheels that the GPU
# machine's image lacks (ml_collections, faiss-cpu, pytorch-metric-learning)
# for its Python 3.12 into .device_wheels/ (git-ignored, ~19 MB): carry that
# folder to the device with benchmarks/device/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .device_wheels
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .device_wheels ml_collections==1.1.0 faiss-cpu==1.15.1 \
  pytorch-metric-learning==2.9.0
ls -l .device_wheels
