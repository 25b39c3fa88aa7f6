"""The benchmarks' option handling (their timings are not tests)."""
from __future__ import annotations

import pytest

from benchmarks import train_step


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
