"""Smoke test of experiments/dmlda.py --quick (DML-DA's comparison and λ
sweep at small scale): it runs, prints its tables and writes JSON and a plot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_run_writes_tables_plot_and_json(tmp_path):
  out_dir = tmp_path / "results"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "dmlda.py"),
       "--quick", f"--out={out_dir}",
       f"--jax_cache={tmp_path / 'jax_cache'}"],
      capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "contrastive (λ=10" in proc.stdout and "λ sweep" in proc.stdout
  with open(out_dir / "dmlda_quick.json") as f:
    result = json.load(f)
  rows = result["table"]["contrastive"]
  assert set(rows) == {"base", "DA"}
  for row in rows.values():
    assert 0.0 <= row["R@1"] <= 1.0 and 0.0 <= row["NMI"] <= 1.0
    assert row["gap R@1"] == pytest.approx(row["train R@1"] - row["R@1"])
  assert "mean alpha" in rows["DA"] and "mean alpha" not in rows["base"]
  assert set(result["sweep"]["runs"]) == {"1.0", "10.0"}
  assert (out_dir / "dmlda_quick.png").exists()
