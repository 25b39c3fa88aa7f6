"""Tests of experiments/pml_reference.py: the torch replica of the dmlx
network against the flax one, and a few-step PML run on procedural data.

Skipped when torch or pytorch-metric-learning is not installed.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import experiment_scripts  # tests/experiment_scripts.py

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import common as config_common
from dmlx import config as dmlx_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx.train import optim  # pylint: disable=g-import-not-at-top,wrong-import-position



script = experiment_scripts.load("pml_reference")


def _tiny_config():
  c = dmlx_config.base_config()
  config_common.procedural_data(c, num_classes=8, per_class=8, image_size=16,
                                crop_size=12)
  c.data.split = "zero_shot"
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = dmlx_config.ConfigDict({"width": 4, "num_blocks": 2})
  c.model.embedding_dim = 8
  c.sampler.name = "pk"
  c.sampler.classes_per_batch, c.sampler.images_per_class = 4, 2
  c.optim.schedule = "cosine"
  c.train.epochs, c.train.steps_per_epoch = 1, 6
  c.eval.ks = (1, 2)
  c.eval.metrics = ("recall", "nmi")
  c.eval.batch_size = 10            # several eval batches, the last one short
  return c


def _flax_shapes(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flax_shapes(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = tuple(v.shape)
  return out


def _expected_torch_shapes(flax_params):
  """Torch parameter names and shapes for a flax parameter tree."""
  expected = {}
  for name, shape in _flax_shapes(flax_params).items():
    layer, leaf = name.split("/")[-2:]
    torch_layer = ("embedding" if layer == "embedding" else f"backbone.{layer}")
    torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    expected[f"{torch_layer}.{torch_leaf}"] = (
        shape[::-1] if len(shape) == 2 else
        (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape)
  return expected


@pytest.mark.parametrize("widen", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_replica_parameter_shapes(widen, channels):
  c = _tiny_config()
  c.model.backbone_kwargs.widen = widen
  flax_model = models.build_model(c.model)
  shapes = jax.eval_shape(
      lambda: flax_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, channels))))
  net = script.build_torch_model(c.model, channels)
  assert {n: tuple(p.shape) for n, p in net.named_parameters()} == (
      _expected_torch_shapes(shapes["params"]))


def test_replica_matches_flax_network():
  torch.set_num_threads(1)
  c = _tiny_config()
  c.model.backbone_kwargs.widen = False     # as the Omniglot Conv-4
  variables, _ = script.flax_init(c, 3)
  flax_model = models.build_model(c.model)

  # Parameter shapes: flax's (HWIO, (in, out)) transposed are torch's.
  net = script.build_torch_model(c.model, 3)
  flax_shapes = _flax_shapes(variables["params"])
  torch_shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
  assert torch_shapes == _expected_torch_shapes(variables["params"])
  assert sum(p.numel() for p in net.parameters()) == sum(
      int(np.prod(s)) for s in flax_shapes.values())

  # Same weights → same features, in eval and in training mode (batch
  # statistics and their running averages included).
  script.copy_flax_variables(net, variables)
  images = np.random.default_rng(0).normal(size=(6, 12, 12, 3)).astype(np.float32)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  want = flax_model.apply(variables, jnp.asarray(images), train=False)
  net.eval()
  with torch.no_grad():
    got = net(x)
  for name in ("block1", "block2", "pooled", "embedding_raw", "embedding"):
    w = np.asarray(want[name])
    g = got[name].numpy()
    if w.ndim == 4:
      g = g.transpose(0, 2, 3, 1)
    assert g.shape == w.shape, name
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)

  want, updates = flax_model.apply(variables, jnp.asarray(images), train=True,
                                   mutable=["batch_stats"])
  net.train()
  with torch.no_grad():
    got = net(x)
  np.testing.assert_allclose(got["embedding"].numpy(), np.asarray(want["embedding"]),
                             rtol=1e-4, atol=1e-5)
  for i in (1, 2):
    bn = getattr(net.backbone, f"bn{i}")
    stats = updates["batch_stats"]["backbone"][f"bn{i}"]
    np.testing.assert_allclose(bn.running_mean.numpy(), np.asarray(stats["mean"]),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), np.asarray(stats["var"]),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("schedule,warmup", [("cosine", 0), ("constant", 0),
                                             ("step", 2)])
def test_learning_rates_follow_dmlx_schedule(schedule, warmup):
  c = _tiny_config()
  c.optim.schedule, c.optim.warmup_steps = schedule, warmup
  net = script.build_torch_model(c.model, 3)
  opt, sched = script.make_optimizer(net, c.optim, 8)
  want = optim.make_schedule(c.optim, 8)
  for t in range(8):
    assert opt.param_groups[0]["lr"] == pytest.approx(float(want(t)), rel=1e-6)
    opt.step()
    sched.step()


@pytest.mark.slow  # 14 s; the replica's network and losses are tested above
def test_train_pml_few_steps(tmp_path):
  c = _tiny_config()
  names = set(dmlx_eval.evaluate_retrieval(
      np.eye(4, dtype=np.float32), np.arange(4), ks=(1, 2),
      metrics=("recall", "nmi")))
  # Both losses; the second also from PyTorch's own initialisation.
  for loss, init in zip(script.LOSSES, script.INITS):
    workdir = str(tmp_path / loss)
    final = script.train_pml(c, loss, workdir, threads=1, init=init)
    metrics = final["trained"]["test"]["embedding"]
    assert set(metrics) == names == {"recall@1", "recall@2", "nmi"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert final["steps"] == 6 and final["loss"] == loss and final["init"] == init
    assert final["library"].startswith("pytorch-metric-learning ")
    assert math.isfinite(final["loss_first"]) and math.isfinite(final["loss_last"])
    assert final["seconds"] > 0
    with open(os.path.join(workdir, "final_metrics.json")) as f:
      assert json.load(f) == final
    # A finished run is loaded, not retrained.
    assert script.train_pml(c, loss, workdir, threads=1, init=init) == final
