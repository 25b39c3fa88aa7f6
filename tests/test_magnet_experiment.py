"""Tests of experiments/magnet.py: its measures against plain loops, and
(slow) its --quick run end to end.

The measures are those of Rippel et al. (ICLR 2016): attribute concentration
(section 4.2, Fig. 6d), hierarchy recovery from collapsed pairs of classes
(section 4.3), the steps-to-triplet-error of Fig. 5, and test errors.
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


script = experiment_scripts.load("magnet")


def _loop_concentration(x, values, labels, n, other_class):
  fractions = []
  for i in range(len(x)):
    d = sorted((float(np.sum((x[i] - x[j]) ** 2)), j) for j in range(len(x))
               if j != i and (not other_class or labels[j] != labels[i]))
    near = [j for _, j in d[:n]]
    fractions.append(np.mean([values[j] == values[i] for j in near]))
  return float(np.mean(fractions))


def test_attribute_concentration_matches_loop():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 50)
  colour = rng.integers(0, 3, 50)
  other = rng.integers(0, 4, 50)
  # The embedding encodes colour (big offsets), not `other`.
  x = np.eye(3)[colour] * 3.0 + rng.normal(size=(50, 3)) * 0.5
  sizes = (1, 3, 8)
  out = script.attribute_concentration(x, {"colour": colour, "other": other},
                                       sizes, labels)
  for name, values in (("colour", colour), ("other", other)):
    for view, other_class in (("by_size", False), ("other_class", True)):
      expected = [_loop_concentration(x, values, labels, n, other_class)
                  for n in sizes]
      np.testing.assert_allclose(out[name][view], expected, atol=1e-12)
  _, counts = np.unique(other, return_counts=True)
  assert out["other"]["chance"] == pytest.approx(np.sum((counts / 50) ** 2))
  assert out["colour"]["by_size"][0] > 0.9
  assert out["other"]["by_size"][0] < 0.6


def test_procedural_pairs_collapse_two_classes_per_label():
  ds = script.load_procedural_pairs(num_classes=6, per_class=3,
                                    image_size=16)
  fine = ds.attributes["fine_class"]
  assert ds.num_classes == 3
  np.testing.assert_array_equal(fine, np.repeat(np.arange(6), 3))
  for c in range(3):
    assert len(np.unique(fine[ds.labels == c])) == 2
  for f in range(6):  # every fine class maps to a single coarse label
    assert len(np.unique(ds.labels[fine == f])) == 1
  with pytest.raises(ValueError, match="num_classes=5"):
    script.load_procedural_pairs(num_classes=5, per_class=2, image_size=16)


def test_hierarchy_recovery_within_pair_matches_loop():
  rng = np.random.default_rng(2)
  train_fine = np.repeat(np.arange(4), 6)
  test_fine = np.repeat(np.arange(4), 3)
  coarse = np.array([0, 0, 1, 1])
  train = rng.normal(size=(24, 2)) + train_fine[:, None] * 0.7
  test = rng.normal(size=(12, 2)) + test_fine[:, None] * 0.7
  out = script.hierarchy_recovery(train, train_fine, coarse[train_fine], test,
                                  test_fine, coarse[test_fine])
  hits = []
  for i in range(12):
    same = [j for j in range(24) if coarse[train_fine[j]] == coarse[test_fine[i]]]
    j = min(same, key=lambda j: np.sum((test[i] - train[j]) ** 2))
    hits.append(train_fine[j] == test_fine[i])
  assert out["within_pair_1nn_accuracy"] == pytest.approx(np.mean(hits))
  # Fine classes far apart: recovered exactly.
  sep = script.hierarchy_recovery(train_fine[:, None] * 10.0, train_fine,
                                  coarse[train_fine], test_fine[:, None] * 10.0,
                                  test_fine, coarse[test_fine])
  assert sep["within_pair_1nn_accuracy"] == 1.0
  assert sep["fine_1nn_accuracy"] == 1.0 and sep["fine_nmi"] > 0.99


def test_efficiency_finds_first_step_at_triplet_error():
  curve = lambda errs: {str(29 * (i + 1)): {"knn_error": e, "knc_error": e}
                        for i, e in enumerate(errs)}
  out = script.efficiency({"triplet": curve([0.9, 0.8, 0.6]),
                           "magnet": curve([0.7, 0.6, 0.5]),
                           "softmax": curve([0.9, 0.8, 0.7])})
  assert out["triplet_final_knn_error"] == 0.6 and out["triplet_steps"] == 87
  assert out["magnet_knn_steps"] == 58
  assert out["magnet_knn_speedup"] == pytest.approx(1.5)
  assert out["softmax_knc_steps"] is None


def test_classification_errors_and_softmax_classifier():
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(3), 10)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  train = centres[labels] + rng.normal(size=(30, 2)) * 0.5
  test = centres[labels] + rng.normal(size=(30, 2)) * 0.5
  errors = script.classification_errors(train, labels, test, labels, K=2, L=4)
  assert errors == {"knn_error": 0.0, "knc_error": 0.0}
  flipped = script.classification_errors(train, labels, test, (labels + 1) % 3,
                                         K=2, L=4)
  assert flipped == {"knn_error": 1.0, "knc_error": 1.0}
  params = {"kernel": rng.normal(size=(2, 3)), "bias": rng.normal(size=3)}
  expected = np.mean([np.argmax(t @ params["kernel"] + params["bias"]) != y
                      for t, y in zip(test, labels)])
  assert script.softmax_classifier_error(params, test, labels) == expected


def test_configs_share_backbone_batch_and_budget():
  p = script.preset(quick=False)
  configs = {m: script.make_config(m, p) for m in script.METHODS}
  for c in configs.values():
    assert c.model.backbone == "small_cnn"
    assert c.model.backbone_kwargs.width == p["width"]
    assert c.train.steps_per_epoch == p["steps_per_epoch"]
    assert c.train.epochs == p["epochs"]
  m = configs["magnet"].method
  assert m.M * m.D == script.BATCH
  for name in ("softmax", "triplet"):
    s = configs[name].sampler
    assert s.classes_per_batch * s.images_per_class == script.BATCH
  assert configs["softmax"].loss.name == "softmax"
  assert configs["triplet"].loss.name == "triplet_semihard"
  with pytest.raises(ValueError, match="nca"):
    script.make_config("nca", p)


@pytest.mark.slow
def test_quick_run_writes_tables_plots_and_json(tmp_path):
  out_dir = tmp_path / "results"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "magnet.py"),
       "--quick", f"--workdir={tmp_path / 'runs'}", f"--out={out_dir}"],
      capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for title in ("Classification test error", "Efficiency",
                "Attribute concentration", "Hierarchy recovery"):
    assert title in proc.stdout
  with open(out_dir / "magnet_quick.json") as f:
    result = json.load(f)
  assert set(result["classification"]["errors"]) == set(script.METHODS)
  for errors in result["classification"]["errors"].values():
    assert 0.0 <= errors["knn_error"] <= 1.0
  assert set(result["attributes"]) == set(script.METHODS) | {"untrained"}
  assert set(result["hierarchy"]) == set(script.METHODS)
  for name in ("efficiency", "attributes", "hierarchy"):
    assert (out_dir / f"magnet_{name}_quick.png").exists()


def test_cluster_purity_matches_loop_and_detects_split_attribute():
  rng = np.random.default_rng(4)
  labels = np.repeat(np.arange(3), 20)
  background = np.tile(np.repeat(np.arange(2), 10), 3)
  noise = rng.integers(0, 3, 60)
  # Each class splits into two far-apart modes, one per background value.
  x = (labels[:, None] * 50.0 + background[:, None] * np.array([[0.0, 10.0]])
       + rng.normal(size=(60, 2)) * 0.3)
  out = script.cluster_purity(x, labels, {"background": background,
                                          "noise": noise}, K=2)
  assert out["background"]["purity"] == 1.0
  assert out["background"]["random"] < 0.9
  from dmlx.methods import magnet  # pylint: disable=g-import-not-at-top
  index = magnet.build_cluster_index(x, labels, 3, 2, seed=0)
  a = np.asarray(index.assignments)
  expected = np.mean([max(np.sum(noise[a == j] == v) for v in range(3))
                      / np.sum(a == j) for j in np.unique(a)])
  assert out["noise"]["purity"] == pytest.approx(expected)
