"""Tests for Vo & Hays (2019): the smooth all-triplet loss on features scaled
to norm 4, the NetA/D/E/F/cls heads, layer selection and NetB's re-init."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dmlx import losses
from dmlx import methods
from dmlx import models
import configs
from dmlx.methods.base import ModelInfo
from dmlx.models import heads
from dmlx.models import vgg
from dmlx.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 4.0


def _config(arg: str):
  """``configs/vohays.py`` for ``'net[,dataset]'``."""
  net, _, dataset = arg.partition(",")
  return configs.load(f"vohays.py:net={net}" + (f",dataset={dataset}"
                                                 if dataset else ""))


def _smooth_config():
  return _config("neta,procedural")


# ---------------------------------------------------------------------------
# The loss (Sec. 3.4).
# ---------------------------------------------------------------------------


def _reference_loss(x: np.ndarray, labels: np.ndarray) -> float:
  """Plain loops, as the paper writes it: features normalised to unit length
  and scaled by 4, d = squared Euclidean distance, mean over every valid
  triplet (a != p same class, n another class) of log(1 + exp(d_ap - d_an))."""
  x = np.asarray(x, np.float64)
  f = SCALE * x / np.linalg.norm(x, axis=1, keepdims=True)
  total, count = 0.0, 0
  for a in range(len(f)):
    for p in range(len(f)):
      for n in range(len(f)):
        if a != p and labels[a] == labels[p] and labels[a] != labels[n]:
          d_ap = np.sum((f[a] - f[p]) ** 2)
          d_an = np.sum((f[a] - f[n]) ** 2)
          total += np.log1p(np.exp(d_ap - d_an))
          count += 1
  return total / count if count else 0.0


def _dmlx_loss(x, labels, scale=SCALE):
  """What a Vo & Hays config trains: the head's unit features, then the
  registry loss of the config, whose learned scale starts at 4."""
  c = _smooth_config()
  emb = heads.l2_normalise(x) * c.model.scale
  kwargs = dict(c.loss.kwargs)
  params = losses.init(c.loss.name, jax.random.PRNGKey(0), 3, x.shape[1], **kwargs)
  params = {**params, "scale": jnp.asarray(scale, jnp.float32)}
  return losses.apply(c.loss.name, emb, labels, params=params, **kwargs)[0]


_dmlx_loss_jit = jax.jit(_dmlx_loss)


LABELS = {
    "pk_16x2": np.repeat(np.arange(8), 2),
    "uneven_with_singleton": np.array([0, 0, 0, 1, 1, 2, 3, 3, 4]),
}


@pytest.mark.parametrize("name", sorted(LABELS))
def test_loss_matches_numpy_loop(name):
  labels = LABELS[name]
  x = np.random.default_rng(0).normal(size=(len(labels), 6)).astype(np.float32)
  got = _dmlx_loss_jit(jnp.asarray(x), jnp.asarray(labels))
  np.testing.assert_allclose(float(got), _reference_loss(x, labels), rtol=1e-5)


def test_the_feature_scale_is_learned_from_4():
  """The authors' code learns the scale (initialised at 4): its gradient
  matches finite differences of the loop reference at other scales, and
  ``learn_scale=False`` (the paper's text) gives it none."""
  global SCALE  # pylint: disable=global-statement
  c = _smooth_config()
  assert c.loss.name == "smooth_triplet" and c.loss.kwargs.scale == 4.0
  assert c.loss.kwargs.learn_scale and c.model.scale == 1.0
  labels = LABELS["uneven_with_singleton"]
  x = np.random.default_rng(3).normal(size=(len(labels), 5)).astype(np.float32)
  grad = float(jax.grad(lambda s: _dmlx_loss(jnp.asarray(x), jnp.asarray(labels),
                                             s))(jnp.float32(3.0)))
  saved, eps = SCALE, 1e-4
  try:
    SCALE = 3.0 + eps
    up = _reference_loss(x, labels)
    SCALE = 3.0 - eps
    down = _reference_loss(x, labels)
  finally:
    SCALE = saved
  np.testing.assert_allclose(grad, (up - down) / (2 * eps), rtol=1e-3)
  fixed = losses.smooth_triplet(jnp.asarray(x), jnp.asarray(labels),
                                {"scale": jnp.float32(4.0)}, learn_scale=False)
  g_fixed = jax.grad(lambda p: losses.smooth_triplet(
      jnp.asarray(x), jnp.asarray(labels), p, learn_scale=False)[0])(
          {"scale": jnp.float32(4.0)})
  assert float(g_fixed["scale"]) == 0.0 and float(fixed[1]["feature_scale"]) == 4.0


def test_loss_gradient_matches_finite_differences_of_reference():
  labels = LABELS["uneven_with_singleton"]
  x = np.random.default_rng(1).normal(size=(len(labels), 5))
  grad = np.asarray(jax.jit(jax.grad(_dmlx_loss))(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(labels)))
  eps, numeric = 1e-6, np.zeros_like(x)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      up, down = x.copy(), x.copy()
      up[i, j] += eps
      down[i, j] -= eps
      numeric[i, j] = (_reference_loss(up, labels) -
                       _reference_loss(down, labels)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-5)
  assert np.abs(grad).max() > 1e-3  # the loss does depend on x


def test_loss_check_grads():
  labels = jnp.asarray(LABELS["pk_16x2"][:8])
  x = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
  check_grads(jax.jit(lambda v: _dmlx_loss(v, labels)), (x,), order=1,
              modes=("rev",),
              atol=2e-2, rtol=2e-2)


def test_loss_orientation_pulls_positives_together():
  """d(a,p) - d(a,n), not the paper's printed d(a,n) - d(a,p): separated
  classes cost less than log 2, swapped ones more."""
  labels = jnp.array([0, 0, 1, 1])
  good = jnp.array([[1., 0.], [1., 0.1], [-1., 0.], [-1., 0.1]])
  bad = good[jnp.array([0, 2, 1, 3])]
  assert float(_dmlx_loss_jit(good, labels)) < np.log(2) < float(
      _dmlx_loss_jit(bad, labels))
  # Fully separated unit vectors scaled by 4: d_an = 64, loss ≈ exp(-64).
  far = jnp.array([[1., 0.], [1., 0.], [-1., 0.], [-1., 0.]])
  assert float(_dmlx_loss_jit(far, labels)) < 1e-20


def test_features_are_scaled_by_4_not_the_distances():
  """The loss's scale 4 multiplies the unit *features*: its value is the
  smooth triplet loss of ||x|| = 4 features, whose squared distances are 16×
  those of unit vectors (range [0, 64]), as the authors'
  MyTripletLoss(normalize_scale=4)."""
  c = _config("neta,procedural")
  assert c.model.normalise and c.model.scale == 1.0
  x = jax.random.normal(jax.random.PRNGKey(3), (6, 7))
  labels = jnp.array([0, 0, 1, 1, 2, 2])
  emb = heads.l2_normalise(x) * SCALE
  got, aux = losses.smooth_triplet(heads.l2_normalise(x), labels,
                                   {"scale": jnp.float32(SCALE)})
  want, _ = losses.triplet_all(emb, labels, soft=True, squared=True,
                               reduction="valid")
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(aux["feature_scale"]) == SCALE
  d = losses.pairwise_distances(emb, squared=True)
  u = heads.l2_normalise(x)
  np.testing.assert_allclose(d, 16 * losses.pairwise_distances(u, squared=True),
                             rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Networks and layer selection.
# ---------------------------------------------------------------------------


# VGG with one conv in blocks 1-4 and VGG-16's three in block 5 (conv5_1..3,
# pool5_1..3), 4 channels: the same layer names, compiled in seconds.
TINY_BLOCKS = ((1, 1), (1, 1), (1, 1), (1, 1), (3, 1))


def _tiny_config(variant: str):
  c = _config(f"{variant},procedural")
  c.data.image_size, c.data.crop_size = 20, 16  # conv5 maps 2 × 2
  c.model.fc_layers = (6,) * len(c.model.fc_layers)
  return c


def _build(c):
  """The trainer's network for ``c`` with its VGG16-BN swapped for a tiny
  VGG (same head, same layer names)."""
  full = models.build_model(c.model)
  assert isinstance(full.backbone, vgg.VGG)
  return full.clone(backbone=vgg.VGG(blocks=TINY_BLOCKS, num_filters=4,
                                     small_inputs=True))


def _images(n: int, size: int = 36, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3),
                                              dtype=np.uint8)


def _init(model, size=16, seed=0):
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((2, size, size, 3)))


def test_layer_selection_equals_network_applied_by_hand():
  """The 'pool5_3', 'fc6', 'fc7' and 'embedding' features of NetE equal the
  last conv block, global max pooling, the Dense layers (ReLU between) and
  the norm-4 scaling computed by hand from the parameters."""
  c = _tiny_config("nete")
  model = _build(c)
  variables = _init(model)
  # Non-trivial BatchNorm running statistics.
  key = iter(jax.random.split(jax.random.PRNGKey(4), 64))
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: (v + 0.1 * jax.random.normal(next(key), v.shape)
                       if path[-1].key == "mean" else
                       v + jax.random.uniform(next(key), v.shape)),
      variables["batch_stats"])
  variables = {**variables, "batch_stats": stats}
  images = _images(3, size=20)
  layers = ("pool5_3", "fc6", "fc7", "embedding")
  feats = step_lib.make_feature_fn(model, c.data)(variables, images, layers=layers)

  p, s = variables["params"], variables["batch_stats"]
  from dmlx.data import augment  # pylint: disable=g-import-not-at-top
  pre = augment.preprocess(jnp.asarray(images), None, crop_size=c.data.crop_size,
                           flip=False, mean=c.data.mean, std=c.data.std,
                           train=False)
  conv5_2 = np.asarray(model.apply(variables, pre)["conv5_2"],
                       np.float64)
  # conv5_3 by hand: 3×3 conv (padding 1) + bias, BatchNorm (running stats),
  # ReLU, then global max pooling = pool5_3.
  k = np.asarray(p["backbone"]["conv5_3"]["kernel"], np.float64)
  b = np.asarray(p["backbone"]["conv5_3"]["bias"], np.float64)
  padded = np.pad(conv5_2, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = conv5_2.shape[1:3]
  out = np.zeros(conv5_2.shape[:3] + (k.shape[-1],))
  for i in range(h):
    for j in range(w):
      patch = padded[:, i:i + 3, j:j + 3, :]
      out[:, i, j] = np.einsum("bxyc,xyco->bo", patch, k) + b
  bn_p, bn_s = p["backbone"]["bn5_3"], s["backbone"]["bn5_3"]
  out = ((out - np.asarray(bn_s["mean"])) /
         np.sqrt(np.asarray(bn_s["var"]) + 1e-5) * np.asarray(bn_p["scale"]) +
         np.asarray(bn_p["bias"]))
  pool5_3 = np.maximum(out, 0).max(axis=(1, 2))
  assert np.count_nonzero(pool5_3) > pool5_3.size // 4   # not all ReLU'd away
  np.testing.assert_allclose(feats["pool5_3"], pool5_3, rtol=1e-4, atol=1e-5)

  fc6 = pool5_3 @ np.asarray(p["fc6"]["kernel"]) + np.asarray(p["fc6"]["bias"])
  np.testing.assert_allclose(feats["fc6"], fc6, rtol=1e-4, atol=1e-5)
  fc7 = np.maximum(fc6, 0) @ np.asarray(p["fc7"]["kernel"]) + np.asarray(
      p["fc7"]["bias"])
  np.testing.assert_allclose(feats["fc7"], fc7, rtol=1e-4, atol=1e-5)
  assert np.abs(fc7).min() > 0
  emb = fc7 / np.linalg.norm(fc7, axis=1, keepdims=True)   # unit; the loss scales
  np.testing.assert_allclose(feats["embedding"], emb, rtol=1e-4, atol=1e-5)
  assert "embedding" not in p and "fc8" not in p   # embedding_dim = 0


@pytest.mark.parametrize("variant,fcs", [("netd", ()), ("neta", ("fc6",)),
                                         ("nete", ("fc6", "fc7")),
                                         ("netf", ("fc6", "fc7", "fc8"))])
def test_loss_position_per_variant(variant, fcs):
  """The embedding (the loss's input) is the unit-length pool5_3 (NetD) or
  last fc layer (the loss scales it), and the head has exactly those fc
  layers."""
  c = _tiny_config(variant)
  model = _build(c)
  variables = _init(model)
  head_params = sorted(k for k in variables["params"] if k != "backbone")
  assert head_params == sorted(fcs)
  out = model.apply(variables, jnp.asarray(_images(2, 16), jnp.float32) / 255.)
  last = out[fcs[-1]] if fcs else out["pool5_3"]
  np.testing.assert_allclose(out["embedding"], heads.l2_normalise(last),
                             rtol=1e-5, atol=1e-6)
  assert c.method.layer == "embedding"
  assert c.loss.name == "smooth_triplet"
  assert (model.input_layer, model.embedding_dim, model.normalise) == (
      "pool5_3", 0, True)


def test_classification_variant_is_softmax_on_relu_fc6():
  """cls: the softmax loss's classifier (the "classification-output fc7")
  sits on ReLU(fc6)."""
  c = _tiny_config("cls")
  model = _build(c)
  variables = _init(model)
  out = model.apply(variables, jnp.asarray(_images(4, 16), jnp.float32) / 255.)
  method, cfg = methods.from_config(c)
  info = ModelInfo(num_classes=5, num_train=10, embedding_dim=6,
                   feature_dims={k: int(v.shape[-1]) for k, v in out.items()})
  params = method.init_params(cfg, jax.random.PRNGKey(0), info)
  labels = jnp.array([0, 1, 4, 4])
  loss, _ = method.loss(cfg, params, out, {"labels": labels}, None,
                        jax.random.PRNGKey(1))
  logits = np.maximum(np.asarray(out["fc6"]), 0) @ np.asarray(
      params["kernel"]) + np.asarray(params["bias"])
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(float(loss), -logp[np.arange(4), labels].mean(),
                             rtol=1e-5)
  assert params["kernel"].shape == (6, 5)


def test_config_arguments():
  for arg in ("neta,cars", "nete,cub", "netd,sop", "netf,procedural", "netb"):
    c = _config(arg)
    assert c.model.backbone == "vgg16_bn"
  c = _config("nete,sop")
  assert c.train.epochs * c.train.steps_per_epoch == 200_000
  c = _config("neta,cars")
  assert c.train.epochs * c.train.steps_per_epoch == 20_000
  assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (
      "sgd", 0.01, 0.9, 5e-4)
  assert c.sampler.classes_per_batch * c.sampler.images_per_class == 32
  assert c.model.fc_layers == (512,)
  with pytest.raises(ValueError, match="netz"):
    _config("netz,cars")
  with pytest.raises(ValueError, match="Unknown config argument 'neta'"):
    configs.load("vohays.py:neta,cars")
  with pytest.raises(ValueError, match="mnist"):
    _config("neta,mnist")


# ---------------------------------------------------------------------------
# NetB: re-initialising pretrained layers.
# ---------------------------------------------------------------------------


def test_reinitialise_layers():
  model = _build(_tiny_config("neta"))
  pretrained = _init(model, seed=0)
  pretrained = {**pretrained, "batch_stats": jax.tree_util.tree_map(
      lambda v: v + 1.0, pretrained["batch_stats"])}   # "trained" statistics
  fresh = _init(model, seed=1)
  merged = heads.reinitialise_layers(pretrained, fresh, "conv5_3,bn5_3,fc6")
  for col, layer in [("params", "conv5_3"), ("params", "bn5_3"),
                     ("batch_stats", "bn5_3")]:
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           merged[col]["backbone"][layer],
                           fresh[col]["backbone"][layer])
  jax.tree_util.tree_map(np.testing.assert_array_equal, merged["params"]["fc6"],
                         fresh["params"]["fc6"])
  for col, layer in [("params", "conv5_2"), ("batch_stats", "bn5_2"),
                     ("params", "conv1_1")]:
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           merged[col]["backbone"][layer],
                           pretrained[col]["backbone"][layer])
  # The fresh and pretrained conv5_3 really differ (the test can fail).
  assert not np.allclose(pretrained["params"]["backbone"]["conv5_3"]["kernel"],
                         merged["params"]["backbone"]["conv5_3"]["kernel"])
  with pytest.raises(ValueError, match="conv6_1"):
    heads.reinitialise_layers(pretrained, fresh, ("conv6_1",))
  assert _config("netb").model.reinit_layers == "conv5_3,bn5_3"
  assert set(vgg.TORCHVISION_VGG16_BN_INDEX) >= {"conv5_3", "bn5_3"}


# ---------------------------------------------------------------------------
# experiments/vohays.py end to end.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_experiment_writes_table_curves_and_json(tmp_path):
  out_dir = tmp_path / "results"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "vohays.py"),
       "--quick", f"--workdir={tmp_path / 'runs'}", f"--out_dir={out_dir}"],
      capture_output=True, text=True, timeout=1200, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "NetA fc6" in proc.stdout and "NetD pool5_3" in proc.stdout
  with open(out_dir / "vohays_quick.json") as f:
    result = json.load(f)
  assert (out_dir / "vohays_curves_quick.png").exists()
  curves = result["curves"]["neta"][0]
  assert curves["steps"] == [0, 20, 40, 60]
  for split in ("train", "test", "test_l2"):
    assert set(curves[split]) == {"pool5_1", "pool5_2", "pool5_3", "fc6"}
    assert all(0 <= v <= 1 for v in curves[split]["fc6"])
  # Trained beats the untrained network on the training classes.
  assert curves["train"]["pool5_3"][-1] > curves["train"]["pool5_3"][0]
