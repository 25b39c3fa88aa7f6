"""Tests of Magnet loss (Rippel et al., 2016): eq. 5 against a NumPy loop, its
gradients, the eq. 7 triplet reduction, the cluster index, neighbourhood
sampling, loss caching and the kNC evaluation."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.test_util import check_grads

from dmlx.data.base import make_dataset
from dmlx.losses._magnet import magnet_loss
from dmlx.methods import base
from dmlx.methods import magnet
from dmlx.methods.base import HostContext
from dmlx.methods.base import ModelInfo
from dmlx.train import evaluators


# ----------------------------------------------------------------------------
# NumPy reference of eq. 5, written as plain loops.
# ----------------------------------------------------------------------------


def reference_magnet(r, labels, cluster_ids, alpha=1.0, variance_standardise=True,
                     leave_one_out=False):
  r = np.asarray(r, np.float64)
  b = len(r)
  clusters = sorted(set(int(c) for c in cluster_ids))
  mean, count, klass = {}, {}, {}
  for c in clusters:
    rows = [i for i in range(b) if cluster_ids[i] == c]
    mean[c] = sum(r[i] for i in rows) / len(rows)
    count[c] = len(rows)
    klass[c] = int(labels[rows[0]])
  sigma2 = sum(np.sum((r[i] - mean[int(cluster_ids[i])]) ** 2)
               for i in range(b)) / max(b - 1, 1)
  scale = 1.0 / (2.0 * sigma2) if variance_standardise else 1.0
  per_example = np.zeros(b)
  defined = 0
  for i in range(b):
    c = int(cluster_ids[i])
    if leave_one_out:
      if count[c] < 2:
        continue
      own = (count[c] * mean[c] - r[i]) / (count[c] - 1)
    else:
      own = mean[c]
    impostors = [m for m in clusters if klass[m] != labels[i]]
    if not impostors:
      continue
    numerator = -scale * np.sum((r[i] - own) ** 2) - alpha
    logits = [-scale * np.sum((r[i] - mean[m]) ** 2) for m in impostors]
    top = max(logits)
    log_denominator = top + math.log(sum(math.exp(a - top) for a in logits))
    per_example[i] = max(0.0, -(numerator - log_denominator))
    defined += 1
  return per_example.sum() / max(defined, 1), per_example, sigma2


def _neighbourhood_batch(seed=0, m=4, d=3, dim=5, spread=1.0):
  """M clusters × D examples; clusters 0 and 1 share class 0."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(m, dim)) * spread
  r = (centres[:, None, :] + 0.5 * rng.normal(size=(m, d, dim))).reshape(-1, dim)
  cluster_ids = np.repeat(np.array([7, 3, 12, 40][:m]), d)
  labels = np.repeat(np.array([0, 0, 1, 2][:m]), d)
  return r.astype(np.float32), labels.astype(np.int32), cluster_ids.astype(np.int32)


@pytest.mark.parametrize("variance_standardise", [True, False])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_loss_matches_numpy_reference(variance_standardise, leave_one_out):
  r, labels, ids = _neighbourhood_batch(spread=0.6)
  loss, aux = jax.jit(lambda *a: magnet_loss(
      *a, alpha=0.3, variance_standardise=variance_standardise,
      leave_one_out_means=leave_one_out))(r, labels, ids)
  ref, ref_per_example, ref_sigma2 = reference_magnet(
      r, labels, ids, 0.3, variance_standardise, leave_one_out)
  assert ref > 0
  np.testing.assert_allclose(loss, ref, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(aux["per_example_loss"], ref_per_example,
                             rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(aux["sigma2"], ref_sigma2, rtol=1e-5)
  assert int(aux["num_clusters"]) == 4


def test_loss_general_batch_irregular_clusters():
  # Unsorted, interleaved cluster ids with sizes 1, 2, 4 and 3 examples.
  rng = np.random.default_rng(3)
  ids = np.array([5, 9, 5, 2, 9, 9, 9, 30, 2, 2], np.int32)
  cls = {5: 0, 9: 1, 2: 0, 30: 2}
  labels = np.array([cls[i] for i in ids], np.int32)
  r = rng.normal(size=(len(ids), 6)).astype(np.float32)
  for leave_one_out in (False, True):
    loss, aux = jax.jit(functools.partial(
        magnet_loss, alpha=1.0, leave_one_out_means=leave_one_out))(
            r, labels, ids)
    ref, ref_per_example, _ = reference_magnet(r, labels, ids, 1.0, True,
                                               leave_one_out)
    np.testing.assert_allclose(loss, ref, rtol=2e-5)
    np.testing.assert_allclose(aux["per_example_loss"], ref_per_example,
                               rtol=2e-5, atol=1e-5)
  assert int(aux["num_clusters"]) == 4


@pytest.mark.parametrize("variance_standardise", [True, False])
def test_gradients_match_finite_differences(variance_standardise):
  r, labels, ids = _neighbourhood_batch(seed=1, spread=0.5)
  with jax.enable_x64(True):
    r64 = jnp.asarray(r, jnp.float64)
    f = jax.jit(lambda x: magnet_loss(
        x, labels, ids, alpha=0.5,
        variance_standardise=variance_standardise)[0])
    assert float(f(r64)) > 0
    check_grads(f, (r64,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)
    # And against the NumPy loop reference by central differences.
    grad = np.asarray(jax.grad(f)(r64))
  eps = 1e-6
  r64 = r.astype(np.float64)
  for i, j in [(0, 0), (4, 2), (11, 4), (7, 1)]:
    plus, minus = r64.copy(), r64.copy()
    plus[i, j] += eps
    minus[i, j] -= eps
    numeric = (reference_magnet(plus, labels, ids, 0.5, variance_standardise)[0]
               - reference_magnet(minus, labels, ids, 0.5,
                                  variance_standardise)[0]) / (2 * eps)
    np.testing.assert_allclose(grad[i, j], numeric, rtol=1e-4, atol=1e-7)


def test_reduces_to_symmetrised_triplet_loss_eq7():
  # Section 3.4: M = 2, seed cluster with D = 2 samples, impostor cluster with
  # one, no variance normalisation.
  rng = np.random.default_rng(0)
  alpha = 0.7
  labels = np.array([0, 0, 1], np.int32)
  ids = np.array([0, 0, 1], np.int32)
  loo_loss = jax.jit(functools.partial(
      magnet_loss, alpha=alpha, variance_standardise=False,
      leave_one_out_means=True))
  mean_loss = jax.jit(functools.partial(
      magnet_loss, alpha=alpha, variance_standardise=False))
  for _ in range(5):
    r = rng.normal(size=(3, 4)).astype(np.float32)
    r1, r2, neg = r.astype(np.float64)
    sq = lambda a, b: float(np.sum((a - b) ** 2))
    eq7 = [max(0.0, sq(r1, r2) - sq(r1, neg) + alpha),
           max(0.0, sq(r2, r1) - sq(r2, neg) + alpha)]
    # Exact with each positive's cluster estimated without itself: the mean
    # of the other positive. The lone impostor has no leave-one-out mean.
    loss, aux = loo_loss(r, labels, ids)
    np.testing.assert_allclose(aux["per_example_loss"], eq7 + [0.0],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, sum(eq7) / 2, rtol=1e-5, atol=1e-5)
    # With eq. 5's plain batch mean the positive distance is ‖r1 − r2‖²/4.
    _, aux = mean_loss(r, labels, ids)
    quarter = [max(0.0, sq(r1, r2) / 4 - sq(r1, neg) + alpha),
               max(0.0, sq(r2, r1) / 4 - sq(r2, neg) + alpha)]
    np.testing.assert_allclose(aux["per_example_loss"][:2], quarter,
                               rtol=1e-5, atol=1e-5)


def test_degenerate_batches_are_finite():
  r = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
  value_and_grad = jax.jit(jax.value_and_grad(magnet_loss, has_aux=True))
  # One class only: no impostors -> loss 0, zero gradients, no NaN.
  labels = np.zeros(6, np.int32)
  ids = np.array([0, 0, 1, 1, 2, 2], np.int32)
  (loss, _), grad = value_and_grad(r, labels, ids)
  assert float(loss) == 0.0 and np.all(np.isfinite(grad))
  # Far-apart clusters, tiny variance: huge exponents stay finite.
  far = np.repeat(np.eye(3, dtype=np.float32) * 1e3, 2, axis=0)
  far += 1e-3 * r
  labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
  (loss, _), grad = value_and_grad(
      jnp.asarray(far), labels, ids)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
  # Every cluster a singleton (sigma2 = 0 clamps to eps).
  (loss, _), grad = value_and_grad(
      r, labels, np.arange(6, dtype=np.int32))
  assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))


def test_sharded_batch_equals_single_device():
  # Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 to exercise.
  n = max(d for d in (1, 2, 3, 4, 6) if d <= jax.device_count())
  if n < 2:
    pytest.skip("needs several (simulated) devices")
  r, labels, ids = _neighbourhood_batch(spread=0.6)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:n]), ("data",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  f = jax.jit(jax.value_and_grad(lambda x, y, c: magnet_loss(x, y, c)[0]))
  loss, grad = f(r, labels, ids)
  sharded = [jax.device_put(a, shard) for a in (r, labels, ids)]
  loss_s, grad_s = f(*sharded)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_s, grad, rtol=1e-5, atol=1e-7)


def test_bad_inputs_raise():
  r = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match="cluster_ids"):
    magnet_loss(r, np.zeros(4, np.int32), np.zeros(3, np.int32))
  with pytest.raises(TypeError, match="labels"):
    magnet_loss(r, np.zeros(4, np.float32), np.zeros(4, np.int32))


# ----------------------------------------------------------------------------
# Cluster index, sampler and loss caching.
# ----------------------------------------------------------------------------


def _blobs(counts=(30, 30, 30, 2), modes=3, dim=8, seed=0):
  """Each class is a mixture of ``modes`` well-separated blobs."""
  rng = np.random.default_rng(seed)
  x, y = [], []
  for c, n in enumerate(counts):
    centres = rng.normal(size=(modes, dim)) * 4.0
    pick = rng.integers(modes, size=n)
    x.append(centres[pick] + 0.1 * rng.normal(size=(n, dim)))
    y.append(np.full(n, c))
  return np.concatenate(x).astype(np.float32), np.concatenate(y).astype(np.int32)


def test_cluster_index_pads_small_classes():
  x, y = _blobs()
  K = 4
  index = magnet.build_cluster_index(x, y, 4, K, seed=0)
  assert index.means.shape == (16, 8) and index.assignments.shape == (92,)
  np.testing.assert_array_equal(index.cluster_class, np.repeat(np.arange(4), K))
  # The 2-example class has exactly 2 valid clusters, one example each.
  np.testing.assert_array_equal(index.valid[12:], [True, True, False, False])
  np.testing.assert_array_equal(index.member_count[12:], [1, 1, 0, 0])
  assert index.valid[:12].all()
  for n in range(len(y)):  # every example in a cluster of its own class
    assert index.cluster_class[index.assignments[n]] == y[n]
    assert index.valid[index.assignments[n]]
  for j in np.flatnonzero(index.valid):  # means are member means (eq. 3)
    rows = index.members[index.member_start[j]:
                         index.member_start[j] + index.member_count[j]]
    np.testing.assert_array_equal(np.sort(rows),
                                  np.flatnonzero(index.assignments == j))
    np.testing.assert_allclose(index.means[j], x[rows].mean(0), atol=1e-5)
  residual = x - index.means[index.assignments]
  np.testing.assert_allclose(index.index_sigma2,
                             np.sum(residual ** 2) / (len(x) - 1), rtol=1e-5)


def test_sampler_neighbourhood_composition():
  x, y = _blobs()
  index = magnet.build_cluster_index(x, y, 4, 4, seed=0)
  M, D = 4, 3
  sampler = magnet.NeighbourhoodSampler(len(y), M, D, seed=5)
  assert sampler.batch_size == 12 and sampler.steps_per_epoch == 8
  means = np.asarray(index.means)
  for step in range(20):
    rows = sampler.batch(step, index)
    assert rows.shape == (M * D,)
    clusters = index.assignments[rows].reshape(M, D)
    assert (clusters == clusters[:, :1]).all()  # D examples from each cluster
    ids = clusters[:, 0]
    assert len(set(ids.tolist())) == M
    seed, impostors = ids[0], ids[1:]
    seed_class = index.cluster_class[seed]
    assert (index.cluster_class[impostors] != seed_class).all()
    # They are the M-1 nearest valid clusters of other classes (brute force).
    others = [j for j in range(16) if index.valid[j] and
              index.cluster_class[j] != seed_class]
    dist = {j: float(np.sum((means[j] - means[seed]) ** 2)) for j in others}
    expected = sorted(others, key=lambda j: dist[j])[:M - 1]
    assert sorted(impostors.tolist()) == sorted(expected)
    # No repeats inside a cluster that has at least D examples.
    for m in range(M):
      if index.member_count[ids[m]] >= D:
        assert len(set(rows[m * D:(m + 1) * D].tolist())) == D
  np.testing.assert_array_equal(sampler.batch(19, index),
                                sampler.batch(19, index))
  assert not np.array_equal(sampler.batch(19, index),
                            sampler.batch(20, index))


def _empty_cache(index):
  n = len(index.assignments)
  return magnet.LossCache(assignments=np.asarray(index.assignments),
                          example_loss=np.zeros(n, np.float32),
                          example_seen=np.zeros(n, bool),
                          sigma2_avg=np.asarray(0.0, np.float32),
                          sigma2_weight=np.asarray(0.0, np.float32))


def _cache(index, rows, losses, sigma2, cache=None):
  """One step's losses written into the device cache (``update_state``,
  jitted as in the step) and synchronised into the index (``sync``)."""
  cfg = magnet.Config()
  cache = _empty_cache(index) if cache is None else cache
  cache = jax.jit(lambda c, a, b: magnet.update_state(cfg, c, a, b))(
      cache, {"per_example_loss": jnp.asarray(losses, jnp.float32),
              "sigma2": jnp.float32(sigma2)},
      {"index": jnp.asarray(rows, jnp.int32)})
  cache = jax.device_get(cache)
  return cache, magnet.sync(cfg, index, cache)


def test_sampler_small_cluster_with_replacement():
  x, y = _blobs()
  index = magnet.build_cluster_index(x, y, 4, 4, seed=0)
  # Force the 1-example cluster 12 to be the seed.
  losses = np.zeros(len(y), np.float32)
  losses[index.assignments == 12] = 1.0
  _, index = _cache(index, np.arange(len(y)), losses, 1.0)
  rows = magnet.NeighbourhoodSampler(len(y), 3, 4).batch(0, index)
  np.testing.assert_array_equal(rows[:4], np.flatnonzero(index.assignments == 12)
                                .repeat(4))


def test_cached_losses_change_seed_probabilities():
  x, y = _blobs()
  index = magnet.build_cluster_index(x, y, 4, 4, seed=0)
  p0 = magnet.seed_probabilities(index)
  valid = np.asarray(index.valid)
  np.testing.assert_allclose(p0[valid], 1.0 / valid.sum())
  assert (p0[~valid] == 0).all()
  # Cache a batch: cluster 5's examples have loss 3, cluster 0's loss 1.
  rows = np.concatenate([np.flatnonzero(index.assignments == 5)[:2],
                         np.flatnonzero(index.assignments == 0)[:2]])
  cache, new = _cache(index, rows, np.array([3., 3., 1., 1.]), 0.5)
  assert cache.example_loss.shape == index.assignments.shape
  assert new.cluster_loss.shape == index.cluster_loss.shape
  np.testing.assert_allclose(new.cluster_loss[[5, 0]], [3.0, 1.0])
  # Unseen valid clusters get the mean seen loss (2.0); invalid ones 0.
  unseen = valid.copy()
  unseen[[0, 5]] = False
  np.testing.assert_allclose(new.cluster_loss[unseen], 2.0)
  p1 = magnet.seed_probabilities(new)
  np.testing.assert_allclose(p1[5] / p1[0], 3.0)
  assert not np.allclose(p0, p1)
  # With all other clusters at zero loss, every seed is cluster 5.
  losses = np.where(index.assignments == 5, 2.0, 0.0)
  _, only5 = _cache(index, np.arange(len(y)), losses, 0.5)
  sampler = magnet.NeighbourhoodSampler(len(y), 3, 2, seed=1)
  for step in range(10):
    assert sampler.clusters(step, only5)[0] == 5
  # The sigma2 running average is bias-corrected.
  np.testing.assert_allclose(magnet.running_sigma2(cache, new), 0.5, rtol=1e-6)
  assert magnet.running_sigma2(_empty_cache(index), index) == pytest.approx(
      float(index.index_sigma2))


def test_repeated_rows_cache_the_mean_of_their_losses():
  x, y = _blobs()
  index = magnet.build_cluster_index(x, y, 4, 4, seed=0)
  cache, _ = _cache(index, np.array([3, 3, 7]), np.array([1.0, 2.0, 5.0]), 1.0)
  np.testing.assert_allclose(cache.example_loss[[3, 7]], [1.5, 5.0])
  assert cache.example_seen.sum() == 2


# ----------------------------------------------------------------------------
# The Method end to end with a fake host context.
# ----------------------------------------------------------------------------


def _context(x, y, config, class_names=None):
  images = np.zeros((len(y), 2, 2, 1), np.uint8)
  train = make_dataset(images, y, class_names=class_names)
  return HostContext(config=config, train=train, embed=lambda *a, **k: x,
                     params={}, epoch=0, step=0, seed=3, log=lambda s: None)


def _signature(tree):
  return jax.tree.map(lambda a: (np.shape(a), np.asarray(a).dtype), tree)


def test_method_end_to_end():
  x, y = _blobs(counts=(30, 30, 30, 30), modes=2)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  config = ml_collections.ConfigDict(
      {"seed": 0, "method": {"name": "magnet", "M": 3, "D": 4, "K": 2,
                             "alpha": 1.0, "L": 8}})
  method = magnet.METHOD
  cfg = method.settings(config)
  ctx = _context(x, y, config)
  template = method.init_state(cfg, ModelInfo(4, len(y), x.shape[1]))
  state = method.refresh(cfg, ctx, template)
  assert _signature(state) == _signature(template)
  sampler = method.samplers(cfg, ctx, state)["train"]
  step_fn = jax.jit(lambda emb, batch, s: method.loss(cfg, {}, {"embedding": emb},
                                                      batch, s, None))
  update = jax.jit(lambda s, a, b: method.update_state(cfg, s, a, b))
  for step in range(3):
    rows = sampler.batch(step, state.host)
    batch = {"labels": y[rows], "index": rows}
    loss, aux = step_fn(x[rows], batch, state.device)
    ref, _, _ = reference_magnet(x[rows], y[rows], state.device.assignments[rows])
    np.testing.assert_allclose(loss, ref, rtol=1e-4, atol=1e-6)
    device = jax.device_get(update(state.device, aux, batch))
    assert _signature(device) == _signature(state.device)  # no recompilation
    state = base.MethodState(device=device,
                             host=method.sync(cfg, state.host, device))
  assert state.device.example_seen.sum() > 0
  assert float(state.device.sigma2_weight) > 0
  refreshed = method.refresh(cfg, ctx, state)
  assert _signature(refreshed) == _signature(state)
  np.testing.assert_array_equal(refreshed.device.example_loss,
                                state.device.example_loss)
  assert (magnet.running_sigma2(refreshed.device, refreshed.host) ==
          magnet.running_sigma2(state.device, state.host))

  def eval_ctx(test, seen):
    return base.EvalContext(
        config=config, train=ctx.train, embed=ctx.embed, params={}, epoch=1,
        step=3, seed=3, log=ctx.log, test=test, test_features={"embedding": x},
        method_config=cfg, state=state, seen_classes=seen)

  names = evaluators.names(ml_collections.ConfigDict({"evaluators": "auto"}),
                           method)
  metrics = evaluators.run_evaluators(names, eval_ctx(ctx.train, True))
  assert set(metrics) == {"knc_accuracy", "knn_accuracy", "1nn_accuracy"}
  assert metrics["knc_accuracy"] > 0.95 and metrics["knn_accuracy"] > 0.95
  zero_shot = _context(x, y, config, class_names=("a", "b", "c", "d")).train
  assert evaluators.run_evaluators(names, eval_ctx(zero_shot, False)) == {}


def test_knc_soft_vote():
  # Query near two clusters of class 1 at distance 1, one of class 0 at 0.5.
  dist = np.array([[0.5, 1.0, 1.0]])
  classes = np.array([[0, 1, 1]])
  # Small sigma: nearest wins; large sigma: the two class-1 clusters win.
  assert magnet.soft_vote(dist, classes, 0.01, 2)[0] == 0
  assert magnet.soft_vote(dist, classes, 10.0, 2)[0] == 1
  assert magnet.soft_vote(np.array([[0.1, np.inf]]), np.array([[1, -1]]),
                          1.0, 3)[0] == 1


def _settings(**method):
  return magnet.METHOD.settings(ml_collections.ConfigDict(
      {"seed": 0, "method": {"name": "magnet", **method}}))


def test_bad_config_raises():
  with pytest.raises(ValueError, match="M"):
    _settings(M=1)
  with pytest.raises(ValueError, match="alpha|D"):
    _settings(D=0)
  with pytest.raises(ValueError, match=r"config\.method\.knn is not a setting"):
    _settings(knn=3)
  x, y = _blobs(counts=(10, 10), modes=1)
  cfg = _settings(M=4, K=2)
  config = ml_collections.ConfigDict({"seed": 0})
  ctx = _context(x, y, config)
  state = magnet.METHOD.refresh(
      cfg, ctx, magnet.METHOD.init_state(cfg, ModelInfo(2, len(y), x.shape[1])))
  with pytest.raises(ValueError, match="M=4"):
    magnet.METHOD.samplers(cfg, ctx, state)
