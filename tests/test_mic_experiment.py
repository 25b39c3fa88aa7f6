"""Tests of experiments/mic.py: its analyses against plain loops, and (slow)
its --quick run end to end.

The analyses measure MIC's claims (Roth et al., ICCV 2019): nearest-neighbour
agreement of shared attributes in E_β vs E_α, and Fig. 8's intra-class
variance of E_α normalised by the distance between class centres.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import experiment_scripts  # tests/experiment_scripts.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


script = experiment_scripts.load("mic")


def _loop_agreement(x, values, k):
  total = 0.0
  for i in range(len(x)):
    d = sorted((float(np.sum((x[i] - x[j]) ** 2)), j)
               for j in range(len(x)) if j != i)
    total += sum(values[j] == values[i] for _, j in d[:k]) / k
  return total / len(x)


def test_neighbour_agreement_matches_loop_and_detects_encoded_attribute():
  rng = np.random.default_rng(0)
  attribute = rng.integers(0, 3, 60)
  other = rng.integers(0, 4, 60)
  # The embedding encodes `attribute` (big offsets) but not `other`.
  x = np.eye(3)[attribute] * 3.0 + rng.normal(size=(60, 3)) * 0.3
  for values in (attribute, other):
    for k in (1, 5):
      np.testing.assert_allclose(script.neighbour_agreement(x, values, k),
                                 _loop_agreement(x, values, k), atol=1e-12)
  assert script.neighbour_agreement(x, attribute, 5) > 0.95
  assert abs(script.neighbour_agreement(x, other, 5)
             - script.chance_agreement(other)) < 0.15
  with pytest.raises(ValueError, match="k must lie"):
    script.neighbour_agreement(x, attribute, 60)


def test_chance_agreement_matches_loop():
  values = np.array([0, 0, 1, 1, 1, 2])
  expected = np.mean([sum(values[j] == values[i] for j in range(6) if j != i)
                      / 5 for i in range(6)])
  assert script.chance_agreement(values) == pytest.approx(expected)


def test_intra_class_variance_matches_loop():
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(4), 5)
  x = rng.normal(size=(20, 3)) + labels[:, None] * 2.0
  intra = []
  for c in range(4):
    m = x[labels == c]
    pairs = [np.linalg.norm(m[i] - m[j]) for i in range(5)
             for j in range(i + 1, 5)]
    intra.append(np.mean(pairs))
  centres = [x[labels == c].mean(0) for c in range(4)]
  inter = np.mean([np.linalg.norm(centres[i] - centres[j]) for i in range(4)
                   for j in range(i + 1, 4)])
  out = script.intra_class_variance(x, labels)
  assert out["intra"] == pytest.approx(np.mean(intra))
  assert out["inter"] == pytest.approx(inter)
  assert out["ratio"] == pytest.approx(np.mean(intra) / inter)
  # Shrinking every class towards its centre lowers the ratio.
  tight = np.stack(centres)[labels] + 0.1 * (x - np.stack(centres)[labels])
  assert script.intra_class_variance(tight, labels)["ratio"] < out["ratio"]


@pytest.mark.slow
def test_quick_run_writes_tables_and_json(tmp_path):
  out_dir = tmp_path / "results"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "mic.py"), "--quick",
       f"--workdir={tmp_path / 'runs'}", f"--out_dir={out_dir}"],
      capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Table 6" in proc.stdout and "Fig. 8" in proc.stdout
  with open(out_dir / "mic_quick.json") as f:
    result = json.load(f)
  assert len(result["ablation"]) == 2     # --quick: baseline and MIC
  for row in result["ablation"].values():
    assert 0.0 <= row["recall@1"] <= 1.0
  assert set(result["fig8"]) == {"0", str(result["settings"]["aux_dim"])}
  assert (out_dir / "mic_fig8_quick.png").exists()
