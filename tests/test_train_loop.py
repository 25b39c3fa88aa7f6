"""The step loop's contract: no host transfers between declared steps for any
method, no refresh before a restore, NaN/Inf reported with the step and
its loss terms (and no checkpoint after it), several updates per iteration
(MIC's authors' schedule), and the learning rate a function of the step."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
import tiny_configs
from dmlx.methods import nngk as nngk_method
from dmlx.train import loop
from dmlx.train import optim


_shrink = tiny_configs.shrink
_method_config = tiny_configs.method_config
METHOD_CONFIGS = tiny_configs.METHOD_CONFIGS


# The default suite keeps two step shapes: one update with a host refresh
# (NNGK) and a device-side state update with a host sync (Magnet). MIC's two
# updates on two batch streams (the authors' schedule; its batches and
# updates are tested in tests/test_mic.py), the plain loss (one update, no
# refresh), DML-DA (one update and a refresh, as NNGK) and MIC's joint
# schedule run in the slow suite, to keep the default one in its time.
_SLOW_GUARD = ("dmlda", "loss", "mic_authors", "mic_joint")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_GUARD else n
    for n in sorted(METHOD_CONFIGS)])
def test_an_epoch_makes_no_host_transfer_between_declared_steps(name, tmp_path):
  """An epoch of every method under the strict guard (device → host copies
  refused, host → device only explicit) except at the declared steps: the
  log step at the end, and for Magnet its sync every 4 steps. The metrics
  are read only there."""
  c = _method_config(name, steps=8, log_every=8)
  assert c.train.transfer_guard == "disallow"
  final = loop.train_and_evaluate(c, str(tmp_path))
  assert final["steps"] == 8
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  train = [r for r in records if "train/loss" in r]
  declared = [4, 8] if name == "magnet" else [8]
  assert [r["step"] for r in train] == declared
  assert all(np.isfinite(r["train/loss"]) for r in train)


def test_the_guard_catches_an_implicit_transfer(tmp_path, monkeypatch):
  """A loss that reads a device value on the host (``float(x)``) inside the
  loop is an error, not a silent stall."""
  c = _method_config("nngk", steps=4)
  from dmlx.data import samplers  # pylint: disable=g-import-not-at-top
  original = samplers.RandomSampler.batch

  def leaky(self, step, state=None):
    float(jnp.ones(()) * step)            # a device → host read per step
    return original(self, step, state)

  monkeypatch.setattr(samplers.RandomSampler, "batch", leaky)
  with pytest.raises(Exception, match="[Dd]isallowed"):
    loop.train_and_evaluate(c, str(tmp_path))


def test_resume_runs_no_refresh_before_restore(tmp_path, monkeypatch):
  """NNGK's bank is refreshed at step 0 of a new run; a run restored at an
  epoch with no refresh due computes none at all (no embedding, no FAISS
  on the template's weights), and resuming gives the uninterrupted result."""
  calls = []
  original = nngk_method.build_bank

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(nngk_method, "build_bank", counting)
  config = lambda: _method_config("nngk", steps=4, epochs=2)
  full = config()
  full.method.update_interval = 2          # refreshes at step 0 only
  loop.train_and_evaluate(full, str(tmp_path / "full"))
  assert len(calls) == 1
  killed = config()
  killed.method.update_interval = 2
  killed.train.stop_after_epochs = 1
  assert "stopped_at_step" in loop.train_and_evaluate(killed, str(tmp_path / "r"))
  assert len(calls) == 2
  resumed = config()
  resumed.method.update_interval = 2
  final = loop.train_and_evaluate(resumed, str(tmp_path / "r"))
  assert len(calls) == 2                   # the resumed run refreshed nothing
  log = (tmp_path / "r" / "train.log").read_text()
  assert "restored step 4" in log
  assert log.count("refresh took") == 1    # the first run's, at step 0
  with open(tmp_path / "full" / "final_metrics.json") as f:
    uninterrupted = json.load(f)
  assert final["trained"] == uninterrupted["trained"]
  assert final["method"] == uninterrupted["method"]


def test_nan_is_reported_at_the_next_log_step_without_saving_it(tmp_path):
  c = _method_config("loss", steps=6, epochs=2, log_every=3)
  c.optim.lr = 1e30                        # the first update overflows
  c.train.checkpoint_every_steps = 3
  with pytest.raises(FloatingPointError) as err:
    loop.train_and_evaluate(c, str(tmp_path))
  message = str(err.value)
  assert "at step 2 " in message or "at step 1 " in message, message
  assert "loss terms:" in message and "grad_norm=" in message
  assert "The last good checkpoint is none yet" in message
  # No checkpoint holds the non-finite state.
  assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(
      tmp_path / "checkpoints")


@pytest.mark.slow  # statistical (40 steps); the schedule's epoch runs in the transfer-guard test
def test_mic_authors_schedule_takes_the_aux_step_with_its_probability(tmp_path):
  c = _method_config("mic_authors", steps=40, log_every=40)
  final = loop.train_and_evaluate(c, str(tmp_path))
  assert final["steps"] == 40
  record = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")
            if "train/aux/taken" in l][-1]
  # 40 coins at p = 0.8: 32 ± 2.5 expected; the class step is always taken.
  assert 0.6 <= record["train/aux/taken"] <= 0.97, record
  assert "train/class/loss" in record and "train/aux/mic_aux_loss" in record
  assert record["train/loss"] > record["train/class/loss"]


def test_learning_rate_is_a_function_of_the_step():
  """Two updates in one iteration use that iteration's rate: the schedule
  does not run ahead with the update count."""
  cfg = configs.load("baselines.py").optim
  cfg.schedule = "cosine"
  opt = optim.make_optimizer(cfg, 10)
  params = {"model": {"head": jnp.ones(3)}, "method": {}}
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  state = opt.init(params)
  step = jnp.asarray(5)
  first, state = opt.update(grads, state, params, step)
  second, state = opt.update(grads, state, params, step)
  lr = float(optim.make_schedule(cfg, 10)(5))
  # Adam's first normalised step is ±1: the update is -lr at both updates
  # (the second's direction differs only through Adam's moments).
  np.testing.assert_allclose(first["model"]["head"], -lr, rtol=1e-5)
  assert np.all(np.abs(np.asarray(second["model"]["head"])) <= lr * 1.001)
  frozen = optim.Optimizer(opt.tx, opt.schedule, opt.multipliers,
                           backbone_frozen_steps=100)
  params = {"model": {"backbone": jnp.ones(2), "head": jnp.ones(2)}, "method": {}}
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  out, _ = frozen.update(grads, frozen.init(params), params, jnp.asarray(3))
  assert np.all(np.asarray(out["model"]["backbone"]) == 0)
  assert np.all(np.asarray(out["model"]["head"]) != 0)


def test_weight_decay_spares_the_method_parameters_unless_asked():
  """NNGK's w_i (and β, α_c, R) are not decayed unless the paper says so
  (``optim.method_weight_decay``); the network's weights are."""
  cfg = configs.load("baselines.py").optim
  cfg.name, cfg.momentum, cfg.weight_decay = "sgd", 0.0, 0.1
  params = {"model": {"head": jnp.ones(2)}, "method": {"weights": jnp.ones(2)}}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  opt = optim.make_optimizer(cfg, 10)
  out, _ = opt.update(zero, opt.init(params), params, jnp.asarray(0))
  assert np.all(np.asarray(out["model"]["head"]) < 0)
  assert np.all(np.asarray(out["method"]["weights"]) == 0)
  cfg.method_weight_decay = 0.01
  opt = optim.make_optimizer(cfg, 10)
  out, _ = opt.update(zero, opt.init(params), params, jnp.asarray(0))
  np.testing.assert_allclose(out["method"]["weights"], -cfg.lr * 0.01, rtol=1e-6)


def test_layers_are_pooled_globally_or_to_a_grid():
  """``'block1@4'`` averages a map over a 4 × 4 grid (MIC's early-layer
  clustering features); a plain name pools globally."""
  from dmlx.train import step as step_lib  # pylint: disable=g-import-not-at-top
  f = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  grid = np.asarray(step_lib.pool_map(f, "block1@4"))
  assert grid.shape == (2, 4 * 4 * 3)
  expected = np.asarray(f).reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(grid, expected.reshape(2, -1))
  np.testing.assert_allclose(step_lib.pool_map(f, "block1"), np.asarray(f).max((1, 2)))
  with pytest.raises(ValueError, match="3x3 grid"):
    step_lib.pool_map(f, "block1@3")


def test_cosine_evaluation_of_every_layer():
  """``eval.l2_normalise`` (Vo & Hays evaluate on unit features): the
  retrieval table is that of the normalised features."""
  from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top
  from dmlx.train import evaluators  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(6), 5)
  x = rng.normal(size=(30, 4)) * rng.uniform(0.1, 10, size=(30, 1))
  cfg = configs.load("baselines.py").eval
  cfg.l2_normalise = True
  got = evaluators.evaluate_features({"fc6": x.astype(np.float32)}, labels, cfg)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  want = dmlx_eval.evaluate_retrieval(unit.astype(np.float32), labels,
                                      ks=tuple(cfg.ks), metrics=tuple(cfg.metrics))
  assert got["fc6"] == want
  cfg.l2_normalise = False
  raw = evaluators.evaluate_features({"fc6": x.astype(np.float32)}, labels, cfg)
  assert raw["fc6"] != want


@pytest.mark.parametrize("name", ["nngk", pytest.param("magnet", marks=pytest.mark.slow),
                                  pytest.param("mic_authors", marks=pytest.mark.slow)])
def test_the_train_step_compiles_once_per_run(name, tmp_path, monkeypatch):
  """Two epochs with a refresh (and Magnet's syncs) before each: the
  jitted step is traced and compiled once, never again across steps,
  epochs or refreshes (a new centre bank or cluster index has the same
  shapes and dtypes)."""
  steps = {}
  real_jit = jax.jit

  def recording_jit(fn, *args, **kwargs):
    jitted = real_jit(fn, *args, **kwargs)
    if getattr(fn, "__name__", "") == "train_step":
      steps["fn"] = jitted
    return jitted

  monkeypatch.setattr(loop.jax, "jit", recording_jit)
  c = _method_config(name, steps=3, epochs=2)
  loop.train_and_evaluate(c, str(tmp_path))
  assert steps["fn"]._cache_size() == 1
