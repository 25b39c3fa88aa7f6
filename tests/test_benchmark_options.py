"""The benchmarks' option handling (their timings are not tests)."""
from __future__ import annotations

import os

import pytest

from benchmarks import train_step
import child_process  # tests/child_process.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_gpu_defaults_and_overrides():
  gpu = train_step._parse(["--platform=gpu"])  # pylint: disable=protected-access
  assert (gpu.image_size, gpu.batch, gpu.dtype) == (224, 128, "bfloat16")
  assert train_step.shape("resnet50", gpu) == (224, 128)
  cpu = train_step._parse([])  # pylint: disable=protected-access
  assert cpu.dtype == "float32"
  assert train_step.shape("resnet50", cpu) == train_step.NETS["resnet50"][:2]
  mixed = train_step._parse(["--platform=gpu", "--dtype=float32", "--batch=64"])  # pylint: disable=protected-access
  assert (mixed.image_size, mixed.batch, mixed.dtype) == (224, 64, "float32")
  with pytest.raises(ValueError, match="--batch: 30"):
    train_step._parse(["--batch=30"])  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="'fp8'"):
    train_step._parse(["--dtype=fp8"])  # pylint: disable=protected-access


def test_mfu_column_only_where_a_datasheet_rate_is_known():
  row = {"dmlx": {"mfu": 0.412}, "torch": {"mfu": 0.38}}
  assert train_step._mfu(row).strip() == "41.2%/38.0%"  # pylint: disable=protected-access
  assert train_step._mfu({"dmlx": {}}).strip() == "-"  # pylint: disable=protected-access


def _step_flops(devices: int, workdir) -> dict:
  """``dmlx_step``'s devices and FLOPs for a tiny small-CNN step, in a fresh
  process on ``devices`` simulated CPU devices."""
  code = ("import json, sys; from benchmarks import train_step; "
          "r = train_step.dmlx_step('small_cnn', 'default', 1, sys.argv[1], "
          "size=16, batch=16); "
          "print(json.dumps({'devices': r['devices'], 'flops': r['flops']}))")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return child_process.last_json(["-c", code, str(workdir)], env=env, cwd=ROOT)


def test_step_flops_count_every_device_of_the_mesh(tmp_path):
  """XLA's cost analysis of a partitioned step is one device's share: the
  benchmark's FLOPs (and so its GFLOP/s and roofline) are the whole step's
  on a mesh of two devices as on one."""
  one = _step_flops(1, tmp_path / "one")
  two = _step_flops(2, tmp_path / "two")
  assert (one["devices"], two["devices"]) == (1, 2)
  assert one["flops"] > 0
  assert abs(two["flops"] / one["flops"] - 1) < 0.05, (one, two)
