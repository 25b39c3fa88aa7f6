"""Tests of MIC (Roth et al., ICCV 2019): l_d, gradient reversal, clustering.

Covers ``dmlx/losses/_mic.py`` (pure jittable parts) and ``dmlx/methods/mic.py``
(host-side clustering, the schedules, the auxiliary batches, evaluation). The
base loss is a small stub registered for these tests only.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score as nmi

from dmlx import losses
from dmlx.losses import _mic
from dmlx.methods import base
from dmlx.methods import mic
from dmlx.methods.base import HostContext, ModelInfo
from dmlx.train import evaluators


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _np_normalise(v):
  return v / max(np.sqrt(np.sum(v * v)), 1e-12)


def _np_mutual_information(a, b, params):
  """Plain-loop NumPy l_d: -mean_i mean_k (a_ik R(b_i)_k)^2."""
  w1 = np.asarray(params["hidden"]["kernel"], np.float64)
  c1 = np.asarray(params["hidden"]["bias"], np.float64)
  w2 = np.asarray(params["output"]["kernel"], np.float64)
  c2 = np.asarray(params["output"]["bias"], np.float64)
  total = 0.0
  for i in range(a.shape[0]):
    ai = _np_normalise(np.asarray(a[i], np.float64))
    bi = _np_normalise(np.asarray(b[i], np.float64))
    h = np.maximum(bi @ w1 + c1, 0.0)
    r = _np_normalise(h @ w2 + c2)
    row = 0.0
    for k in range(a.shape[1]):
      row += (ai[k] * r[k]) ** 2
    total += row / a.shape[1]
  return -total / a.shape[0]


def _l_d_without_reversal(a, b, params):
  """The same loss as _mic.mutual_information_loss but with no GRL."""
  a = _mic.l2_normalise(a)
  b = _mic.l2_normalise(b)
  return -jnp.mean(jnp.square(a * _mic.apply_projection(params, b)))


def _stub_init(rng, num_classes, dim, *, beta=1.2):
  del rng, dim
  return {"beta": jnp.full((num_classes,), beta)}


def _stub_fn(embeddings, labels, params, *, margin=0.2):
  """A smooth margin-like loss with a learnable per-class beta."""
  d = jnp.sqrt(jnp.sum(jnp.square(embeddings[:, None] - embeddings[None]),
                       -1) + 1e-8)
  same = (labels[:, None] == labels[None]).astype(d.dtype)
  beta = params["beta"][labels][:, None]
  pos = jax.nn.softplus(d - beta + margin) * same
  neg = jax.nn.softplus(beta - d + margin) * (1.0 - same)
  value = jnp.mean(pos + neg)
  return value, {"positives": jnp.sum(same)}


def _stub_apply(name, embeddings, labels, *, params, rng, **kwargs):
  del name, rng
  return _stub_fn(embeddings, labels, params, **kwargs)


@pytest.fixture(autouse=True)
def stub_loss(monkeypatch):
  """The stub base loss, registered as 'stub' for each test."""
  monkeypatch.setitem(losses.REGISTRY, "stub",
                      losses.LossSpec(_stub_fn, init=_stub_init))


def _config(**method):
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.method = ml_collections.ConfigDict(dict(
      dict(name="mic", num_clusters=5, gamma=10.0, switch_prob=0.0,
           schedule="joint"), **method))
  cfg.loss = ml_collections.ConfigDict(
      {"name": "stub", "kwargs": {"margin": 0.2}})
  cfg.model = ml_collections.ConfigDict({"aux_embedding_dim": 6})
  cfg.sampler = ml_collections.ConfigDict(
      {"name": "pk", "classes_per_batch": 3, "images_per_class": 4})
  return cfg


def _settings(**method) -> mic.Config:
  return mic.METHOD.settings(_config(**method))


def _loss(cfg):
  return lambda *a: mic.loss(cfg, *a)


def _fake_step_inputs(batch=12, dim=8, aux_dim=6, num_train=40, seed=0):
  rng = np.random.default_rng(seed)
  outputs = {
      "embedding": jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32),
      "aux_embedding": jnp.asarray(rng.normal(size=(batch, aux_dim)),
                                   jnp.float32),
      "pooled": jnp.asarray(rng.normal(size=(batch, 16)), jnp.float32),
  }
  outputs["embedding"] = _mic.l2_normalise(outputs["embedding"])
  outputs["aux_embedding"] = _mic.l2_normalise(outputs["aux_embedding"])
  batch_dict = {
      "images": jnp.zeros((batch, 4, 4, 3), jnp.float32),
      "labels": jnp.asarray(np.repeat(np.arange(batch // 4), 4), jnp.int32),
      "index": jnp.asarray(rng.choice(num_train, batch, replace=False),
                           jnp.int32),
  }
  batch_dict["step"] = jnp.zeros((), jnp.int32)
  state = mic.MICState(
      surrogate_labels=jnp.asarray(rng.integers(0, 5, num_train), jnp.int32))
  return outputs, batch_dict, state


def _planted_features(num_classes=4, num_attributes=4, per_cell=25, dim=16,
                      seed=0):
  """Features = big class offset + smaller shared-attribute offset + noise.

  Every class holds every attribute value equally often, so subtracting the
  class mean removes the class and leaves the attribute.
  """
  rng = np.random.default_rng(seed)
  basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]   # orthonormal rows
  class_means = basis[:num_classes] * 20.0
  attribute_means = basis[num_classes:num_classes + num_attributes] * 4.0
  feats, classes, attributes = [], [], []
  for c in range(num_classes):
    for a in range(num_attributes):
      noise = rng.normal(size=(per_cell, dim)) * 0.3
      feats.append(class_means[c] + attribute_means[a] + noise)
      classes += [c] * per_cell
      attributes += [a] * per_cell
  return (np.concatenate(feats).astype(np.float32), np.asarray(classes),
          np.asarray(attributes))


def _has_kmeans() -> bool:
  try:
    return hasattr(importlib.import_module("dmlx.index"), "kmeans")
  except ImportError:
    return False


needs_kmeans = pytest.mark.skipif(not _has_kmeans(),
                                  reason="dmlx.index.kmeans not available")


# ---------------------------------------------------------------------------
# Gradient reversal and l_d.
# ---------------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_flips_gradient():
  x = jnp.asarray([[1.0, -2.0, 3.0]])
  w = jnp.asarray([[0.5, 2.0, -1.0]])
  for lam in (1.0, 0.25):
    y = _mic.gradient_reversal(x, lam)
    np.testing.assert_array_equal(y, x)
    g = jax.grad(lambda v: jnp.sum(w * _mic.gradient_reversal(v, lam)))(x)
    np.testing.assert_allclose(g, -lam * w, rtol=1e-6)
  # Works under jit with a traced lambda.
  g = jax.jit(jax.grad(lambda v, l: jnp.sum(w * _mic.gradient_reversal(v, l))))(
      x, 2.0)
  np.testing.assert_allclose(g, -2.0 * w, rtol=1e-6)


def test_mutual_information_loss_matches_numpy_reference():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(7, 5)).astype(np.float32)
  b = rng.normal(size=(7, 3)).astype(np.float32)
  params = _mic.init_projection(jax.random.PRNGKey(0), 3, 5, hidden_dim=11)
  got = jax.jit(_mic.mutual_information_loss)(a, b, params)
  want = _np_mutual_information(a, b, params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert float(got) <= 0.0
  # Squared element-wise products, not a squared dot product.
  ra = np.stack([_np_normalise(v) for v in a.astype(np.float64)])
  rb = np.asarray(_mic.apply_projection(params, _mic.l2_normalise(b)))
  squared_dot = -np.mean(np.sum(ra * rb, -1) ** 2)
  assert abs(float(got) - squared_dot) > 1e-4


def test_gradient_reversal_flips_embedding_gradients_but_not_projection():
  rng = np.random.default_rng(2)
  a = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  params = _mic.init_projection(jax.random.PRNGKey(3), 3, 4, hidden_dim=9)

  @jax.jit
  def both_grads(lam):
    with_grl = jax.grad(
        lambda x, y, p: _mic.mutual_information_loss(x, y, p, grl_lambda=lam),
        argnums=(0, 1, 2))(a, b, params)
    without = jax.grad(_l_d_without_reversal, argnums=(0, 1, 2))(a, b, params)
    return with_grl, without

  for lam in (1.0, 0.5):
    (ga, gb, gp), (ra, rb, rp) = both_grads(lam)
    assert float(jnp.abs(ra).max()) > 1e-4 and float(jnp.abs(rb).max()) > 1e-4
    np.testing.assert_allclose(ga, -lam * ra, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gb, -lam * rb, rtol=1e-5, atol=1e-8)
    for got, want in zip(jax.tree.leaves(gp), jax.tree.leaves(rp)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(gp)) > 1e-5


def test_projection_gradient_matches_finite_differences():
  rng = np.random.default_rng(4)
  a = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  params = _mic.init_projection(jax.random.PRNGKey(5), 3, 4, hidden_dim=6)
  fn = lambda k: _mic.mutual_information_loss(
      a, b, {"hidden": params["hidden"],
             "output": {"kernel": k, "bias": params["output"]["bias"]}})
  fn = jax.jit(fn)
  kernel = params["output"]["kernel"]
  grad = jax.grad(fn)(kernel)
  eps = 1e-2
  for idx in [(0, 0), (2, 3), (5, 1)]:
    hi = fn(kernel.at[idx].add(eps))
    lo = fn(kernel.at[idx].add(-eps))
    np.testing.assert_allclose(grad[idx], (hi - lo) / (2 * eps), rtol=2e-2,
                               atol=1e-5)


def test_projection_output_unit_length_and_zero_inputs_finite():
  params = _mic.init_projection(jax.random.PRNGKey(0), 3, 5)
  assert params["hidden"]["kernel"].shape == (3, 512)
  out = jax.jit(_mic.apply_projection)(params, jnp.ones((4, 3)))
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
  grads = jax.jit(jax.grad(_mic.mutual_information_loss, argnums=(0, 1, 2)))(
      jnp.zeros((4, 5)), jnp.zeros((4, 3)), params)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="dimension 4"):
    _mic.mutual_information_loss(jnp.ones((2, 4)), jnp.ones((2, 3)), params)


# ---------------------------------------------------------------------------
# Label switching.
# ---------------------------------------------------------------------------


def test_switch_labels_probability_and_support():
  size, p = 20000, 0.2
  switch = jax.jit(_mic.switch_labels)
  labels = jnp.arange(size, dtype=jnp.int32)   # all distinct: a switch changes
  switched = switch(labels, jax.random.PRNGKey(0), p)
  changed = np.asarray(switched != labels)
  assert abs(changed.mean() - p) < 0.015, changed.mean()
  assert switched.dtype == labels.dtype
  assert set(np.asarray(switched).tolist()) <= set(range(size))
  # Clustered labels: switched ones come from the batch's own clusters.
  clusters = jnp.asarray(np.repeat(np.arange(7, 12), 40), jnp.int32)
  out = switch(clusters, jax.random.PRNGKey(1), 0.5)
  assert set(np.asarray(out).tolist()) <= set(range(7, 12))
  assert bool(jnp.any(out != clusters))
  np.testing.assert_array_equal(
      switch(clusters, jax.random.PRNGKey(1), 0.0), clusters)
  all_switched = switch(labels[:100], jax.random.PRNGKey(2), 1.0)
  assert bool(jnp.all(all_switched != labels[:100]))
  # Fresh noise per key.
  other = switch(labels, jax.random.PRNGKey(3), p)
  assert bool(jnp.any(other != switched))
  with pytest.raises(ValueError, match="switch_prob"):
    _mic.switch_labels(labels, jax.random.PRNGKey(0), 1.5)


# ---------------------------------------------------------------------------
# Standardisation and clustering.
# ---------------------------------------------------------------------------


def test_standardise_per_class_matches_loop_reference():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(30, 4)).astype(np.float32) * 3 + 1
  labels = rng.choice([5, 9, 11, 2], size=30)
  for mode in ("mean", "mean_std"):
    got = mic.standardise_per_class(feats, labels, mode)
    want = np.zeros_like(feats, dtype=np.float64)
    for c in np.unique(labels):
      rows = [i for i in range(30) if labels[i] == c]
      for d in range(4):
        vals = [float(feats[i, d]) for i in rows]
        mu = sum(vals) / len(vals)
        sd = (sum((v - mu) ** 2 for v in vals) / len(vals)) ** 0.5
        for i in rows:
          want[i, d] = (feats[i, d] - mu) / (sd if mode == "mean_std" else 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      mic.standardise_per_class(feats, labels, "none"), feats)
  with pytest.raises(ValueError, match="mstd"):
    mic.standardise_per_class(feats, labels, "mstd")


def test_standardise_singleton_and_zero_variance_classes_are_finite():
  feats = np.array([[1.0, 2.0], [3.0, 3.0], [5.0, 3.0], [7.0, 7.0]],
                   np.float32)
  labels = np.array([0, 1, 1, 2])     # class 0, 2: one example; class 1: dim 1
  for mode in ("mean", "mean_std"):   # has zero variance.
    z = mic.standardise_per_class(feats, labels, mode)
    assert np.all(np.isfinite(z))
    np.testing.assert_array_equal(z[0], 0.0)
    np.testing.assert_array_equal(z[3], 0.0)
    np.testing.assert_array_equal(z[1:3, 1], 0.0)
  z = mic.standardise_per_class(feats, labels, "mean_std")
  np.testing.assert_allclose(z[1:3, 0], [-1.0, 1.0])


@needs_kmeans
def test_standardised_clusters_recover_shared_attribute_not_classes():
  feats, classes, attributes = _planted_features()
  plain = mic.compute_surrogate_labels(feats, classes, 4, standardise="none",
                                       seed=0, nredo=3)
  assert nmi(plain, classes) > 0.9
  assert nmi(plain, attributes) < 0.1
  for mode in ("mean", "mean_std"):
    stand = mic.compute_surrogate_labels(feats, classes, 4, standardise=mode,
                                         seed=0, nredo=3)
    assert stand.dtype == np.int32 and stand.shape == classes.shape
    assert nmi(stand, attributes) > 0.9, mode
    assert nmi(stand, classes) < 0.1, mode
  with pytest.raises(ValueError, match="num_clusters"):
    mic.compute_surrogate_labels(feats, classes, len(feats) + 1)


# ---------------------------------------------------------------------------
# The Method.
# ---------------------------------------------------------------------------


def _init(cfg, num_classes=3, dim=8, aux_dim=6):
  info = ModelInfo(num_classes=num_classes, num_train=40, embedding_dim=dim,
                   feature_dims={"aux_embedding": aux_dim, "embedding": dim})
  return mic.init_params(cfg, jax.random.PRNGKey(0), info)


def test_init_params_separate_tasks():
  cfg = _settings(num_clusters=5, projection_dim=7)
  params = _init(cfg)
  assert params["class_loss"]["beta"].shape == (3,)
  assert params["aux_loss"]["beta"].shape == (5,)
  assert params["projection"]["hidden"]["kernel"].shape == (6, 7)
  assert params["projection"]["output"]["kernel"].shape == (7, 8)
  assert mic.METHOD.name == "mic" and mic.refresh_every(cfg) == 2
  assert mic.METHOD.update_state is None


def test_combined_loss_runs_under_jit_and_adds_terms():
  gamma = 10.0
  cfg = _settings(gamma=gamma)
  params = _init(cfg)
  outputs, batch, state = _fake_step_inputs()
  value, aux = jax.jit(_loss(cfg))(params, outputs, batch, state,
                                   jax.random.PRNGKey(0))
  @jax.jit
  def reference(params, outputs, batch, state):
    y_beta = state.surrogate_labels[batch["index"]]
    l_a = lambda e: _stub_apply("", e, batch["labels"],
                                params=params["class_loss"], rng=None)[0]
    l_b = _stub_apply("", outputs["aux_embedding"], y_beta,
                      params=params["aux_loss"], rng=None)[0]
    l_d = lambda e: _mic.mutual_information_loss(
        e, outputs["aux_embedding"], params["projection"])
    value = l_a(outputs["embedding"]) + l_b + gamma * l_d(outputs["embedding"])
    # d/dE_alpha = d l_alpha + gamma * d l_d (reversed inside l_d).
    grad_a = (jax.grad(l_a)(outputs["embedding"]) +
              gamma * jax.grad(l_d)(outputs["embedding"]))
    return value, l_b, grad_a

  want_value, want_l_b, want_grad_a = reference(params, outputs, batch, state)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(aux["mic_aux_loss"], want_l_b, rtol=1e-5)
  assert "class_positives" in aux

  grad_fn = jax.jit(jax.grad(_loss(cfg), argnums=(0, 1), has_aux=True))
  g_params, g_out = grad_fn(params, outputs, batch, state,
                            jax.random.PRNGKey(0))[0]
  np.testing.assert_allclose(g_out["embedding"], want_grad_a, rtol=1e-4,
                             atol=1e-6)
  for leaf in jax.tree.leaves((g_params, g_out["embedding"],
                               g_out["aux_embedding"])):
    assert bool(jnp.all(jnp.isfinite(leaf)))
  assert float(jnp.abs(g_params["aux_loss"]["beta"]).sum()) > 0
  assert float(jnp.abs(g_params["class_loss"]["beta"]).sum()) > 0


def test_alternating_phases_gate_gradients():
  gamma = 3.0
  cfg = _settings(gamma=gamma, schedule="alternate")
  params = _init(cfg)
  outputs, batch, state = _fake_step_inputs()
  grad_fn = jax.jit(jax.value_and_grad(_loss(cfg), argnums=(0, 1),
                                       has_aux=True))
  key = jax.random.PRNGKey(0)

  (v0, aux0), (gp0, go0) = grad_fn(params, outputs, batch, state, key)
  np.testing.assert_allclose(
      v0, aux0["mic_class_loss"] + gamma * aux0["mic_mutual_information"],
      rtol=1e-6)
  assert float(jnp.abs(go0["embedding"]).max()) > 0
  assert float(jnp.abs(go0["aux_embedding"]).max()) == 0.0
  assert float(jnp.abs(gp0["aux_loss"]["beta"]).max()) == 0.0
  assert float(jnp.abs(gp0["class_loss"]["beta"]).max()) > 0

  # The phase is the step's parity: odd steps train E_beta.
  batch1 = {**batch, "step": jnp.ones((), jnp.int32)}
  (v1, aux1), (gp1, go1) = grad_fn(params, outputs, batch1, state, key)
  np.testing.assert_allclose(
      v1, aux1["mic_aux_loss"] + gamma * aux1["mic_mutual_information"],
      rtol=1e-6)
  assert float(jnp.abs(go1["embedding"]).max()) == 0.0
  assert float(jnp.abs(go1["aux_embedding"]).max()) > 0
  assert float(jnp.abs(gp1["class_loss"]["beta"]).max()) == 0.0
  assert float(jnp.abs(gp1["aux_loss"]["beta"]).max()) > 0
  # R is trained in both phases, with the same (unreversed) gradient.
  for a, b in zip(jax.tree.leaves(gp0["projection"]),
                  jax.tree.leaves(gp1["projection"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  assert max(float(jnp.abs(g).max())
             for g in jax.tree.leaves(gp0["projection"])) > 0


def test_authors_schedule_two_updates_on_their_own_batches():
  """The authors' iteration: a class step L^α = l_α + γ·l_d, then, with
  probability 0.8, an auxiliary step L^β = l_β + γ·l_d on a batch whose
  labels are surrogate labels."""
  gamma = 4.0
  cfg = _settings(gamma=gamma, schedule="authors")
  updates = mic.updates(cfg)
  assert [(u.name, u.stream, u.probability) for u in updates] == [
      ("class", "train", 1.0), ("aux", "aux", 0.8)]
  params = _init(cfg)
  outputs, batch, state = _fake_step_inputs()
  key = jax.random.PRNGKey(0)
  grad = jax.jit(jax.value_and_grad(lambda p, o, b, u: updates[u].loss(
      cfg, p, o, b, state, key), argnums=(0, 1), has_aux=True),
                 static_argnums=3)
  (v_class, aux_c), (gp_c, go_c) = grad(params, outputs, batch, 0)
  np.testing.assert_allclose(
      v_class, aux_c["mic_class_loss"] + gamma * aux_c["mic_mutual_information"],
      rtol=1e-6)
  assert float(jnp.abs(gp_c["aux_loss"]["beta"]).max()) == 0.0   # no l_β
  # l_d's reversed gradient reaches both encoders in the class step.
  assert float(jnp.abs(go_c["aux_embedding"]).max()) > 0
  (v_aux, aux_a), (gp_a, _) = grad(params, outputs, batch, 1)
  np.testing.assert_allclose(
      v_aux, aux_a["mic_aux_loss"] + gamma * aux_a["mic_mutual_information"],
      rtol=1e-6)
  assert float(jnp.abs(gp_a["class_loss"]["beta"]).max()) == 0.0  # no l_α
  # The auxiliary loss reads the batch's labels (the surrogate labels the
  # auxiliary sampler put there), not the class labels.
  relabelled = {**batch, "labels": jnp.arange(12, dtype=jnp.int32) % 3}
  (v_relabel, _), _ = grad(params, outputs, relabelled, 1)
  assert float(v_relabel) != float(v_aux)


def test_surrogate_sampler_every_anchor_has_a_surrogate_positive():
  rng = np.random.default_rng(3)
  surrogate = rng.integers(0, 6, 200).astype(np.int32)
  sampler = mic.SurrogateSampler(surrogate, 4, 4, switch_prob=0.0, seed=1)
  for step in range(30):
    rows, labels = sampler.batch(step)
    assert rows.shape == labels.shape == (16,)
    np.testing.assert_array_equal(labels, surrogate[rows])
    counts = np.bincount(labels, minlength=6)
    assert set(counts[counts > 0]) == {4}          # 4 clusters × 4 images
  # With the authors' random cluster pick, a slot keeps its cluster's label
  # while ~p of the images come from uniformly random clusters.
  noisy = mic.SurrogateSampler(surrogate, 4, 4, switch_prob=0.2, seed=1)
  moved = []
  for step in range(200):
    rows, labels = noisy.batch(step)
    clean_rows, clean_labels = sampler.batch(step)
    np.testing.assert_array_equal(labels, clean_labels)
    moved.append(np.mean(rows != clean_rows))
  assert 0.15 < np.mean(moved) < 0.25
  np.testing.assert_array_equal(noisy.batch(7)[0], noisy.batch(7)[0])


def test_samplers_by_schedule():
  config = _config(schedule="authors", num_clusters=4)
  cfg = mic.METHOD.settings(config)
  labels = np.repeat(np.arange(5), 8).astype(np.int32)
  train = _FakeDataset(labels)
  ctx = HostContext(config=config, train=train, embed=None, params={}, epoch=0,
                    step=0, seed=0)
  state = base.MethodState(host=mic.MICState(np.arange(40, dtype=np.int32) % 4))
  streams = mic.samplers(cfg, ctx, state)
  assert set(streams) == {"train", "aux"}
  assert set(mic.samplers(_settings(schedule="joint"), ctx, state)) == {"train"}


def test_loss_uses_surrogate_labels_at_batch_index_with_switching():
  cfg = _settings(switch_prob=0.2)
  params = _init(cfg)
  outputs, batch, state = _fake_step_inputs()
  loss = jax.jit(_loss(cfg))
  values = {float(loss(params, outputs, batch, state,
                       jax.random.PRNGKey(s))[1]["mic_aux_loss"])
            for s in range(8)}
  assert len(values) > 1          # the switching noise changes with the key
  fixed = jax.jit(_loss(_settings(switch_prob=0.0)))
  a = fixed(params, outputs, batch, state, jax.random.PRNGKey(0))[1]
  b = fixed(params, outputs, batch, state, jax.random.PRNGKey(1))[1]
  assert float(a["mic_aux_loss"]) == float(b["mic_aux_loss"])


class _FakeDataset:

  def __init__(self, labels):
    self.labels = labels

  def __len__(self):
    return len(self.labels)


@needs_kmeans
def test_first_refresh_clusters_pooled_and_later_ones_aux_embedding():
  feats, classes, attributes = _planted_features(per_cell=10)
  aux_feats = np.eye(4, dtype=np.float32)[classes] * 5.0  # refresh: by class
  calls = []

  def embed(layer="embedding", dataset=None):
    del dataset
    calls.append(layer)
    return {"pooled": feats, "aux_embedding": aux_feats}[layer]

  logs = []
  ctx = HostContext(config=None, train=_FakeDataset(classes), embed=embed,
                    params={}, epoch=0, step=0, seed=3, log=logs.append)
  cfg = _settings(num_clusters=4, standardise="mean")
  template = mic.init_state(cfg, ModelInfo(4, len(classes), 8))
  state = mic.refresh(cfg, ctx, template)
  assert calls == ["pooled"]
  labels = np.asarray(state.device.surrogate_labels)
  assert labels.shape == classes.shape and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, state.host.surrogate_labels)
  assert nmi(labels, attributes) > 0.9

  later = HostContext(config=None, train=_FakeDataset(classes), embed=embed,
                      params={}, epoch=2, step=20, seed=3, log=logs.append)
  new = mic.refresh(cfg, later, state)
  assert calls == ["pooled", "aux_embedding"]
  assert new.device.surrogate_labels.shape == labels.shape
  assert new.device.surrogate_labels.dtype == np.int32
  assert nmi(np.asarray(new.device.surrogate_labels), classes) > 0.9   # no standardise
  assert any("NMI" in line for line in logs)


def test_config_validation():
  with pytest.raises(ValueError, match="standardise"):
    _settings(standardise="mstd")
  with pytest.raises(ValueError, match="switch_prob"):
    _settings(switch_prob=-0.1)
  with pytest.raises(ValueError, match="gamma"):
    _settings(gamma=-1.0)
  with pytest.raises(ValueError, match="schedule"):
    _settings(schedule="alternating")
  with pytest.raises(ValueError, match=r"config\.method\.alternate is not a setting"):
    _settings(alternate=True)
  with pytest.raises(ValueError, match="Unknown loss 'nope'"):
    config = _config()
    config.loss.name = "nope"
    mic.METHOD.settings(config)
  with pytest.raises(ValueError, match="aux_embedding_dim"):
    mic.init_params(_settings(), jax.random.PRNGKey(0),
                    ModelInfo(num_classes=3, num_train=10, embedding_dim=8))
  assert mic.refresh_every(_settings(refresh_every=0)) == 0


def test_with_registry_margin_loss():
  cfg = _config()
  cfg.loss.name = "margin"
  cfg.loss.kwargs = ml_collections.ConfigDict({"beta_per_class": True})
  cfg = mic.METHOD.settings(cfg)
  params = _init(cfg)
  assert params["class_loss"]["beta"].shape == (3,)
  assert params["aux_loss"]["beta"].shape == (5,)
  outputs, batch, state = _fake_step_inputs()
  (value, _), grads = jax.jit(jax.value_and_grad(_loss(cfg), has_aux=True))(
      params, outputs, batch, state, jax.random.PRNGKey(0))
  assert bool(jnp.isfinite(value))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------
# Evaluation on the concatenation [E_alpha, E_beta].
# ---------------------------------------------------------------------------


def _np_recall_at_k(x, labels, k):
  """Plain-loop Recall@k: the query itself excluded, L2 distance."""
  hits = 0
  for i in range(len(x)):
    dist = [(float(np.sum((x[i] - x[j]) ** 2)), j)
            for j in range(len(x)) if j != i]
    dist.sort()
    hits += any(labels[j] == labels[i] for _, j in dist[:k])
  return hits / len(x)


def _complementary_encoders(per_class=6, seed=0):
  """E_alpha tells classes {0,1} from {2,3}, E_beta {0,2} from {1,3}: only
  their concatenation separates all four classes."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(4), per_class)
  eye = np.eye(4, dtype=np.float32)
  e_alpha = eye[labels // 2] + 0.05 * rng.normal(size=(len(labels), 4))
  e_beta = eye[labels % 2] + 0.05 * rng.normal(size=(len(labels), 4))
  norm = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(
      np.float32)
  return labels, norm(e_alpha), norm(e_beta)


def _eval_ctx(cfg, labels, features, embed):
  return base.EvalContext(config=cfg, train=None, embed=embed, params={},
                          epoch=0, step=0, seed=0, log=lambda s: None,
                          test=_FakeDataset(labels), test_features=features,
                          method_config=None, seen_classes=False)


@needs_kmeans
def test_evaluate_concatenation_matches_loop_reference():
  labels, e_alpha, e_beta = _complementary_encoders()
  calls = []

  def embed(layer="embedding", dataset=None):
    calls.append((layer, dataset))
    return {"embedding": e_alpha, "aux_embedding": e_beta}[layer]

  cfg = _config()
  cfg.eval = ml_collections.ConfigDict({"ks": (1, 2),
                                        "metrics": ("recall", "nmi")})
  ctx = _eval_ctx(cfg, labels, {"embedding": e_alpha}, embed)
  assert evaluators.names(ml_collections.ConfigDict({"evaluators": "auto"}),
                          mic.METHOD) == ("mic_concatenation", "nearest_neighbour")
  out = evaluators.run_evaluators(("mic_concatenation", "nearest_neighbour"), ctx)
  assert calls == [("aux_embedding", ctx.test)]   # E_alpha is not re-embedded
  assert set(out) == {"concat/recall@1", "concat/recall@2", "concat/nmi"}
  joint = np.concatenate([e_alpha, e_beta], axis=1)
  for k in (1, 2):
    np.testing.assert_allclose(out[f"concat/recall@{k}"],
                               _np_recall_at_k(joint, labels, k), atol=1e-6)
  assert out["concat/recall@1"] == 1.0
  assert _np_recall_at_k(e_alpha, labels, 1) < 0.8   # each alone is not enough
  assert _np_recall_at_k(e_beta, labels, 1) < 0.8
  assert out["concat/nmi"] > 0.9

  calls.clear()     # both encoders already computed: nothing is embedded
  again = mic.evaluate_concatenation(_eval_ctx(
      cfg, labels, {"embedding": e_alpha, "aux_embedding": e_beta}, embed))
  assert calls == [] and again == out
