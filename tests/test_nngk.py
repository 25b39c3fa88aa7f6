"""Tests of NNGK (Meyer et al., ICIP 2018): loss vs NumPy loops, gradients,
numerical stability, FAISS bank refresh, eq. 3 classifier and the Method."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from dmlx.data.base import Dataset
from dmlx.losses._nngk import CentreBank
from dmlx.losses._nngk import nngk as _nngk_eager
from dmlx.methods import nngk as nngk_method
from dmlx.methods import base
from dmlx.methods.base import HostContext
from dmlx.methods.base import ModelInfo
from dmlx.train import evaluators


def _loss_fn(emb, weights, labels, index, bank, sigma, reduction="mean"):
  return _nngk_eager(emb, labels, index, bank, weights, sigma=sigma,
                     reduction=reduction)


# One jitted (loss, aux, grads) per shape set, σ traced: eager op-by-op
# dispatch and one compile per σ are slow on a shared 2-core CPU.
_run_jit = jax.jit(jax.value_and_grad(_loss_fn, argnums=(0, 1), has_aux=True),
                   static_argnames=("reduction",))


def _run(emb, labels, index, bank, weights=None, sigma=1.0, reduction="mean"):
  """Returns (loss, aux, d loss/d emb, d loss/d weights)."""
  n = bank.labels.shape[0]
  weights = np.ones(n, np.float32) if weights is None else weights
  (loss, aux), (ge, gw) = _run_jit(
      jnp.asarray(emb, jnp.float32), jnp.asarray(weights, jnp.float32),
      jnp.asarray(labels, jnp.int32), jnp.asarray(index, jnp.int32), bank,
      jnp.float32(sigma), reduction=reduction)
  return float(loss), aux, np.asarray(ge), np.asarray(gw)


# ----------------------------------------------------------------------------
# NumPy references (plain loops)
# ----------------------------------------------------------------------------


def _ref_example_loss(x, label, centres, centre_labels, weights, sigma):
  """-ln Pr(x ∈ label) of eq. 2/3 over the given centres, with plain loops."""
  num, den = 0.0, 0.0
  for c, lab, w in zip(centres, centre_labels, weights):
    d2 = sum((float(a) - float(b))**2 for a, b in zip(x, c))
    f = math.exp(-d2 / (2.0 * sigma**2))
    den += w * f
    if lab == label:
      num += w * f
  return -math.log(num / den) if num > 0 else None


def _ref_bank_loss(emb, labels, index, centres, centre_labels, nbrs, mask,
                   weights, sigma):
  """Mean loss over examples with a positive; per-example losses."""
  per, count = [], 0
  for b in range(len(emb)):
    row = index[b]
    sel = [j for j, m in zip(nbrs[row], mask[row]) if m and j != row]
    value = _ref_example_loss(emb[b], labels[b], [centres[j] for j in sel],
                              [centre_labels[j] for j in sel],
                              [weights[j] for j in sel], sigma)
    per.append(0.0 if value is None else value)
    count += value is not None
  return sum(per) / max(count, 1), np.array(per)


def _toy_bank(rng, n=24, d=5, k=6, num_classes=3, scale=1.0):
  centres = (rng.normal(size=(n, d)) * scale).astype(np.float32)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  nbrs = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False)
                   for i in range(n)]).astype(np.int32)
  mask = rng.random((n, k)) > 0.2
  bank = CentreBank(centres=jnp.asarray(centres), labels=jnp.asarray(labels),
                    neighbours=jnp.asarray(nbrs), mask=jnp.asarray(mask))
  return bank, centres, labels, nbrs, mask


_INDEX = np.array([0, 3, 5, 7, 11, 20, 22, 23], np.int32)   # batch of 8


# ----------------------------------------------------------------------------
# Loss values
# ----------------------------------------------------------------------------


def test_loss_matches_numpy_loops():
  rng = np.random.default_rng(0)
  bank, centres, labels, nbrs, mask = _toy_bank(rng)
  weights = rng.uniform(0.3, 2.0, len(labels)).astype(np.float32)
  emb = centres[_INDEX] + 0.3 * rng.normal(size=(8, 5)).astype(np.float32)
  sigma = 1.3
  loss, aux, _, _ = _run(emb, labels[_INDEX], _INDEX, bank, weights, sigma)
  ref, ref_per = _ref_bank_loss(emb, labels[_INDEX], _INDEX, centres, labels,
                                nbrs, mask, weights, sigma)
  assert ref > 0.05
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(aux["nngk_loss_per_example"], ref_per, rtol=1e-5,
                             atol=1e-6)
  # sum reduction = the paper's summed loss.
  loss_sum, _, _, _ = _run(emb, labels[_INDEX], _INDEX, bank, weights, sigma,
                           reduction="sum")
  np.testing.assert_allclose(loss_sum, ref_per.sum(), rtol=1e-5)


def test_all_other_centres_equals_exact_eq2():
  """k = N - 1 neighbours (everyone but itself) = eq. 2 over all centres."""
  rng = np.random.default_rng(1)
  n, d, sigma = 12, 4, 0.9
  centres = rng.normal(size=(n, d)).astype(np.float32)
  labels = rng.integers(0, 3, n).astype(np.int32)
  weights = rng.uniform(0.5, 1.5, n).astype(np.float32)
  nbrs = np.stack([np.delete(np.arange(n), i) for i in range(n)]).astype(
      np.int32)
  bank = CentreBank(centres=centres, labels=labels, neighbours=nbrs,
                    mask=np.ones_like(nbrs, bool))
  index = np.arange(n, dtype=np.int32)
  emb = centres + 0.2 * rng.normal(size=(n, d)).astype(np.float32)
  _, aux, _, _ = _run(emb, labels, index, bank, weights, sigma)
  for b in range(n):   # eq. 2 summed over all m training centres but b.
    num = sum(weights[i] * math.exp(-np.sum((emb[b] - centres[i])**2) /
                                    (2 * sigma**2))
              for i in range(n) if i != b and labels[i] == labels[b])
    den = sum(weights[j] * math.exp(-np.sum((emb[b] - centres[j])**2) /
                                    (2 * sigma**2))
              for j in range(n) if j != b)
    expected = -math.log(num / den) if num > 0 else 0.0
    np.testing.assert_allclose(aux["nngk_loss_per_example"][b], expected,
                               rtol=1e-5, atol=1e-6)


def test_own_centre_is_never_used():
  rng = np.random.default_rng(2)
  bank, centres, labels, nbrs, mask = _toy_bank(rng)
  # Put each row's own index into its list: the loss must ignore it.
  nbrs_self = nbrs.copy()
  nbrs_self[:, 0] = np.arange(len(labels))
  mask_self = mask.copy()
  mask_self[:, 0] = True
  bank_self = bank.replace(neighbours=jnp.asarray(nbrs_self),
                           mask=jnp.asarray(mask_self))
  bank_drop = bank.replace(neighbours=jnp.asarray(nbrs_self),
                           mask=jnp.asarray(mask_self).at[:, 0].set(False))
  emb = centres[_INDEX] + 0.1
  a, _, _, _ = _run(emb, labels[_INDEX], _INDEX, bank_self)
  b, _, _, _ = _run(emb, labels[_INDEX], _INDEX, bank_drop)
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_no_positive_examples_are_masked_and_counted():
  centres = np.array([[0., 0.], [1., 0.], [0., 1.], [5., 5.]], np.float32)
  labels = np.array([0, 1, 1, 0], np.int32)
  nbrs = np.array([[1, 2], [2, 0], [1, 3], [0, 1]], np.int32)  # row 0: no pos
  bank = CentreBank(centres=centres, labels=labels, neighbours=nbrs,
                    mask=np.ones((4, 2), bool))
  index = np.array([0, 1], np.int32)
  loss, aux, ge, gw = _run(centres[index], labels[index], index, bank)
  assert float(aux["nngk_no_positive"]) == pytest.approx(0.5)
  assert aux["nngk_loss_per_example"][0] == 0.0
  ref = _ref_example_loss(centres[1], 1, centres[[2, 0]], [1, 0], [1, 1], 1.0)
  np.testing.assert_allclose(loss, ref, rtol=1e-6)
  assert np.all(np.isfinite(ge)) and np.all(ge[0] == 0.0)
  assert np.all(np.isfinite(gw)) and gw[3] == 0.0   # centre 3 unused


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


def test_gradients_embeddings_and_weights_check_grads():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    bank, centres, labels, _, _ = _toy_bank(rng)
    bank = jax.tree.map(
        lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, bank)
    emb = jnp.asarray(centres[_INDEX] + 0.4 * rng.normal(size=(8, 5)),
                      jnp.float64)
    weights = jnp.asarray(rng.uniform(0.5, 1.5, 24), jnp.float64)
    f = jax.jit(lambda e, w: _nngk_eager(e, labels[_INDEX], _INDEX, bank, w,
                                         sigma=0.8)[0])
    check_grads(f, (emb, weights), order=1, modes=["rev"], eps=1e-4,
                atol=1e-5, rtol=1e-5)
    # The gradient is not trivially zero.
    ge, gw = jax.grad(f, argnums=(0, 1))(emb, weights)
    assert np.abs(ge).max() > 1e-3 and np.abs(gw).max() > 1e-3


def test_gradient_float32_finite_differences():
  rng = np.random.default_rng(4)
  bank, centres, labels, _, _ = _toy_bank(rng)
  emb = centres[_INDEX] + 0.3
  weights = rng.uniform(0.5, 1.5, 24).astype(np.float32)
  _, _, ge, gw = _run(emb, labels[_INDEX], _INDEX, bank, weights)
  f = lambda e, w: _run(e, labels[_INDEX], _INDEX, bank, w)[0]
  eps = 1e-2
  for b, d in [(0, 0), (2, 3), (5, 1), (7, 4)]:
    up, dn = emb.copy(), emb.copy()
    up[b, d] += eps
    dn[b, d] -= eps
    fd = (f(up, weights) - f(dn, weights)) / (2 * eps)
    np.testing.assert_allclose(ge[b, d], fd, rtol=2e-2, atol=2e-3)
  for j in np.argsort(-np.abs(gw))[:4]:
    up, dn = weights.copy(), weights.copy()
    up[j] += eps
    dn[j] -= eps
    fd = (f(emb, up) - f(emb, dn)) / (2 * eps)
    np.testing.assert_allclose(gw[j], fd, rtol=2e-2, atol=2e-3)


def test_weights_floor_and_fixed_weights():
  rng = np.random.default_rng(5)
  bank, centres, labels, _, _ = _toy_bank(rng)
  emb = centres[_INDEX]
  neg = -np.ones(len(labels), np.float32)   # below the floor everywhere
  loss, aux, _, gw = _run(emb, labels[_INDEX], _INDEX, bank, neg)
  assert np.isfinite(loss) and float(aux["nngk_weight_at_floor"]) == 1.0
  assert np.all(gw == 0.0)
  # All weights equal (floored) = all weights 1 (eq. 3 is scale invariant).
  ones, aux1, _, _ = _run(emb, labels[_INDEX], _INDEX, bank, None)
  np.testing.assert_allclose(loss, ones, rtol=1e-5)
  assert float(aux1["nngk_weight_at_floor"]) == 0.0


# ----------------------------------------------------------------------------
# Stability
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale,sigma", [(1e6, 1.0), (1.0, 1e-4), (1e3, 1e-6),
                                         (1e-3, 1e4), (1e8, 1e-8)])
def test_stable_for_huge_distances_and_tiny_sigma(scale, sigma):
  rng = np.random.default_rng(6)
  bank, centres, labels, _, _ = _toy_bank(rng, scale=scale)
  emb = centres[_INDEX] + np.float32(scale * 0.5)
  weights = rng.uniform(0.5, 2.0, len(labels)).astype(np.float32)
  loss, _, ge, gw = _run(emb, labels[_INDEX], _INDEX, bank, weights, sigma)
  assert np.isfinite(loss) and loss >= 0
  assert np.all(np.isfinite(ge)) and np.all(np.isfinite(gw))


def test_far_examples_match_reference_by_shift():
  """All candidates far away (kernels underflow in float32): the loss still
  equals the exact value, since eq. 3 is shift invariant."""
  centres = np.array([[100., 0.], [101., 0.], [0., 0.]], np.float32)
  labels = np.array([0, 1, 1], np.int32)
  bank = CentreBank(centres=centres, labels=labels,
                    neighbours=np.array([[1, 2], [0, 2], [0, 1]], np.int32),
                    mask=np.ones((3, 2), bool))
  index = np.array([2], np.int32)
  loss, _, _, _ = _run(centres[index], labels[index], index, bank)
  # d² = 10000, 10201: Pr(class 1) = e^{-5100.5} / (e^{-5000} + e^{-5100.5}).
  np.testing.assert_allclose(loss, np.logaddexp(0.0, 100.5), rtol=1e-6)


def test_bad_sigma_raises():
  bank, centres, labels, _, _ = _toy_bank(np.random.default_rng(0))
  with pytest.raises(ValueError, match="sigma"):
    _nngk_eager(centres[:2], labels[:2], np.arange(2), bank, sigma=0.0)
  with pytest.raises(ValueError, match="reduction"):
    _nngk_eager(centres[:2], labels[:2], np.arange(2), bank, sigma=1.0,
                reduction="max")


# ----------------------------------------------------------------------------
# Bank refresh (FAISS)
# ----------------------------------------------------------------------------


def test_flat_bank_is_exact_and_excludes_self():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(300, 8)).astype(np.float32)
  y = rng.integers(0, 5, 300)
  bank, dist = nngk_method.build_bank(x, y, num_neighbours=10,
                                      index_type="flat")
  assert bank.neighbours.shape == (300, 10) and bank.mask.all()
  assert not np.any(bank.neighbours == np.arange(300)[:, None])
  d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  exact = np.argsort(d2, axis=1)[:, :10]
  assert np.array_equal(np.sort(bank.neighbours, 1), np.sort(exact, 1))
  assert np.all(np.diff(dist, axis=1) >= -1e-4)   # nearest first


def test_hnsw_bank_recall():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(2000, 16)).astype(np.float32)
  y = rng.integers(0, 10, 2000)
  flat, _ = nngk_method.build_bank(x, y, num_neighbours=20)
  hnsw, _ = nngk_method.build_bank(x, y, num_neighbours=20, index_type="hnsw")
  assert not np.any(hnsw.neighbours[hnsw.mask] ==
                    np.nonzero(hnsw.mask)[0])
  recall = np.mean([len(set(a) & set(b)) / 20 for a, b in
                    zip(flat.neighbours, hnsw.neighbours)])
  assert recall > 0.9


def test_bank_pads_and_masks_when_k_exceeds_n():
  x = np.eye(4, dtype=np.float32)
  bank, _ = nngk_method.build_bank(x, np.arange(4), num_neighbours=6)
  assert bank.neighbours.shape == (4, 6)
  assert np.all(bank.mask.sum(1) == 3)
  assert np.all(bank.neighbours[~bank.mask] == 0)


def _dataset(labels, num_classes=None):
  labels = np.asarray(labels, np.int32)
  c = num_classes or int(labels.max()) + 1
  return Dataset(images=np.zeros((len(labels), 1, 1, 1), np.uint8),
                 labels=labels, class_names=tuple(str(i) for i in range(c)))


def _config(**method):
  config = ml_collections.ConfigDict()
  config.method = ml_collections.ConfigDict(dict(name="nngk", **method))
  return config


def _settings(**method) -> nngk_method.Config:
  return nngk_method.METHOD.settings(_config(**method))


def test_a_feature_the_network_lacks_is_refused_before_training():
  """``method.feature`` must name a network output: the centre bank's shape
  is read from it when the state is made, before anything compiles."""
  info = ModelInfo(4, 200, 6, feature_dims={"embedding": 6, "pooled": 32})
  with pytest.raises(ValueError, match=r"config.method.feature = 'fc7'.*pooled"):
    nngk_method.METHOD.init_state(_settings(feature="fc7"), info)
  state = nngk_method.METHOD.init_state(_settings(feature="pooled"), info)
  assert state.device.centres.shape == (200, 32)


def test_refresh_static_shapes_and_logs_time():
  rng = np.random.default_rng(9)
  train = _dataset(rng.integers(0, 4, 200))
  lines = []
  feats = {"x": rng.normal(size=(200, 6)).astype(np.float32)}
  ctx = HostContext(config=None, train=train,
                    embed=lambda layer="embedding", dataset=None, **kw: feats["x"],
                    params={}, epoch=0, step=0, seed=0, log=lines.append)
  cfg = _settings(num_neighbours=15, index_type="hnsw", sigma=2.0)
  method = nngk_method.METHOD
  assert method.refresh_every(cfg) == 10
  template = method.init_state(cfg, ModelInfo(4, 200, 6))   # zeros, no FAISS
  assert not lines and not np.asarray(template.device.mask).any()
  bank0 = method.refresh(cfg, ctx, template).device
  feats["x"] = rng.normal(size=(200, 6)).astype(np.float32)
  bank1 = method.refresh(cfg, ctx, base.MethodState(device=bank0)).device
  for a, b, t in zip(jax.tree.leaves(bank0), jax.tree.leaves(bank1),
                     jax.tree.leaves(template.device)):
    assert a.shape == b.shape == t.shape and a.dtype == b.dtype == t.dtype
  assert not np.array_equal(bank0.neighbours, bank1.neighbours)
  assert len(lines) == 2 and "embed" in lines[1] and "faiss hnsw" in lines[1]
  feats["x"] = feats["x"][:150]
  with pytest.raises(ValueError):
    method.refresh(cfg, ctx, base.MethodState(device=bank1))


# ----------------------------------------------------------------------------
# Classifier (eq. 3)
# ----------------------------------------------------------------------------


def test_classifier_on_gaussian_blobs():
  rng = np.random.default_rng(10)
  means = rng.normal(size=(5, 16)) * 10
  ytr, yte = rng.integers(0, 5, 500), rng.integers(0, 5, 200)
  xtr = (means[ytr] + rng.normal(size=(500, 16))).astype(np.float32)
  xte = (means[yte] + rng.normal(size=(200, 16))).astype(np.float32)
  pred = nngk_method.predict(xte, xtr, ytr, sigma=2.0, num_neighbours=50)
  assert nngk_method.accuracy(pred, yte) >= 0.99
  pred = nngk_method.predict(xte, xtr, ytr, sigma=2.0, num_neighbours=50,
                             index_type="hnsw")
  assert nngk_method.accuracy(pred, yte) >= 0.99


def test_class_log_probs_match_loop_reference():
  rng = np.random.default_rng(11)
  xtr = rng.normal(size=(40, 3)).astype(np.float32)
  ytr = rng.integers(0, 3, 40)
  w = rng.uniform(0.5, 2.0, 40)
  xq = rng.normal(size=(5, 3)).astype(np.float32)
  logp = nngk_method.class_log_probs(xq, xtr, ytr, w, sigma=0.7,
                                     num_neighbours=10, num_classes=3)
  for q in range(5):
    order = np.argsort(((xtr - xq[q]) ** 2).sum(1))[:10]
    for c in range(3):
      p = _ref_example_loss(xq[q], c, xtr[order], ytr[order], w[order], 0.7)
      expected = -np.inf if p is None else -p
      np.testing.assert_allclose(logp[q, c], expected, rtol=1e-4, atol=1e-5)
  # Far queries (kernels underflow) still give a distribution.
  far = nngk_method.class_log_probs(xq + 1e4, xtr, ytr, w, sigma=0.1,
                                    num_neighbours=10, num_classes=3)
  np.testing.assert_allclose(np.exp(far).sum(1), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------
# Method
# ----------------------------------------------------------------------------


def test_make_loss_runs_under_jit_and_learns_weights():
  n, d, k = 30, 8, 7
  rng = np.random.default_rng(12)
  bank, centres, labels, _, _ = _toy_bank(rng, n=n, d=d, k=k)
  cfg = _settings(sigma=1.5, num_neighbours=k)
  method = nngk_method.METHOD
  params = method.init_params(cfg, jax.random.key(0), ModelInfo(3, n, d))
  assert params["weights"].shape == (n,) and np.all(params["weights"] == 1.0)
  index = jnp.array([0, 5, 9, 29], jnp.int32)
  batch = {"images": jnp.zeros((4, 2, 2, 3)), "labels": jnp.asarray(labels)[index],
           "index": index}
  outputs = {"embedding": jnp.asarray(centres)[index] + 0.1,
             "pooled": jnp.zeros((4, 5))}
  step = jax.jit(jax.value_and_grad(
      lambda *a: method.loss(cfg, *a), has_aux=True))
  (loss, aux), grads = step(params, outputs, batch, bank, jax.random.key(1))
  assert np.isfinite(loss) and "nngk_no_positive" in aux
  assert np.abs(grads["weights"]).max() > 0
  # learn_weights=False: no parameters, w = 1.
  fixed = _settings(sigma=1.5, learn_weights=False)
  assert method.init_params(fixed, jax.random.key(0), ModelInfo(3, n, d)) == {}
  loss_fixed, _ = jax.jit(lambda *a: method.loss(fixed, *a))(
      {}, outputs, batch, bank, jax.random.key(1))
  np.testing.assert_allclose(loss_fixed, loss, rtol=1e-6)


def test_evaluate_classification_and_zero_shot():
  rng = np.random.default_rng(13)
  means = rng.normal(size=(3, 4)) * 8
  ytr, yte = rng.integers(0, 3, 90), rng.integers(0, 3, 30)
  xtr = (means[ytr] + rng.normal(size=(90, 4))).astype(np.float32)
  xte = (means[yte] + rng.normal(size=(30, 4))).astype(np.float32)
  train = _dataset(ytr, 3)

  def ctx(test, seen):
    return base.EvalContext(
        config=None, train=train,
        embed=lambda layer="embedding", dataset=None: xtr,
        params={"weights": np.ones(90, np.float32)}, epoch=5, step=50, seed=0,
        log=lambda s: None, test=test, test_features={"embedding": xte},
        method_config=_settings(sigma=2.0, num_neighbours=20),
        seen_classes=seen)

  names = evaluators.names(ml_collections.ConfigDict({"evaluators": "auto"}),
                           nngk_method.METHOD)
  assert names == ("nngk_classifier", "nearest_neighbour")
  out = evaluators.run_evaluators(("nngk_classifier",), ctx(_dataset(yte, 3), True))
  assert out["nngk_accuracy"] >= 0.95
  zero_shot = Dataset(images=np.zeros((30, 1, 1, 1), np.uint8),
                      labels=yte.astype(np.int32),
                      class_names=("a", "b", "c"))
  assert evaluators.run_evaluators(names, ctx(zero_shot, False)) == {}


def test_bad_config_raises():
  with pytest.raises(ValueError, match="index_type"):
    _settings(index_type="lsh")
  with pytest.raises(ValueError, match="sigma"):
    _settings(sigma=-1.0)
  with pytest.raises(ValueError, match="num_neighbours"):
    _settings(num_neighbours=0)
  with pytest.raises(ValueError, match=r"config\.method\.sigmaa is not a setting"):
    _settings(sigmaa=1.0)
  with pytest.raises(TypeError, match=r"config\.method\.num_neighbours"):
    _settings(num_neighbours="100")


def test_the_bank_is_embedded_in_batches_of_the_training_batch_size():
  """bank_bn='batch' embeds the centres in chunks of the training batch's
  size: P x K for both P x K samplers (proportional_pk included)."""
  for name, want in (("pk", 12), ("proportional_pk", 12), ("random", 32)):
    sampler = ml_collections.ConfigDict({
        "name": name, "classes_per_batch": 3, "images_per_class": 4,
        "batch_size": 32})
    config = ml_collections.ConfigDict({"sampler": sampler})
    assert nngk_method._batch_size(config) == want, name  # pylint: disable=protected-access


@pytest.mark.parametrize("batch", [1, 4, 7])
def test_blocked_bank_distances_match_numpy_with_gradients(batch):
  """The blocked custom-VJP distances to the stored centres: values and the
  embeddings' gradient against NumPy, any batch size (padded blocks)."""
  from dmlx.losses._bank_distances import squared_distances_to_bank  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(batch)
  x = rng.randn(batch, 5)
  centres = rng.randn(11, 5)
  nbrs = rng.randint(0, 11, size=(batch, 6)).astype(np.int32)
  g = rng.randn(batch, 6)
  want = np.sum((x[:, None, :] - centres[nbrs]) ** 2, axis=-1)
  want_dx = 2 * np.sum(g[..., None] * (x[:, None, :] - centres[nbrs]), axis=1)
  xj, cj = jnp.asarray(x, jnp.float32), jnp.asarray(centres, jnp.float32)
  got, vjp = jax.vjp(lambda x: squared_distances_to_bank(x, cj, nbrs), xj)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vjp(jnp.asarray(g, jnp.float32))[0], want_dx,
                             rtol=1e-5, atol=1e-5)
  check_grads(lambda x: squared_distances_to_bank(x, cj, nbrs), (xj,),
              order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)
