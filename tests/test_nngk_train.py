"""NNGK (Meyer et al., ICIP 2018) through the real trainer: the learned centre
weights w_i change in training, and the weights and the centre bank are saved
in the checkpoint and restored by ``dmlx.train.restore``; the NNGK configs
carry the paper's hyper-parameters; ``experiments/nngk.py --quick`` runs
(``-m slow``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import configs
from dmlx import train
from dmlx.methods import nngk as nngk_method
from dmlx.methods.base import ModelInfo
from dmlx.train import loop
from dmlx.train import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8   # steps per epoch of the tiny run


def _get_config(module: str, arg: str = ""):
  return configs.load(f"{module}:{arg}" if arg else module)


def _tiny_config():
  """2 epochs of 8 steps on the digits classification split (all ten digits,
  half of each digit's images train): one run exercises the loss, the bank
  refresh, the checkpoint and the eq. 3 classifier."""
  c = _get_config("nngk.py", "dataset=digits,cls")
  c.train.epochs = 2
  c.train.steps_per_epoch = STEPS
  c.train.max_checkpoints = 2          # keep both epoch-end checkpoints
  c.train.progress = False
  c.train.tensorboard = False
  c.method.update_interval = 1         # the bank is rebuilt before epoch 2
  c.eval.untrained_baseline = False
  c.eval.train_subset = 100
  c.eval.metrics = ("recall",)
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(config, final metrics, the run restored by ``dmlx.train.restore``)."""
  config = _tiny_config()
  workdir = str(tmp_path_factory.mktemp("nngk_digits"))
  final = loop.train_and_evaluate(config, workdir)
  assert final["steps"] == 2 * STEPS
  restored = train.restore(config, workdir)
  yield config, final, restored
  restored.close()


def _at(restored, step):
  """The TrainState of the checkpoint at ``step``."""
  return run_lib.restore_state(restored.run, step)[0]


def test_learned_weights_change_and_are_restored(runs):
  config, _, restored = runs
  assert restored.step == int(restored.state.step) == 2 * STEPS
  num_train = len(restored.run.train)
  init = np.asarray(nngk_method.init_params(
      nngk_method.Config(), jax.random.key(0),
      ModelInfo(10, num_train, 32))["weights"])
  learned = np.asarray(restored.state.params["method"]["weights"])
  np.testing.assert_array_equal(init, 1.0)          # w_i start at 1
  assert learned.shape == init.shape == (num_train,)
  moved = np.abs(learned - init)
  # Adam at 1e-3 moves every centre that took part in a loss by ~1e-3 a step.
  assert moved.max() > 5e-3 and np.mean(moved > 1e-4) > 0.2
  assert np.all(np.isfinite(learned))
  # They kept changing after the first epoch's checkpoint.
  epoch1 = _at(restored, STEPS)
  assert not np.allclose(epoch1.params["method"]["weights"], learned)


def test_bank_is_saved_and_restored(runs):
  config, _, restored = runs
  bank = restored.state.method_state
  assert isinstance(bank, nngk_method.CentreBank)
  labels = np.asarray(restored.run.train.labels)
  np.testing.assert_array_equal(bank.labels, labels)
  # The final bank was built before epoch 2 from the weights saved at the end
  # of epoch 1 (checkpoint STEPS): its centres are those weights' embeddings
  # of the training set and its lists their exact k nearest other centres.
  epoch1 = _at(restored, STEPS)
  mode = dict(bn="batch", batch_size=config.sampler.batch_size)
  expected = run_lib.host_context(restored.run, epoch1, STEPS).embed(**mode)
  np.testing.assert_allclose(bank.centres, expected, rtol=1e-5, atol=1e-5)
  rebuilt, _ = nngk_method.build_bank(
      expected, labels, num_neighbours=config.method.num_neighbours)
  same = np.mean([len(set(a) & set(b)) / len(a) for a, b in
                  zip(np.asarray(bank.neighbours), rebuilt.neighbours)])
  assert same > 0.99                                 # float ties aside
  assert not np.any(np.asarray(bank.neighbours) ==
                    np.arange(len(labels))[:, None])
  # The epoch-1 checkpoint holds the bank of the untrained network.
  fresh, _ = run_lib.fresh_state(restored.run)
  untrained = run_lib.host_context(restored.run, fresh, 0).embed(**mode)
  np.testing.assert_allclose(epoch1.method_state.centres, untrained,
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(bank.centres, untrained, atol=1e-3)


def test_reported_accuracy_is_eq3_of_the_restored_run(runs):
  config, final, restored = runs
  accuracy = final["method"]["nngk_accuracy"]
  assert 0.3 < accuracy <= 1.0                       # 10 digits: chance 0.1
  # Recomputed from the checkpoint: eq. 3 over the final weights' training
  # embeddings (the centres) with the learned w_i.
  ctx = restored.context()
  pred = nngk_method.predict(
      ctx.embed(dataset=restored.run.test), ctx.embed(),
      restored.run.train.labels,
      np.asarray(restored.state.params["method"]["weights"]),
      sigma=config.method.sigma, num_neighbours=config.method.num_neighbours)
  assert nngk_method.accuracy(pred, restored.run.test.labels) == pytest.approx(
      accuracy, abs=1.5 / len(pred))


@pytest.mark.parametrize("name,dataset,train_classes", [
    ("nngk_cub.py", "cub200", 100), ("nngk.py:dataset=cars", "cars196", 98)])
def test_metric_learning_configs_follow_the_paper(name, dataset, train_classes):
  name, _, arg = name.partition(":")
  c = _get_config(name, arg)
  assert c.data.name == dataset and c.data.split == "zero_shot"
  assert c.data.num_train_classes == train_classes
  assert c.method.name == "nngk" and c.method.num_neighbours == 100
  assert c.method.update_interval == 10 and c.sampler.batch_size == 20
  assert c.sampler.name == "random" and c.optim.name == "sgd"
  assert c.optim.lr == 1e-5 and c.optim.weight_decay == 2e-4
  assert 10 <= c.method.sigma <= 30 and not c.model.normalise
  assert c.model.backbone == "googlenet" and c.model.pretrained == ""
  more = lambda extra: f"{arg},{extra}" if arg else extra
  wide = _get_config(name, more("dims=1024"))
  assert wide.model.embedding_dim == 1024 and wide.method.sigma == 30.0
  with pytest.raises(ValueError, match="dims"):
    _get_config(name, more("dims=100"))


@pytest.mark.parametrize("name,dataset,split", [
    ("nngk_cls_cub", "cub200", "by_attribute"),
    ("nngk_cls_cars", "cars196", "by_attribute"),
    ("nngk_cls_flowers", "flowers102", "predefined"),
    ("nngk_cls_folder", "folder", "classification")])
def test_classification_configs(name, dataset, split):
  c = configs.load(name)
  assert c.data.name == dataset and c.data.split == split
  assert c.method.name == "nngk" and c.sampler.batch_size == 20
  assert c.optim.lr == 1e-5 and c.method.update_interval == 10
  assert c.model.dropout > 0 and c.model.embedding_dim == 0


def test_default_is_nngk_on_procedural_zero_shot():
  c = _get_config("default.py")
  assert c.method.name == "nngk" and c.data.name == "procedural"
  assert c.data.split == "zero_shot" and c.data.validation_classes == 0
  want = configs.load("nngk_procedural")
  want.eval.report = True          # the main job also writes its figures
  assert c.to_dict() == want.to_dict()


def test_unknown_config_argument_raises():
  with pytest.raises(ValueError, match="unknown dataset"):
    _get_config("nngk.py", "dataset=imagenet")
  with pytest.raises(ValueError, match="classification only"):
    _get_config("nngk.py", "dataset=flowers")
  with pytest.raises(ValueError, match="Unknown config argument 'dataste'"):
    _get_config("nngk.py", "dataste=cub")


@pytest.mark.slow
def test_experiment_quick_writes_tables(tmp_path):
  """``experiments/nngk.py --quick`` (a few minutes): every run trains and the
  three tables, JSON and plot are written; ``--merge`` pools them."""
  script = os.path.join(ROOT, "experiments", "nngk.py")
  out = subprocess.run(
      [sys.executable, script, "--quick", f"--out={tmp_path}",
       f"--workdir={tmp_path / 'runs'}"],
      capture_output=True, text=True, timeout=1200, check=True).stdout
  for title in ("(a) classification", "(b) zero-shot", "(c) ablation"):
    assert title in out
  with open(tmp_path / "nngk_quick.json") as f:
    results = json.load(f)["results"]
  assert set(results["cls"]) == {"nngk", "nngk_fixed_w", "softmax"}
  assert 0.0 <= results["cls"]["softmax"][0]["head_accuracy"] <= 1.0
  assert 0.0 <= results["cls"]["nngk"][0]["nngk_accuracy"] <= 1.0
  assert (tmp_path / "nngk_quick.png").stat().st_size > 0
  merged = subprocess.run(
      [sys.executable, script, f"--merge={tmp_path / 'nngk_quick.json'}",
       f"--out={tmp_path}"], capture_output=True, text=True, timeout=600,
      check=True).stdout
  assert "1 seeds pooled" in merged and (tmp_path / "nngk_merged.png").exists()


def test_bank_and_queries_live_in_one_space(tmp_path):
  """The centres are embedded in the loss's own BatchNorm mode (batch
  statistics, no dropout): for identical images and weights a centre equals
  the query the loss computes, while BatchNorm's running statistics (the
  old bank, ``bank_bn='inference'``) put it elsewhere."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dmlx.data import augment  # pylint: disable=g-import-not-at-top
  c = _get_config("nngk.py", "dataset=digits")
  c.model.dropout = 0.3                    # the centres must not see it
  c.train.progress = False
  run = run_lib.build(c, str(tmp_path))
  state, _ = run_lib.fresh_state(run)
  # A network whose running statistics are not its batches' (as during
  # training, when the weights move faster than the averages).
  state = state.replace(batch_stats=jax.tree_util.tree_map(
      lambda v: v + 0.5, state.batch_stats))
  n = len(run.train)
  ctx = run_lib.host_context(run, state, 0)
  bank = ctx.embed("embedding", bn="batch", batch_size=n)   # one batch of all
  old = ctx.embed("embedding", bn="inference")
  images = augment.preprocess(jnp.asarray(run.train.images), None, crop_size=0,
                              flip=False, mean=c.data.mean, std=c.data.std,
                              train=False)
  queries, _ = run.model.apply(
      {"params": state.params["model"], "batch_stats": state.batch_stats},
      images, train=True, dropout=False, mutable=["batch_stats"])
  np.testing.assert_allclose(bank, queries["embedding"], rtol=1e-4, atol=1e-4)
  gap = np.mean(np.sum((old - np.asarray(queries["embedding"])) ** 2, 1))
  spread = np.mean(np.sum((bank - bank.mean(0)) ** 2, 1))
  assert gap > 0.1 * spread, (gap, spread)     # inference BN: another space
  cfg = nngk_method.METHOD.settings(c)
  assert cfg.bank_bn == "batch" and cfg.reduction == "sum"
  run.checkpointer.close()
  run.writer.close()
