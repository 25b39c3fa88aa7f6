"""The real-data study's configs (``configs/real_data.py`` and the
``omniglot_*`` / ``tinyimagenet_*`` names of its variants), a short run of
one through the trainer on an Omniglot-layout archive written here, and the
classification numbers the study reports (a classifier loss's own accuracy,
1-NN accuracy)."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import configs
from configs import real_data as SHARED
from dmlx.methods import loss as loss_method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPERS = sorted(n for n in configs.NAMES
                  if n.startswith(("omniglot_", "tinyimagenet_")))


def _spec(dataset, method, protocol="test"):
  return f"dataset={dataset},method={method},protocol={protocol}"

# What every method of one dataset must share: the equal budget.
SHARED_KEYS = ("data", "model.backbone", "model.backbone_kwargs",
               "model.embedding_dim", "optim.lr", "optim.name",
               "optim.schedule", "train.epochs", "train.steps_per_epoch")


def _get(config, key):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def test_every_former_file_is_a_method_per_dataset():
  every = {f"{d}_{m}" for d in SHARED.DATASETS for m in SHARED.METHODS}
  assert set(WRAPPERS) <= every
  assert len(WRAPPERS) == 34


@pytest.mark.parametrize("name", sorted(f"{d}_{m}" for d in SHARED.DATASETS
                                        for m in SHARED.METHODS))
def test_methods_share_data_network_and_budget(name):
  dataset, method = name.split("_", 1)
  config = SHARED.get_config(_spec(dataset, method))
  reference = SHARED.get_config(_spec(dataset, "triplet_semihard"))
  for key in SHARED_KEYS:
    assert _get(config, key) == _get(reference, key), key
  batch = config.sampler.classes_per_batch * config.sampler.images_per_class
  if config.method.name == "magnet":
    batch = config.method.M * config.method.D
  elif config.sampler.name == "random":
    batch = config.sampler.batch_size
  assert batch == 64, (method, batch)
  assert config.data.validation_classes == 0
  assert not config.data.validation_attribute_values
  val = SHARED.get_config(_spec(dataset, method, "val"))
  assert val.data.validation_classes > 0 or val.data.validation_attribute_values
  assert "--config=configs/real_data.py:dataset=omniglot,method=nngk" in SHARED.__doc__


def test_protocols_and_bad_arguments():
  cls = SHARED.get_config(_spec("tinyimagenet", "nngk", "cls"))
  assert cls.data.split == "zero_shot" and cls.data.classify_fraction == 0.75
  assert cls.method.name == "nngk"
  omni = SHARED.get_config("dataset=omniglot,method=magnet")
  assert (omni.data.split, omni.data.split_attribute) == ("by_attribute",
                                                          "alphabet")
  assert not omni.data.flip and omni.data.options.channels == 1
  with pytest.raises(ValueError, match="unknown method 'tripplet'"):
    SHARED.get_config("dataset=omniglot,method=tripplet")
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    SHARED.get_config("dataset=mnist,method=nngk")
  with pytest.raises(ValueError, match="Unknown config argument 'omniglot'"):
    SHARED.get_config("omniglot,nngk")


def _write_omniglot(folder: pathlib.Path, alphabets, characters=3, drawers=4):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for a in alphabets:
    for ch in range(1, characters + 1):
      for d in range(1, drawers + 1):
        img = np.full((20, 20), 255, np.uint8)
        img[3 * ch: 3 * ch + 3, 2:18] = 0                 # the character
        img[rng.integers(0, 20), rng.integers(0, 20)] = 0  # the drawer's noise
        p = folder / a / f"character{ch:02d}" / f"{ch:02d}{len(a):02d}_{d:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("1").save(p)


def test_omniglot_config_trains_end_to_end(tmp_path):
  """The Omniglot config, shrunk, on an archive in the official layout:
  unseen alphabets are the test classes and the trainer reports them."""
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  root = tmp_path / "images_background"
  _write_omniglot(root, ["Alpha", "Beta", "Gamma", "Delta"])
  config = SHARED.get_config("dataset=omniglot,method=nngk")
  config.data.data_dir = str(tmp_path)
  config.data.image_size, config.data.crop_size = 12, 8
  config.model.backbone_kwargs.width = 4
  config.model.backbone_kwargs.num_blocks = 2
  config.model.embedding_dim = 8
  config.sampler.batch_size = 8
  config.train.epochs, config.train.steps_per_epoch = 2, 2
  config.train.progress = False
  config.eval.ks = (1, 2)
  final = loop.train_and_evaluate(config, str(tmp_path / "run"))
  test = final["trained"]["test"]["embedding"]
  assert final["steps"] == 4
  assert 0.0 <= test["recall@1"] <= 1.0 and 0.0 <= test["nmi"] <= 1.0
  # Delta is the unseen alphabet: 3 characters; no classification numbers.
  assert "1nn_accuracy" not in (final.get("method") or {})


def test_validation_holds_out_a_whole_alphabet_and_cls_classifies_its_classes(
    tmp_path):
  """``protocol=val``: the third training alphabet, held out whole, is the
  evaluation set (no character of it trains, none is a test character);
  ``cls_val``: its characters as a classification task (15 of 20 images
  train); ``cls``: the same for the test alphabets."""
  from dmlx.data import pipeline  # pylint: disable=g-import-not-at-top
  root = tmp_path / "images_background"
  _write_omniglot(root, ["Alpha", "Beta", "Delta", "Epsilon", "Gamma"],
                  characters=3, drawers=8)

  def splits(protocol):
    c = SHARED.get_config(_spec("omniglot", "nngk", protocol))
    c.data.data_dir = str(tmp_path)
    c.data.image_size, c.data.crop_size = 12, 8
    return pipeline.load_splits(c.data)

  test, val = splits("test"), splits("val")
  alphabet = lambda ds: set(np.asarray(ds.attributes["alphabet"]).tolist())
  assert alphabet(test["train"]) == {0, 1, 2} and alphabet(test["test"]) == {3, 4}
  assert alphabet(val["train"]) == {0, 1} and alphabet(val["test"]) == {2}
  cls_val = splits("cls_val")
  assert alphabet(cls_val["train"]) == alphabet(cls_val["test"]) == {2}
  assert cls_val["train"].class_names == cls_val["test"].class_names
  assert (len(cls_val["train"]), len(cls_val["test"])) == (18, 6)   # 6 of 8
  cls = splits("cls")
  assert alphabet(cls["train"]) == {3, 4} and len(cls["test"]) == 12


def test_classifier_logits_match_the_losses():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 4))
  kernel, bias = rng.normal(size=(4, 3)), rng.normal(size=3)
  np.testing.assert_allclose(
      loss_method.classifier_logits("softmax", {"kernel": kernel, "bias": bias},
                                    x), x @ kernel + bias)
  cos = loss_method.classifier_logits("normalized_softmax", {"kernel": kernel},
                                      x)
  ref = np.array([[xi @ kernel[:, c] / np.linalg.norm(xi) /
                   np.linalg.norm(kernel[:, c]) for c in range(3)] for xi in x])
  np.testing.assert_allclose(cos, ref)
  proxies = rng.normal(size=(3, 4))
  # An embedding along a proxy is classified as that proxy's class.
  scores = loss_method.classifier_logits("proxy_nca", {"proxies": proxies},
                                         2.5 * proxies)
  np.testing.assert_array_equal(np.argmax(scores, 1), [0, 1, 2])
  with pytest.raises(ValueError, match="'margin'"):
    loss_method.classifier_logits("margin", {}, x)


def test_classification_split_reports_classifier_and_1nn_accuracy(tmp_path):
  """A softmax run on a classification split (test images of the training
  classes) reports its classifier's accuracy and the embedding's 1-NN
  accuracy; both far above chance (0.1) on scikit-learn's digits."""
  from dmlx.config import base_config  # pylint: disable=g-import-not-at-top
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.data.name = "digits"
  c.data.image_size, c.data.crop_size, c.data.flip = 16, 0, False
  c.data.mean, c.data.std = (0.2,), (0.35,)
  c.data.split = "classification"
  c.data.train_fraction = 0.5
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.width = 8
  c.model.backbone_kwargs.num_blocks = 2
  c.model.embedding_dim = 8
  c.loss.name = "softmax"
  c.loss.kwargs = {}
  c.eval.evaluators = "loss_classifier,nearest_neighbour"
  c.sampler.classes_per_batch, c.sampler.images_per_class = 10, 4
  c.optim.lr = 3e-3
  c.train.epochs, c.train.steps_per_epoch = 1, 60
  c.train.progress = False
  c.eval.ks = (1,)
  c.eval.metrics = ("recall",)
  final = loop.train_and_evaluate(c, str(tmp_path))
  accuracy = final["method"]
  assert set(accuracy) == {"classifier_accuracy", "1nn_accuracy"}
  # Measured 0.49-0.52 (classifier) and 0.77 (1-NN) after 60 steps, moving
  # with float rounding (e.g. the order of a convolution's gradient sums):
  # the bounds are 3.5x and 5x chance, not the measured values.
  assert accuracy["classifier_accuracy"] > 0.35
  assert accuracy["1nn_accuracy"] > 0.5


def _final(r1, train_r1=None, seconds=None, method=None, untrained=None):
  final = {"trained": {"test": {"embedding": {"recall@1": r1, "nmi": 0.5}}},
           "steps": 3}
  if train_r1 is not None:
    final["trained"]["train"] = {"embedding": {"recall@1": train_r1}}
  if seconds is not None:
    final["train_seconds"] = seconds
  if method:
    final["method"] = method
  if untrained is not None:
    final["untrained"] = {"test": {"embedding": {"recall@1": untrained}}}
  return final


def test_experiment_tables_summarise_every_saved_run(tmp_path):
  """experiments/real_data.py --report_only: one row per saved run folder
  in configs/real_data.py's order (tagged variants beside their method,
  pytorch-metric-learning last), mean ± std over the seeds found, n seeds."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = tmp_path / "runs" / "tinyimagenet" / "cls"
  runs = {
      "nngk/seed0": _final(0.5, 0.7, 10.0, {"nngk_accuracy": 0.4}),
      "nngk/seed1": _final(0.7, 0.9, 20.0, {"nngk_accuracy": 0.6}),
      "pml_multi_similarity/seed0": _final(0.6),
      "triplet_semihard/seed0": _final(0.2, untrained=0.1),
      "magnet_K1/seed0": _final(0.3),
      "magnet/seed2": _final(0.4),
  }
  for rel, final in runs.items():
    (root / rel).mkdir(parents=True)
    (root / rel / "final_metrics.json").write_text(json.dumps(final))
  (root / "raw_pixels.json").write_text(json.dumps({"recall@1": 0.05}))
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "real_data.py"),
       "--dataset=tinyimagenet", "--protocol=cls", "--report_only",
       f"--workdir={tmp_path / 'runs'}", f"--out_dir={tmp_path}"],
      capture_output=True, text=True, check=True).stdout
  table = (tmp_path / "real_data_tinyimagenet_cls.md").read_text()
  assert table.strip() in out
  names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
  assert names == ["untrained network", "triplet_semihard", "nngk", "magnet",
                   "magnet_K1", "pml_multi_similarity", "raw pixels"]
  nngk = [line for line in table.splitlines() if line.startswith("| nngk ")][0]
  cells = [c.strip() for c in nngk.split("|")[1:-1]]
  assert cells[1] == "2"                        # two seeds
  assert "0.600 ± 0.100" in cells               # recall@1 of 0.5 and 0.7
  assert "0.500 ± 0.100" in cells               # nngk_accuracy
  assert cells[-1] == "15"                      # mean training seconds
  summary = json.loads((tmp_path / "real_data_tinyimagenet_cls.json").read_text())
  assert summary["runs"]["nngk"]["seeds"] == [0, 1]
