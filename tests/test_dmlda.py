"""Tests for DML-DA's density regulariser, GOR, the entropy regulariser and the
DML-DA method factory, against NumPy references written as plain loops."""
from __future__ import annotations

import jax
import jax.test_util  # noqa: F401  (check_grads)
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dmlx.data.base import Dataset
from dmlx.losses import _density
from dmlx.losses import _dmlda_contrastive
from dmlx.methods import dmlda
from dmlx import losses as dmlx_losses
from dmlx.methods import base as base_lib
from dmlx.methods.base import HostContext, ModelInfo
from dmlx.train import evaluators

NUM_CLASSES = 8
# Jitted entry points (eager dispatch of every op is slow on a busy CPU).
density_regularizer = jax.jit(
    _density.density_regularizer,
    static_argnames=("eta", "correlation", "min_class_size", "normalize"))
class_density = jax.jit(_density.class_density, static_argnums=2)
# Classes 1 (x4), 3 (x3), 6 (x5) present; 7 a singleton; 0, 2, 4, 5 absent.
LABELS = np.array([1, 3, 6, 1, 6, 3, 7, 1, 6, 6, 3, 1, 6], np.int32)


# ----------------------------------------------------------------------------
# NumPy references (loops, float64).

def _normalize(x):
  x = np.asarray(x, np.float64)
  out = np.zeros_like(x)
  for i in range(len(x)):
    out[i] = x[i] / max(np.sqrt(np.sum(x[i] ** 2)), 1e-6)
  return out


def ref_class_density(x, labels, num_classes):
  x = _normalize(x)
  density, counts = np.zeros(num_classes), np.zeros(num_classes)
  for c in range(num_classes):
    members = [i for i in range(len(labels)) if labels[i] == c]
    counts[c] = len(members)
    if not members:
      continue
    mu = sum(x[i] for i in members) / len(members)
    density[c] = sum(np.sum((x[i] - mu) ** 2) for i in members) / len(members)
  return density, counts


def ref_density_regularizer(x, labels, alpha, d0, eta=0.5, correlation=True,
                            min_class_size=2):
  density, counts = ref_class_density(x, labels, len(alpha))
  present = [c for c in range(len(alpha)) if counts[c] >= min_class_size]
  if not present:
    return 0.0
  n = len(present)
  loss = sum((density[c] - alpha[c]) ** 2 for c in present) / n
  loss -= sum(alpha[c] for c in present) / n
  if correlation:
    pen = 0.0
    for ci in present:
      for cj in present:
        pen += (d0[cj] ** eta * alpha[ci] - d0[ci] ** eta * alpha[cj]) ** 2
    loss += pen / n ** 2
  return loss


def ref_gor(x, labels):
  x = _normalize(x)
  d = x.shape[1]
  m1 = m2 = 0.0
  n = 0
  for i in range(len(x)):
    for j in range(len(x)):
      if labels[i] != labels[j]:
        s = float(np.dot(x[i], x[j]))
        m1, m2, n = m1 + s, m2 + s * s, n + 1
  if n == 0:
    return 0.0
  m1, m2 = m1 / n, m2 / n
  return m1 ** 2 + max(0.0, m2 - 1.0 / d)


def ref_entropy(x, temperature=1.0):
  x = _normalize(x)
  b = len(x)
  total = 0.0
  for i in range(b):
    w = {j: np.exp(-np.sum((x[i] - x[j]) ** 2) / temperature)
         for j in range(b) if j != i}
    z = sum(w.values())
    total += -sum((v / z) * np.log(v / z) for v in w.values())
  return -total / b


def numerical_grad(f, x, eps=1e-6):
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    g[idx] = (f(xp) - f(xm)) / (2 * eps)
  return g


def _batch(seed=0, dim=5, labels=LABELS):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(len(labels), dim)).astype(np.float32)
  alpha = rng.uniform(0.2, 0.9, NUM_CLASSES).astype(np.float32)
  d0 = rng.uniform(0.3, 0.8, NUM_CLASSES).astype(np.float32)
  return x, np.asarray(labels, np.int32), alpha, d0


# ----------------------------------------------------------------------------
# Density, eq. (5).

def test_class_density_matches_loop_reference():
  x, labels, _, _ = _batch()
  density, counts = map(np.asarray, jax.jit(
      _density.class_density, static_argnums=2)(x, labels, NUM_CLASSES))
  ref_d, ref_c = ref_class_density(x, labels, NUM_CLASSES)
  np.testing.assert_allclose(density, ref_d, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(counts, ref_c)
  assert abs(float(density[7])) < 1e-12 and density[0] == 0.0
  assert np.all(density[[1, 3, 6]] > 0.1)


def test_class_density_ignores_out_of_range_labels():
  x, labels, _, _ = _batch()
  padded = np.concatenate([labels, [-1, NUM_CLASSES]]).astype(np.int32)
  xp = np.concatenate([x, np.ones((2, x.shape[1]), np.float32)])
  d1, c1 = class_density(x, labels, NUM_CLASSES)
  d2, c2 = class_density(xp, padded, NUM_CLASSES)
  np.testing.assert_allclose(d1, d2, rtol=1e-6)
  np.testing.assert_array_equal(c1, c2)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_class_density_derivative_matches_reference(mode):
  # The density's derivative is written out (a custom JVP); both modes must
  # give the float64 finite-difference derivative, padding labels included.
  x, labels, _, _ = _batch(seed=5)
  padded = np.concatenate([labels, [-1, NUM_CLASSES]]).astype(np.int32)
  xp = np.concatenate([x, np.ones((2, x.shape[1]), np.float32)])
  weights = np.linspace(0.5, 2.0, NUM_CLASSES)
  f = lambda x: jnp.sum(weights * _density.class_density(
      x, padded, NUM_CLASSES)[0])
  grad = jax.jacrev(f) if mode == "rev" else jax.jacfwd(f)
  got = np.asarray(jax.jit(grad)(xp))
  want = numerical_grad(
      lambda xx: float(np.sum(weights * ref_class_density(
          xx, padded, NUM_CLASSES)[0])), xp.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got[-2:], 0.0)   # padding rows: no gradient
  assert np.abs(got[:-2]).max() > 1e-3


# ----------------------------------------------------------------------------
# Regulariser, eqs. (6) and (8): value and gradients.

@pytest.mark.parametrize("correlation", [True, False])
@pytest.mark.parametrize("min_class_size", [1, 2])
def test_density_regularizer_value(correlation, min_class_size):
  x, labels, alpha, d0 = _batch(seed=1)
  fn = jax.jit(lambda x, a, d: _density.density_regularizer(
      x, labels, a, d, eta=0.5, correlation=correlation,
      min_class_size=min_class_size))
  loss, aux = fn(x, alpha, d0)
  ref = ref_density_regularizer(x, labels, alpha.astype(np.float64),
                                d0.astype(np.float64), 0.5, correlation,
                                min_class_size)
  np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)
  assert aux["num_present_classes"] == (3 if min_class_size == 2 else 4)
  if not correlation:
    assert aux["density_correlation"] == 0.0


def test_density_regularizer_eta_changes_penalty():
  x, labels, alpha, d0 = _batch(seed=2)
  for eta in (0.0, 1.0, 2.0):
    loss, _ = density_regularizer(x, labels, alpha, d0, eta=eta)
    ref = ref_density_regularizer(x, labels, alpha.astype(np.float64),
                                  d0.astype(np.float64), eta)
    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("correlation", [True, False])
def test_density_regularizer_gradients(correlation):
  x, labels, alpha, d0 = _batch(seed=3)
  x64, a64, d64 = (v.astype(np.float64) for v in (x, alpha, d0))

  def jax_loss(x, a):
    return _density.density_regularizer(x, labels, a, d0,
                                        correlation=correlation)[0]

  gx, ga = map(np.asarray, jax.jit(jax.grad(jax_loss, argnums=(0, 1)))(
      x, alpha))
  ref_ga = numerical_grad(
      lambda a: ref_density_regularizer(x64, labels, a, d64,
                                        correlation=correlation), a64)
  ref_gx = numerical_grad(
      lambda xx: ref_density_regularizer(xx, labels, a64, d64,
                                         correlation=correlation), x64)
  np.testing.assert_allclose(ga, ref_ga, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-4, atol=1e-5)
  # Absent classes (0, 2, 4, 5) and the singleton 7: zero gradient on alpha.
  np.testing.assert_array_equal(ga[[0, 2, 4, 5, 7]], 0.0)
  assert np.all(np.abs(ga[[1, 3, 6]]) > 1e-4)
  # The singleton's embedding gets no gradient (its density is constant 0).
  np.testing.assert_array_equal(gx[LABELS == 7], 0.0)


def test_density_regularizer_check_grads():
  x, labels, alpha, d0 = _batch(seed=4)
  f = jax.jit(lambda x, a: _density.density_regularizer(x, labels, a, d0)[0])
  jax.test_util.check_grads(f, (x, alpha), order=1, modes=("rev",),
                            atol=2e-2, rtol=2e-2, eps=1e-3)


def test_absent_classes_contribute_nothing():
  x, labels, alpha, d0 = _batch(seed=5)
  loss, _ = density_regularizer(x, labels, alpha, d0)
  alpha2, d02 = alpha.copy(), d0.copy()
  alpha2[[0, 2, 4, 5, 7]] = [9.0, -3.0, 100.0, 0.0, 7.0]
  d02[[0, 2, 4, 5, 7]] = [0.0, 5.0, 1e-3, 3.0, 2.0]
  loss2, _ = density_regularizer(x, labels, alpha2, d02)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  # ... but a present class's alpha does matter.
  alpha3 = alpha.copy()
  alpha3[3] += 0.3
  loss3, _ = density_regularizer(x, labels, alpha3, d0)
  assert abs(float(loss3) - float(loss)) > 1e-3


def test_penalty_zero_when_alpha_follows_original_density():
  """Eq. (7)'s constraint holds exactly -> the soft penalty of eq. (8) is 0."""
  x, labels, _, d0 = _batch(seed=6)
  alpha = 0.7 * d0 ** 0.5
  _, aux = density_regularizer(x, labels, alpha, d0, eta=0.5)
  np.testing.assert_allclose(aux["density_correlation"], 0.0, atol=1e-7)
  _, aux = density_regularizer(x, labels, alpha, d0, eta=1.0)
  assert aux["density_correlation"] > 1e-5


def test_regularizer_grows_alpha_and_spreads_classes():
  """Minimising L_DA raises alpha (the -alpha term) and, when alpha is above
  the density, pushes a class's embeddings apart (larger D_avg)."""
  x, labels, _, d0 = _batch(seed=7)
  alpha = np.full(NUM_CLASSES, 0.9, np.float32)  # above every D_avg here
  f = lambda x, a: _density.density_regularizer(x, labels, a, d0,
                                                correlation=False)[0]
  gx, ga = map(np.asarray, jax.jit(jax.grad(f, argnums=(0, 1)))(x, alpha))
  assert np.all(ga[[1, 3, 6]] < 0)   # gradient descent increases alpha
  d_before = np.asarray(class_density(x, labels, NUM_CLASSES)[0])
  d_after = np.asarray(class_density(x - 0.05 * gx, labels, NUM_CLASSES)[0])
  assert np.all(d_after[[1, 3, 6]] > d_before[[1, 3, 6]])


def test_density_regularizer_bad_input():
  x, labels, alpha, d0 = _batch()
  with pytest.raises(ValueError, match="original_density"):
    _density.density_regularizer(x, labels, alpha, None, correlation=True)
  with pytest.raises(ValueError, match="labels shape"):
    _density.density_regularizer(x, labels[:-1], alpha, d0)
  with pytest.raises(ValueError, match="target_density"):
    _density.density_regularizer(x, labels, alpha[None], d0)
  with pytest.raises(ValueError, match="min_class_size"):
    _density.density_regularizer(x, labels, alpha, d0, min_class_size=0)
  with pytest.raises(ValueError, match="labels must be integers"):
    _density.class_density(x, labels.astype(np.float32), NUM_CLASSES)


# ----------------------------------------------------------------------------
# GOR and entropy regulariser.

def test_gor_matches_loop_reference_and_gradient():
  x, labels, _, _ = _batch(seed=8, dim=4)
  loss, aux = jax.jit(_density.global_orthogonal_regularizer)(x, labels)
  np.testing.assert_allclose(loss, ref_gor(x, labels), rtol=1e-5, atol=1e-7)
  g = jax.jit(jax.grad(
      lambda x: _density.global_orthogonal_regularizer(x, labels)[0]))(x)
  ref_g = numerical_grad(lambda xx: ref_gor(xx, labels), x.astype(np.float64))
  np.testing.assert_allclose(g, ref_g, rtol=1e-3, atol=1e-5)
  assert aux["num_negative_pairs"] == sum(
      labels[i] != labels[j] for i in range(len(labels))
      for j in range(len(labels)))


def test_gor_hinge_inactive_for_orthogonal_negatives():
  # Four orthonormal vectors of four classes: M1 = 0, M2 = 0 < 1/d.
  x = np.eye(4, dtype=np.float32)
  loss, aux = jax.jit(_density.global_orthogonal_regularizer)(
      x, np.arange(4))
  assert float(loss) == 0.0 and float(aux["gor_m2"]) == 0.0
  # Two identical negatives: M1 = M2 = 1 -> 1 + (1 - 1/4).
  loss, _ = jax.jit(_density.global_orthogonal_regularizer)(
      np.ones((2, 4), np.float32), np.array([0, 1]))
  np.testing.assert_allclose(loss, 1.0 + 0.75, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_entropy_matches_loop_reference_and_gradient(temperature):
  x, labels, _, _ = _batch(seed=9, dim=4)
  f = jax.jit(lambda x: _density.entropy_regularizer(
      x, labels, temperature=temperature)[0])
  np.testing.assert_allclose(f(x), ref_entropy(x, temperature),
                             rtol=1e-5)
  ref_g = numerical_grad(lambda xx: ref_entropy(xx, temperature),
                         x.astype(np.float64))
  np.testing.assert_allclose(jax.grad(f)(x), ref_g, rtol=1e-3, atol=1e-5)
  # Entropy is at most log(B - 1): the loss is bounded below by -log(B - 1).
  assert float(f(x)) >= -np.log(len(x) - 1) - 1e-6


# ----------------------------------------------------------------------------
# Degenerate batches: finite values and gradients.

DEGENERATE = {
    "one_class": (np.random.default_rng(0).normal(size=(6, 5)),
                  np.full(6, 2)),
    "all_singletons": (np.random.default_rng(1).normal(size=(6, 5)),
                       np.arange(6)),
    "duplicates": (np.ones((6, 5)), np.array([0, 0, 0, 1, 1, 1])),
    "zero_vectors": (np.concatenate([np.zeros((2, 5)), np.ones((2, 5))]),
                     np.array([0, 0, 1, 1])),
    "single_example": (np.ones((1, 5)), np.array([3])),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_batches_finite(case):
  x, labels = DEGENERATE[case]
  x, labels = jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)
  alpha = jnp.full((NUM_CLASSES,), 0.5)
  d0 = jnp.linspace(0.0, 0.9, NUM_CLASSES)  # includes a zero D0

  def all_regularizers(x, a):
    return jnp.stack([
        _density.density_regularizer(x, labels, a, d0)[0],
        _density.density_regularizer(x, labels, a, None, correlation=False)[0],
        _density.global_orthogonal_regularizer(x, labels)[0],
        _density.entropy_regularizer(x, labels)[0]])

  def with_values(x, a):
    values = all_regularizers(x, a)
    return values, values

  # One compile: the Jacobian of the four values (each row one gradient).
  (gx, ga), values = jax.jit(jax.jacrev(with_values, argnums=(0, 1),
                                        has_aux=True))(x, alpha)
  assert np.all(np.isfinite(values)), values
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(ga))
  if case == "all_singletons":
    np.testing.assert_array_equal(values[:2], 0.0)  # no measurable density


# ----------------------------------------------------------------------------
# Host side: original densities.

def test_original_density_matches_reference_and_fills_singletons():
  rng = np.random.default_rng(10)
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
  feats = rng.normal(size=(len(labels), 7)) * 3.0
  d0 = dmlda.original_density(feats, labels, 5)
  ref, _ = ref_class_density(feats, labels, 5)
  np.testing.assert_allclose(d0[[0, 1, 3]], ref[[0, 1, 3]], rtol=1e-5)
  # Class 2 (one example) and class 4 (none) get the mean measured density.
  np.testing.assert_allclose(d0[[2, 4]], ref[[0, 1, 3]].mean(), rtol=1e-5)
  assert d0.dtype == np.float32
  with pytest.raises(ValueError, match="labels must lie"):
    dmlda.original_density(feats, labels, 3)


# ----------------------------------------------------------------------------
# The Method factory, with a stub base-loss registry.

def _stub_contrastive(embeddings, labels, *, margin=1.0):
  """Stands in for a registry loss: eq. (2) contrastive loss (mean over pairs)."""
  d = jnp.sum(jnp.square(embeddings[:, None] - embeddings[None]), -1)
  same = labels[:, None] == labels[None, :]
  off = ~jnp.eye(len(labels), dtype=bool)
  per_pair = jnp.where(same, d, jax.nn.relu(margin - d))
  loss = jnp.sum(jnp.where(off, per_pair, 0.0)) / jnp.sum(off)
  return loss, {"per_example": jnp.sum(jnp.where(off, per_pair, 0.0), 1)}


class StubRegistry:
  """The stub's value as the tests compare it."""

  @staticmethod
  def apply(name, embeddings, labels, margin=1.0):
    assert name == "stub_contrastive"
    return _stub_contrastive(embeddings, labels, margin=margin)


@pytest.fixture(autouse=True)
def stub_loss(monkeypatch):
  monkeypatch.setitem(dmlx_losses.REGISTRY, "stub_contrastive",
                      dmlx_losses.LossSpec(_stub_contrastive))


def _config(**method):
  cfg = ml_collections.ConfigDict()
  cfg.method = ml_collections.ConfigDict(dict(
      name="dmlda", regularizer="density", lam=10.0, eta=0.5, alpha_init=0.5,
      correlation=True))
  cfg.method.update(method)
  cfg.loss = ml_collections.ConfigDict(dict(
      name="stub_contrastive",
      kwargs=ml_collections.ConfigDict({"margin": 1.0})))
  cfg.eval = ml_collections.ConfigDict({"train_subset": 0})
  return cfg


def _settings(cfg):
  return dmlda.METHOD.settings(cfg)


def _loss(s):
  return lambda *a: dmlda.loss(s, *a)


INFO = ModelInfo(num_classes=NUM_CLASSES, num_train=40, embedding_dim=6)


def _context(cfg, num_train=40, feature_dim=16, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(num_train) % NUM_CLASSES
  train = Dataset(images=np.zeros((num_train, 2, 2, 3), np.uint8),
                  labels=labels.astype(np.int32),
                  class_names=tuple(str(c) for c in range(NUM_CLASSES)))
  pooled = rng.normal(size=(num_train, feature_dim)).astype(np.float32)
  calls = []

  def embed(layer="embedding", dataset=None):
    calls.append(layer)
    assert dataset is None
    return pooled

  ctx = HostContext(config=cfg, train=train, embed=embed, params={}, epoch=0,
                    step=0, seed=0, log=lambda s: None)
  return ctx, pooled, labels, calls


def _fake_step_inputs(seed=0, dim=6):
  x, labels, _, _ = _batch(seed=seed, dim=dim)
  x = np.asarray(_density.l2_normalize(jnp.asarray(x)))
  outputs = {"embedding": jnp.asarray(x),
             "pooled": jnp.zeros((len(x), 16), jnp.float32)}
  batch = {"images": jnp.zeros((len(x), 2, 2, 3), jnp.uint8),
           "labels": jnp.asarray(labels),
           "index": jnp.arange(len(x), dtype=jnp.int32)}
  return outputs, batch


def _refreshed(s, cfg):
  ctx, pooled, labels, calls = _context(cfg)
  state = dmlda.refresh(s, ctx, dmlda.init_state(s, INFO))
  return state.device, pooled, labels, calls


def test_density_method_end_to_end():
  cfg = _config()
  s = _settings(cfg)
  params = dmlda.init_params(s, jax.random.key(0), INFO)
  np.testing.assert_array_equal(params["target_density"],
                                np.full(NUM_CLASSES, 0.5, np.float32))
  template = dmlda.init_state(s, INFO).device
  assert isinstance(template, dmlda.DensityState)
  assert np.all(np.asarray(template.original_density) == 0)   # no embedding
  state, pooled, train_labels, calls = _refreshed(s, cfg)
  assert calls == ["pooled"]
  assert isinstance(state, dmlda.DensityState)
  ref_d0, _ = ref_class_density(pooled, train_labels, NUM_CLASSES)
  np.testing.assert_allclose(state.original_density, ref_d0, rtol=1e-5)

  outputs, batch = _fake_step_inputs()
  loss_fn = jax.jit(jax.value_and_grad(_loss(s), has_aux=True))
  (loss, aux), grads = loss_fn(params, outputs, batch, state,
                               jax.random.key(1))
  base, _ = StubRegistry.apply("stub_contrastive", outputs["embedding"],
                               batch["labels"])
  reg = ref_density_regularizer(np.asarray(outputs["embedding"]), LABELS,
                                np.full(NUM_CLASSES, 0.5), ref_d0)
  np.testing.assert_allclose(loss, float(base) + 10.0 * reg, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_base"], base, rtol=1e-6)
  assert "base/per_example" in aux and "reg/density_fit" in aux
  ga = np.asarray(grads["target_density"])
  np.testing.assert_array_equal(ga[[0, 2, 4, 5, 7]], 0.0)
  assert np.all(np.isfinite(ga)) and np.all(ga[[1, 3, 6]] != 0)


def test_density_minus_skips_original_density():
  for cfg in (_config(regularizer="density_minus"),
              _config(correlation=False)):
    s = _settings(cfg)
    ctx, _, _, calls = _context(cfg)
    state = dmlda.refresh(s, ctx, dmlda.init_state(s, INFO))
    assert state.device == () and calls == []
  outputs, batch = _fake_step_inputs(seed=3)
  values = []
  for cfg in (_config(regularizer="density_minus"),
              _config(correlation=False)):
    s = _settings(cfg)
    params = dmlda.init_params(s, jax.random.key(0), INFO)
    values.append(jax.jit(_loss(s))(params, outputs, batch, (),
                                    jax.random.key(0))[0])
  np.testing.assert_allclose(values[0], values[1], rtol=1e-6)


@pytest.mark.parametrize("regularizer,ref", [
    ("gor", lambda x, l: ref_gor(x, l)),
    ("entropy", lambda x, l: ref_entropy(x)),
    ("none", lambda x, l: 0.0),
])
def test_other_regularizers(regularizer, ref):
  cfg = _config(regularizer=regularizer, lam=2.0)
  s = _settings(cfg)
  params = dmlda.init_params(s, jax.random.key(0), INFO)
  assert "target_density" not in params
  assert dmlda.init_state(s, INFO).device == ()
  outputs, batch = _fake_step_inputs(seed=4)
  loss, _ = jax.jit(_loss(s))(params, outputs, batch, (), jax.random.key(0))
  base, _ = StubRegistry.apply("stub_contrastive", outputs["embedding"],
                               batch["labels"])
  expected = float(base) + 2.0 * ref(np.asarray(outputs["embedding"]), LABELS)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("regularizer", "density2", "regularizer"),
    ("lam", -1.0, "lam"),
    ("eta", float("nan"), "eta"),
    ("alpha_init", float("inf"), "alpha_init"),
    ("base", "registry", r"config\.method\.base is not a setting"),
])
def test_rejects_bad_config(field, value, match):
  with pytest.raises(ValueError, match=match):
    _settings(_config(**{field: value}))


def test_with_the_real_loss_registry():
  cfg = _config()
  cfg.loss = ml_collections.ConfigDict(dict(
      name="triplet_all",
      kwargs=ml_collections.ConfigDict(dict(margin=1.0, squared=True))))
  s = _settings(cfg)
  params = dmlda.init_params(s, jax.random.key(0), INFO)
  state, _, _, _ = _refreshed(s, cfg)
  outputs, batch = _fake_step_inputs(seed=5)
  loss, aux = jax.jit(_loss(s))(params, outputs, batch, state,
                                jax.random.key(0))
  base, _ = dmlx_losses.triplet_all(outputs["embedding"], batch["labels"],
                                    margin=1.0, squared=True)
  reg, _ = density_regularizer(outputs["embedding"], batch["labels"],
                               params["target_density"],
                               state.original_density)
  np.testing.assert_allclose(loss, base + 10.0 * reg, rtol=1e-5)
  np.testing.assert_allclose(aux["loss_base"], base, rtol=1e-6)


# ----------------------------------------------------------------------------
# DML-DA's contrastive base loss, eq. (2), and config.method.base.

def ref_dmlda_contrastive(x, labels, margin=1.0, reduction="mean"):
  x = np.asarray(x, np.float64)
  total, pairs = 0.0, 0
  for i in range(len(x)):
    for j in range(len(x)):
      if i == j:
        continue
      d = float(np.sum((x[i] - x[j]) ** 2))          # eq. (1), squared
      total += d if labels[i] == labels[j] else max(0.0, margin - d)
      pairs += 1
  if reduction == "sum":          # eq. (2): each unordered pair once
    return total / 2
  return total / max(pairs, 1)


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_dmlda_contrastive_matches_loop_reference_and_gradient(margin):
  x, labels, _, _ = _batch(seed=11, dim=4)
  x = 0.5 * x  # mix of active and inactive negative hinges
  f = jax.jit(lambda x: _dmlda_contrastive.dmlda_contrastive(x, labels,
                                                   margin=margin)[0])
  ref = ref_dmlda_contrastive(x, labels, margin)
  np.testing.assert_allclose(f(x), ref, rtol=1e-5)
  ref_g = numerical_grad(lambda xx: ref_dmlda_contrastive(xx, labels, margin),
                         x.astype(np.float64))
  np.testing.assert_allclose(jax.grad(f)(x), ref_g, rtol=1e-3, atol=1e-5)
  _, aux = _dmlda_contrastive.dmlda_contrastive(jnp.asarray(x), jnp.asarray(labels),
                                      margin=margin)
  assert 0.0 < float(aux["fraction_active_negative"]) < 1.0
  # The paper's eq. (2) as written: the sum over the batch's pairs.
  f_sum = jax.jit(lambda x: _dmlda_contrastive.dmlda_contrastive(
      x, labels, margin=margin, reduction="sum")[0])
  np.testing.assert_allclose(f_sum(x), ref_dmlda_contrastive(
      x, labels, margin, "sum"), rtol=1e-5)
  ref_gs = numerical_grad(lambda xx: ref_dmlda_contrastive(
      xx, labels, margin, "sum"), x.astype(np.float64))
  np.testing.assert_allclose(jax.grad(f_sum)(x), ref_gs, rtol=1e-3, atol=1e-4)


def test_dmlda_contrastive_check_grads_and_hinge_not_squared():
  x, labels, _, _ = _batch(seed=12, dim=3)
  f = jax.jit(lambda x: _dmlda_contrastive.dmlda_contrastive(x, labels)[0])
  jax.test_util.check_grads(f, (0.4 * x,), order=1, modes=("rev",),
                            atol=1e-2, rtol=1e-2, eps=1e-3)
  # Two negatives at squared distance 0.25: hinge 1 - 0.25 (not squared);
  # positives pay D itself (not D^2): two points of a class 2 apart pay 4.
  two = jnp.array([[0.0, 0.0], [0.5, 0.0]])
  loss, _ = _dmlda_contrastive.dmlda_contrastive(two, jnp.array([0, 1]))
  np.testing.assert_allclose(loss, 0.75, rtol=1e-6)
  loss, _ = _dmlda_contrastive.dmlda_contrastive(jnp.array([[0.0, 0.0], [2.0, 0.0]]),
                                       jnp.array([3, 3]))
  np.testing.assert_allclose(loss, 4.0, rtol=1e-6)


def test_dmlda_contrastive_degenerate_and_bad_input():
  for x, labels in DEGENERATE.values():
    x, labels = jnp.asarray(x, jnp.float32), jnp.asarray(labels, jnp.int32)
    value, grad = jax.value_and_grad(
        lambda x: _dmlda_contrastive.dmlda_contrastive(x, labels)[0])(x)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
  x, labels, _, _ = _batch()
  with pytest.raises(ValueError, match="margin"):
    _dmlda_contrastive.dmlda_contrastive(x, labels, margin=-1.0)
  with pytest.raises(ValueError, match="labels shape"):
    _dmlda_contrastive.dmlda_contrastive(x, labels[:-1])


def test_with_dmlda_contrastive_base():
  cfg = _config()
  cfg.loss = ml_collections.ConfigDict(dict(
      name="dmlda_contrastive",
      kwargs=ml_collections.ConfigDict({"margin": 0.8})))
  s = _settings(cfg)
  params = dmlda.init_params(s, jax.random.key(0), INFO)
  assert params["base"] == {}
  state, pooled, train_labels, _ = _refreshed(s, cfg)
  outputs, batch = _fake_step_inputs(seed=6)
  loss, aux = jax.jit(_loss(s))(params, outputs, batch, state,
                                jax.random.key(0))
  x = np.asarray(outputs["embedding"])
  ref_d0, _ = ref_class_density(pooled, train_labels, NUM_CLASSES)
  expected = (ref_dmlda_contrastive(x, LABELS, 0.8) + 10.0 *
              ref_density_regularizer(x, LABELS, np.full(NUM_CLASSES, 0.5),
                                      ref_d0))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert "base/negative_loss" in aux
  bad = _config()
  bad.loss = ml_collections.ConfigDict(dict(
      name="dmlda_contrastive",
      kwargs=ml_collections.ConfigDict({"neg_margin": 1.0})))
  with pytest.raises(ValueError, match="neg_margin"):
    _settings(bad)


def test_evaluator_reports_densities():
  cfg = _config()
  ctx, pooled, labels, calls = _context(cfg)
  train_emb = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
  embedded = []

  def embed(layer="embedding", dataset=None):
    embedded.append((layer, len(dataset) if dataset is not None else None))
    return train_emb
  test_x, test_labels, _, _ = _batch(seed=13, dim=6)
  test_ds = Dataset(images=np.zeros((len(test_labels), 2, 2, 3), np.uint8),
                    labels=test_labels,
                    class_names=tuple(str(c) for c in range(NUM_CLASSES)))
  eval_ctx = base_lib.EvalContext(
      config=cfg, train=ctx.train, embed=embed,
      params={"target_density": np.array([0.2, 0.4] * 4, np.float32)},
      epoch=1, step=10, seed=0, log=ctx.log, test=test_ds,
      test_features={"embedding": test_x}, method_config=_settings(cfg),
      seen_classes=False)
  out = evaluators.run_evaluators(("dmlda_densities",), eval_ctx)
  ref_test, counts = ref_class_density(test_x, test_labels, NUM_CLASSES)
  measured = counts >= 2
  np.testing.assert_allclose(out["test_density"], ref_test[measured].mean(),
                             rtol=1e-5)
  ref_train, _ = ref_class_density(train_emb, labels, NUM_CLASSES)
  np.testing.assert_allclose(out["train_density"], ref_train.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(out["mean_target_density"], 0.3, rtol=1e-6)
  ref_global, _ = ref_class_density(test_x, np.zeros_like(test_labels), 1)
  np.testing.assert_allclose(out["test_global_density"], ref_global[0],
                             rtol=1e-5)
  np.testing.assert_allclose(out["test_relative_density"],
                             ref_test[measured].mean() / ref_global[0],
                             rtol=1e-5)
  assert embedded == [("embedding", 40)]


def test_original_densities_measured_at_their_epoch():
  """``original_density_epoch`` E > 0 measures D⁽⁰⁾ from the network trained
  for E epochs (the paper's comes from a pretrained one); until then the
  loss is eq. (6) without eq. (8)'s correlation penalty."""
  cfg = _config(original_density_epoch=2)
  s = _settings(cfg)
  assert dmlda.refresh_every(s) == 2
  ctx, pooled, train_labels, calls = _context(cfg)
  early = dmlda.refresh(s, ctx, dmlda.init_state(s, INFO))
  assert calls == [] and not bool(early.device.measured)
  params = dmlda.init_params(s, jax.random.key(0), INFO)
  outputs, batch = _fake_step_inputs(seed=8)
  loss = jax.jit(_loss(s))
  before = loss(params, outputs, batch, early.device, jax.random.key(0))[0]
  minus = _settings(_config(regularizer="density_minus"))
  expected = jax.jit(_loss(minus))(params, outputs, batch, (),
                                   jax.random.key(0))[0]
  np.testing.assert_allclose(before, expected, rtol=1e-6)
  later_ctx = HostContext(config=cfg, train=ctx.train, embed=ctx.embed,
                          params={}, epoch=2, step=20, seed=0, log=ctx.log)
  later = dmlda.refresh(s, later_ctx, early)
  assert calls == ["pooled"] and bool(later.device.measured)
  ref_d0, _ = ref_class_density(pooled, train_labels, NUM_CLASSES)
  np.testing.assert_allclose(later.device.original_density, ref_d0, rtol=1e-5)
  after = loss(params, outputs, batch, later.device, jax.random.key(0))[0]
  full = jax.jit(_loss(_settings(_config())))(params, outputs, batch,
                                             later.device, jax.random.key(0))[0]
  np.testing.assert_allclose(after, full, rtol=1e-6)
  assert dmlda.refresh(s, later_ctx, later) is later        # measured once
