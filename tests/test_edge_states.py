"""Edge states of the seed methods' losses and host refresh steps.

A reliability drill for NNGK, Magnet, MIC and DML-DA: at the edges of their
states (underflowing kernels, missing positives, empty / single-example
clusters, classes smaller than K, fewer examples than clusters, singleton
classes, negative target densities) each loss gives a finite value and finite
gradients where a sensible value exists, and each host step either copes or
fails before training with a ValueError that names the bad value and what to
change. Inputs are built as in ``test_nngk.py``, ``test_magnet.py``,
``test_mic.py`` and ``test_dmlda.py``; every jitted function is compiled once
per shape (eager dispatch is slow on the shared CPU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dmlx.data.base import make_dataset
from dmlx.losses import _density
from dmlx.losses._magnet import magnet_loss
from dmlx.losses._nngk import CentreBank
from dmlx.losses._nngk import nngk
from dmlx.methods import base
from dmlx.methods import dmlda
from dmlx.methods import magnet
from dmlx.methods import mic
from dmlx.methods import mic_clustering
from dmlx.methods import nngk as nngk_method
from dmlx.methods.base import HostContext
from dmlx.methods.base import ModelInfo


def _finite(*trees) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(leaf))))
             for tree in trees for leaf in jax.tree.leaves(tree))


def _context(x, y, config, embed=None):
  """A host context over a training set of labels ``y`` whose embedding (any
  layer) is ``x`` (as ``test_magnet._context``)."""
  images = np.zeros((len(y), 2, 2, 1), np.uint8)
  return HostContext(config=config, train=make_dataset(images, y),
                     embed=embed or (lambda *a, **k: x), params={}, epoch=0,
                     step=0, seed=3, log=lambda s: None)


# ----------------------------------------------------------------------------
# NNGK: far centres (every kernel underflows), examples without a positive.
# ----------------------------------------------------------------------------

_N, _DIM, _K = 10, 3, 4           # one shape set: one compile for all cases


def _nngk_fn(emb, weights, labels, index, bank, sigma):
  return nngk(emb, labels, index, bank, weights, sigma=sigma, reduction="mean")


_nngk_grad = jax.jit(jax.value_and_grad(_nngk_fn, argnums=(0, 1),
                                        has_aux=True))


def _nngk_run(emb, labels, index, bank, weights, sigma):
  (value, aux), (g_emb, g_w) = _nngk_grad(
      jnp.asarray(emb, jnp.float32), jnp.asarray(weights, jnp.float32),
      jnp.asarray(labels, jnp.int32), jnp.asarray(index, jnp.int32), bank,
      jnp.float32(sigma))
  return float(value), aux, np.asarray(g_emb), np.asarray(g_w)


def _bank(centres, labels, nbrs):
  return CentreBank(centres=jnp.asarray(centres, jnp.float32),
                    labels=jnp.asarray(labels, jnp.int32),
                    neighbours=jnp.asarray(nbrs, jnp.int32),
                    mask=jnp.ones(np.shape(nbrs), bool))


def _nngk_reference(emb, labels, index, centres, centre_labels, nbrs, weights,
                    sigma):
  """float64 loss (mean over examples with a positive) and its analytic
  gradients, from log-sum-exps of ℓ_j = ln w_j - ‖x - c_j‖²/(2σ²)."""
  emb, centres = np.float64(emb), np.float64(centres)
  g_emb, g_w = np.zeros_like(emb), np.zeros(len(weights))
  total, count = 0.0, 0
  for b, row in enumerate(index):
    cols = nbrs[row]
    diff = emb[b] - centres[cols]                              # [k, D]
    logits = np.log(weights[cols]) - np.sum(diff**2, -1) / (2 * sigma**2)
    pos = centre_labels[cols] == labels[b]
    if not pos.any():
      continue
    p_all = np.exp(logits - logits.max())
    p_all /= p_all.sum()
    p_pos = np.where(pos, np.exp(logits - logits[pos].max()), 0.0)
    p_pos /= p_pos.sum()
    lse = lambda v: v.max() + np.log(np.sum(np.exp(v - v.max())))
    total += lse(logits) - lse(logits[pos])
    count += 1
    coef = p_all - p_pos                                       # dL/dℓ_j
    g_emb[b] = np.sum(coef[:, None] * (-diff / sigma**2), axis=0)
    np.add.at(g_w, cols, coef / weights[cols])
  count = max(count, 1)
  return total / count, g_emb / count, g_w / count


def test_nngk_centres_far_from_every_query_underflow_but_loss_is_exact():
  """Every kernel exp(-‖x - c‖²/2σ²) is 0 in float32 (the plain ratio of
  eq. 3 is 0/0 = NaN); the shifted log-sum-exp keeps the exact value and
  gradient (they only depend on the differences of the squared distances)."""
  rng = np.random.default_rng(0)
  # Centre j at squared radius 1e4 + s_j from the origin, s_j in [0, 3].
  u = rng.normal(size=(_N, _DIM))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  centres = (np.sqrt(1e4 + rng.uniform(0, 3, _N))[:, None] * u)
  centres = centres.astype(np.float32)
  labels = np.arange(_N) % 3
  nbrs = np.stack([np.delete(np.arange(_N), i)[rng.permutation(_N - 1)[:_K]]
                   for i in range(_N)])
  index = np.array([0, 1, 2, 3])
  emb = (0.05 * rng.normal(size=(4, _DIM))).astype(np.float32)
  weights = rng.uniform(0.5, 2.0, _N).astype(np.float32)
  sigma = 1.0
  d2 = np.sum((emb[:, None] - centres[nbrs[index]])**2, -1)
  with np.errstate(invalid="ignore"):
    kernel = np.exp(np.float32(-d2 / (2 * sigma**2)))
    naive = (kernel * (labels[nbrs[index]] == labels[index, None])).sum(1) / (
        kernel.sum(1))
  assert np.all(kernel == 0.0) and np.all(np.isnan(naive))

  value, aux, g_emb, g_w = _nngk_run(emb, labels[index], index,
                                     _bank(centres, labels, nbrs), weights,
                                     sigma)
  ref, ref_g_emb, ref_g_w = _nngk_reference(
      emb, labels[index], index, centres, labels, nbrs, weights, sigma)
  assert float(aux["nngk_no_positive"]) < 1.0
  assert 0.0 < ref < 10.0 and np.isfinite(value)
  np.testing.assert_allclose(value, ref, rtol=2e-3)
  assert _finite(g_emb, g_w)
  np.testing.assert_allclose(g_emb, ref_g_emb, rtol=2e-3, atol=5e-2)
  np.testing.assert_allclose(g_w, ref_g_w, rtol=2e-3, atol=2e-3)
  assert np.abs(g_emb).max() > 1.0           # a real (not zeroed) gradient

  # Positive centres much farther than the negatives: a huge, finite loss.
  far_pos = centres.copy()
  far_pos[labels == 0] *= 10.0
  value, _, g_emb, g_w = _nngk_run(emb, labels[index], index,
                                   _bank(far_pos, labels, nbrs), weights,
                                   sigma)
  assert np.isfinite(value) and value > 1e5 and _finite(g_emb, g_w)


def test_nngk_examples_without_a_same_class_neighbour_are_dropped():
  """Pr(x ∈ R) = 0 (loss ∞ in eq. 3): such an example gets loss 0, zero
  gradient, is left out of the mean and counted in ``nngk_no_positive``."""
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(_N, _DIM)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
  nbrs = np.stack([np.delete(np.arange(_N), i)[:_K] for i in range(_N)])
  # Rows 6 (class 2) and 9 (class 3, the only example of its class) have no
  # same-class centre among their neighbours; rows 0 and 3 have.
  nbrs[6] = [0, 1, 3, 4]
  index = np.array([0, 6, 3, 9])
  assert not np.any(labels[nbrs[9]] == 3)
  emb = centres[index] + 0.2 * rng.normal(size=(4, _DIM)).astype(np.float32)
  weights = rng.uniform(0.5, 2.0, _N).astype(np.float32)
  bank = _bank(centres, labels, nbrs)
  value, aux, g_emb, g_w = _nngk_run(emb, labels[index], index, bank, weights,
                                     0.7)
  ref, ref_g_emb, ref_g_w = _nngk_reference(emb, labels[index], index,
                                            centres, labels, nbrs, weights,
                                            0.7)
  np.testing.assert_allclose(value, ref, rtol=1e-5)
  per = np.asarray(aux["nngk_loss_per_example"])
  assert per[1] == 0.0 and per[3] == 0.0 and per[0] > 0 and per[2] > 0
  assert float(aux["nngk_no_positive"]) == 0.5
  assert _finite(g_emb, g_w)
  np.testing.assert_array_equal(g_emb[[1, 3]], 0.0)
  np.testing.assert_allclose(g_emb, ref_g_emb, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_w, ref_g_w, rtol=1e-4, atol=1e-6)

  # A batch in which no example has a positive: loss 0, all gradients 0.
  value, aux, g_emb, g_w = _nngk_run(emb[[1, 3, 1, 3]], labels[[6, 9, 6, 9]],
                                     np.array([6, 9, 6, 9]), bank, weights,
                                     0.7)
  assert value == 0.0 and float(aux["nngk_no_positive"]) == 1.0
  assert float(aux["nngk_prob_true"]) == 0.0
  assert _finite(g_emb, g_w) and not g_emb.any() and not g_w.any()


def test_nngk_refresh_with_a_single_example_class_reports_no_positive():
  """Host refresh: a class with one training example can have no
  same-class candidate (its own centre is excluded); the bank is built,
  the refresh logs the fraction and the loss drops that row."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(_N, _DIM)).astype(np.float32)
  y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])        # class 2: one example
  bank, sq_dist = nngk_method.build_bank(x, y, num_neighbours=_K)
  stats = nngk_method._bank_stats(bank, sq_dist, 1.0)
  assert np.all(np.isfinite(sq_dist)) and bank.mask.all()
  assert stats["no_positive_frac"] >= 1.0 / _N
  index = np.array([9, 0, 4, 1])
  value, aux, g_emb, g_w = _nngk_run(x[index], y[index], index,
                                     jax.tree.map(jnp.asarray, bank),
                                     np.ones(_N, np.float32), 1.0)
  assert np.asarray(aux["nngk_loss_per_example"])[0] == 0.0
  assert np.isfinite(value) and _finite(g_emb, g_w)
  np.testing.assert_array_equal(g_emb[0], 0.0)


# ----------------------------------------------------------------------------
# Magnet: empty and single-example clusters, classes with fewer than K examples.
# ----------------------------------------------------------------------------


def _magnet_reference(r, labels, ids, alpha=1.0, leave_one_out=False):
  """float64 eq. 5 (as ``test_magnet.reference_magnet``)."""
  r = np.float64(r)
  clusters = sorted(set(ids.tolist()))
  mean = {c: r[ids == c].mean(0) for c in clusters}
  count = {c: int(np.sum(ids == c)) for c in clusters}
  klass = {c: int(labels[ids == c][0]) for c in clusters}
  sigma2 = max(sum(np.sum((r[i] - mean[ids[i]])**2) for i in range(len(r)))
               / max(len(r) - 1, 1), 1e-8)
  terms = []
  for i in range(len(r)):
    c = ids[i]
    if leave_one_out and count[c] < 2:
      continue
    own = ((count[c] * mean[c] - r[i]) / (count[c] - 1) if leave_one_out
           else mean[c])
    logits = [-np.sum((r[i] - mean[m])**2) / (2 * sigma2) for m in clusters
              if klass[m] != labels[i]]
    if not logits:
      continue
    top = max(logits)
    lse = top + np.log(sum(np.exp(v - top) for v in logits))
    terms.append(max(0.0, np.sum((r[i] - own)**2) / (2 * sigma2) + alpha + lse))
  return sum(terms) / max(len(terms), 1)


_magnet_grad = jax.jit(
    jax.value_and_grad(lambda r, y, c, loo: magnet_loss(
        r, y, c, leave_one_out_means=loo), has_aux=True), static_argnums=3)


def test_magnet_loss_single_example_clusters():
  """A cluster with one example in the batch: with eq. 5's plain means its
  own distance is 0 (it still has impostor terms); with leave-one-out means
  it has no own mean and is left out. A batch of singletons then has no
  defined term: loss 0."""
  rng = np.random.default_rng(0)
  # 12 = M·D of the next test: one compile per leave_one_out for both.
  r = rng.normal(size=(12, 4)).astype(np.float32)
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 4, 4], np.int32)
  ids = np.array([5, 5, 9, 2, 2, 11, 7, 8, 1, 1, 1, 1],
                 np.int32)                                  # 9, 11, 7, 8 alone
  for loo in (False, True):
    (value, aux), grad = _magnet_grad(r, labels, ids, loo)
    np.testing.assert_allclose(value, _magnet_reference(r, labels, ids,
                                                        leave_one_out=loo),
                               rtol=1e-5)
    assert _finite(grad) and np.abs(grad).max() > 0
    if loo:
      np.testing.assert_array_equal(
          np.asarray(aux["per_example_loss"])[[2, 5, 6, 7]], 0.0)
  # Every cluster a singleton: σ̂² = 0 is floored at eps; with leave-one-out
  # means nothing is defined, so the loss is exactly 0.
  singles = np.arange(12, dtype=np.int32)
  (value, aux), grad = _magnet_grad(r, labels, singles, False)
  assert np.isfinite(float(value)) and _finite(grad)
  assert float(aux["sigma2"]) == pytest.approx(1e-8)
  (value, _), grad = _magnet_grad(r, labels, singles, True)
  assert float(value) == 0.0 and _finite(grad) and not np.asarray(grad).any()


def _magnet_data():
  """Class 0: 12 points in 3 blobs; class 1: 2 points (< K); class 2: 8
  points but only 2 distinct ones (k-means gives empty clusters); class 3: no
  examples; class 4: 12 points."""
  rng = np.random.default_rng(0)
  blobs = lambda n, s: (rng.normal(size=(3, 4)) * 4)[rng.integers(3, size=n)] \
      + 0.1 * rng.normal(size=(n, 4)) + s
  x = np.concatenate([blobs(12, 0.0), rng.normal(size=(2, 4)) + 8.0,
                      np.repeat(rng.normal(size=(2, 4)) - 8.0, 4, axis=0),
                      blobs(12, 3.0)]).astype(np.float32)
  y = np.array([0] * 12 + [1] * 2 + [2] * 8 + [4] * 12, np.int32)
  return x, y


def test_magnet_index_with_small_classes_and_empty_clusters():
  """The host cluster index copes: a class with n_c < K examples gets n_c
  single-example clusters, k-means clusters that end empty (duplicate
  points) and an absent class's clusters are marked not valid; the sampler
  never draws an invalid cluster, draws a small cluster's examples with
  replacement, and the loss on such batches is finite."""
  x, y = _magnet_data()
  K, M, D = 4, 3, 4
  index = magnet.build_cluster_index(x, y, 5, K, seed=0)
  count = np.asarray(index.member_count).reshape(5, K)
  valid = np.asarray(index.valid).reshape(5, K)
  np.testing.assert_array_equal(np.sort(count[1]), [0, 0, 1, 1])
  np.testing.assert_array_equal(np.sort(count[2]), [0, 0, 4, 4])
  np.testing.assert_array_equal(count[3], 0)
  np.testing.assert_array_equal(valid, count > 0)
  assert np.all(count[[0, 4]] > 0)
  assert np.all(np.asarray(index.valid)[index.assignments])
  assert np.isfinite(float(index.index_sigma2))

  cfg = magnet.Config(M=M, D=D, K=K)
  ctx = _context(x, y, ml_collections.ConfigDict({"seed": 0}))
  sampler = magnet.METHOD.samplers(cfg, ctx, base.MethodState(host=index))[
      "train"]
  # The method's loss is magnet_loss on the rows' cluster ids
  # (``magnet.loss``); the jitted form of the previous test is reused.
  assignments = np.asarray(index.assignments)
  for seed_cluster in np.flatnonzero(index.valid):
    forced = index.replace(
        cluster_loss=np.eye(len(index.valid), dtype=np.float32)[seed_cluster],
        loss_seen=np.asarray(True))
    rows = sampler.batch(0, forced)
    drawn = np.asarray(index.assignments)[rows]
    assert drawn[0] == seed_cluster and np.all(np.asarray(index.valid)[drawn])
    for loo in (False, True):
      (value, _), grad = _magnet_grad(x[rows], y[rows], assignments[rows], loo)
      assert np.isfinite(float(value)) and _finite(grad)
  small = np.flatnonzero(np.asarray(index.member_count) == 1)[0]
  rows = sampler.batch(0, index.replace(
      cluster_loss=np.eye(len(index.valid), dtype=np.float32)[small],
      loss_seen=np.asarray(True)))
  assert len(set(rows[:D].tolist())) == 1       # D copies of its one example


def test_magnet_too_few_impostor_clusters_fails_before_training():
  """A class with fewer examples than K reduces the clusters the others can
  use as impostors; when some class has fewer than M-1, ``samplers`` (before
  the first step) raises a ValueError naming M."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(13, 4)).astype(np.float32)
  y = np.array([0] * 12 + [1], np.int32)        # class 1: 1 example, K = 4
  cfg = magnet.Config(M=3, D=2, K=4)
  index = magnet.build_cluster_index(x, y, 2, cfg.K, seed=0)
  assert int(np.sum(index.valid)) == 5
  ctx = _context(x, y, ml_collections.ConfigDict({"seed": 0}))
  with pytest.raises(ValueError, match=r"M=3 needs M-1=2 impostor clusters.*"
                     r"only 1 \(5 valid clusters in all\); lower M"):
    magnet.METHOD.samplers(cfg, ctx, base.MethodState(host=index))
  with pytest.raises(ValueError, match="only 1 impostor clusters, M-1=2"):
    magnet.nearest_impostors(index, 0, cfg.M - 1)


# ----------------------------------------------------------------------------
# MIC: single-example surrogate clusters, fewer examples than clusters.
# ----------------------------------------------------------------------------


def _mic_config(**method):
  """MIC with the real margin loss of ``configs/mic.py``."""
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.method = ml_collections.ConfigDict(dict(
      dict(name="mic", num_clusters=3, gamma=10.0, switch_prob=0.0,
           schedule="joint", projection_dim=16), **method))
  cfg.loss = ml_collections.ConfigDict({"name": "margin", "kwargs": {
      "alpha": 0.2, "beta0": 1.2, "beta_per_class": True, "nu": 0.0,
      # = B - 1 for the 12-example batches: the one-path form of the same
      # negative sampling (a speed knob, see margin_loss), one compile.
      "max_positives": 11}})
  cfg.model = ml_collections.ConfigDict({"aux_embedding_dim": 6})
  cfg.sampler = ml_collections.ConfigDict(
      {"name": "pk", "classes_per_batch": 3, "images_per_class": 4})
  return cfg


def _outlier_features():
  """20 points and one far outlier: k-means into 3 gives it its own cluster."""
  rng = np.random.default_rng(0)
  return np.concatenate([rng.normal(size=(20, 5)),
                         np.full((1, 5), 50.0)]).astype(np.float32)


def test_mic_single_example_surrogate_cluster():
  """A surrogate cluster of one example: the auxiliary P×K sampler fills its
  K slots with copies of that example (identical embeddings, distance 0 in
  l_β), and in a class batch its label can be alone (no positive in l_β);
  the MIC loss and all its gradients are finite in both."""
  feats = _outlier_features()
  classes = np.arange(21) % 4
  surrogate = mic_clustering.compute_surrogate_labels(
      feats, np.zeros(21), 3, standardise="none", seed=0)
  sizes = np.bincount(surrogate, minlength=3)
  assert sorted(sizes.tolist())[0] == 1 and sizes.sum() == 21
  single = int(np.argmin(sizes))

  config = _mic_config()
  cfg = mic.METHOD.settings(config)
  info = ModelInfo(num_classes=4, num_train=21, embedding_dim=8,
                   feature_dims={"aux_embedding": 6})
  rng = np.random.default_rng(1)
  # init_params' tree (traced, not run: its jax.random calls compile slowly
  # on the shared CPU), R's weights drawn with NumPy, β = beta0.
  shapes = jax.eval_shape(lambda key: mic.init_params(cfg, key, info),
                          jax.random.PRNGKey(0))
  params = jax.tree.map(
      lambda a: np.float32(rng.uniform(-0.3, 0.3, a.shape)), shapes)
  params["class_loss"]["beta"] = np.full(4, 1.2, np.float32)
  params["aux_loss"]["beta"] = np.full(3, 1.2, np.float32)
  unit = lambda v: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(
      np.float32)
  e_alpha, e_beta = unit(rng.normal(size=(21, 8))), unit(rng.normal(size=(21,
                                                                         6)))
  state = mic.MICState(jnp.asarray(surrogate, jnp.int32))
  # One compile: the joint loss computes l_β exactly as the authors'
  # auxiliary step does (the base loss on E_β with the rows' surrogate labels).
  grad = jax.jit(jax.value_and_grad(
      lambda p, o, b: mic.loss(cfg, p, o, b, state, jax.random.PRNGKey(0)),
      argnums=(0, 1), has_aux=True))

  def check_finite(rows):
    batch = {"labels": jnp.asarray(classes[rows]), "index": jnp.asarray(rows),
             "step": jnp.zeros((), jnp.int32)}
    outputs = {"embedding": e_alpha[rows], "aux_embedding": e_beta[rows]}
    (value, aux), grads = grad(params, outputs, batch)
    assert np.isfinite(float(value)) and _finite(grads)
    assert np.isfinite(float(aux["mic_aux_loss"]))

  sampler = mic.SurrogateSampler(surrogate, 3, 4, switch_prob=0.0, seed=1)
  steps = [s for s in range(sampler.steps_per_epoch * 3)
           if single in sampler.batch(s)[1]]
  assert steps
  rows, labels = sampler.batch(steps[0])
  assert np.sum(labels == single) == 4
  assert len(set(rows[labels == single].tolist())) == 1
  np.testing.assert_array_equal(surrogate[rows], labels)
  check_finite(rows)

  # Joint schedule: a class batch holding the singleton's only example.
  rows = np.concatenate([[np.flatnonzero(surrogate == single)[0]],
                         np.flatnonzero(surrogate != single)[:11]])
  assert np.sum(surrogate[rows] == single) == 1
  check_finite(rows)


def test_mic_fewer_examples_than_surrogate_clusters():
  """N < C: the first refresh (before training) raises a ValueError naming
  num_clusters and N. N ≥ C but fewer *distinct* points than C (the 'mean'
  standardisation maps every single-example class to 0): k-means leaves some
  clusters empty; the labels are still in [0, C) and the sampler copes."""
  feats = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
  classes = np.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match=r"num_clusters must lie in \[1, N=4\],"
                     r" got 6.*config\.method\.num_clusters to at most 4"):
    mic_clustering.compute_surrogate_labels(feats, classes, 6)
  cfg = mic.METHOD.settings(_mic_config(num_clusters=6))
  ctx = _context(feats, classes, None)
  template = mic.init_state(cfg, ModelInfo(2, 4, 8))
  with pytest.raises(ValueError, match="num_clusters"):
    mic.refresh(cfg, ctx, template)

  # 8 single-example classes (all standardised to the zero vector) + one
  # class of 4: 5 distinct points for C = 6 clusters.
  feats = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
  classes = np.array(list(range(8)) + [8] * 4)
  z = mic_clustering.standardise_per_class(feats, classes, "mean")
  assert len(np.unique(z, axis=0)) == 5
  labels = mic_clustering.compute_surrogate_labels(feats, classes, 6, seed=0)
  sizes = np.bincount(labels, minlength=6)
  assert labels.min() >= 0 and labels.max() < 6 and len(sizes) == 6
  assert np.sum(sizes > 0) <= 5 and len(set(labels[:8].tolist())) == 1
  sampler = mic.SurrogateSampler(labels, 6, 2, switch_prob=0.2, seed=0)
  rows, batch_labels = sampler.batch(0)
  assert sampler.pk.P == np.sum(sizes > 0)
  assert rows.min() >= 0 and rows.max() < 12
  assert set(batch_labels.tolist()) <= set(np.flatnonzero(sizes).tolist())


# ----------------------------------------------------------------------------
# DML-DA: single-example classes, negative target densities α_c.
# ----------------------------------------------------------------------------

_C = 6
_reg_jit = jax.jit(jax.value_and_grad(
    lambda x, a, y, d0, m: _density.density_regularizer(
        x, y, a, d0, min_class_size=m), argnums=(0, 1), has_aux=True),
    static_argnums=4)


def _reg(x, alpha, labels, d0, min_class_size):
  """((L_DA, aux), (d/d x, d/d α)) as NumPy (no eager device ops after)."""
  return jax.device_get(_reg_jit(x, alpha, labels, d0, min_class_size))


def test_dmlda_single_example_class_in_the_batch():
  """A class seen once has density 0 by definition (eq. 5). With the
  default ``min_class_size=2`` it is left out: the value equals that of the
  batch without it, and neither its α_c nor its embedding gets a gradient
  from L_DA. With ``min_class_size=1`` it is counted (pulling α_c towards 0);
  finite either way, also through the whole DML-DA loss."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(9, 5)).astype(np.float32)
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 5], np.int32)       # class 5 alone
  alpha = rng.uniform(0.2, 0.9, _C).astype(np.float32)
  d0 = rng.uniform(0.3, 0.8, _C).astype(np.float32)
  (value, aux), (gx, ga) = _reg(x, alpha, y, d0, 2)
  # The same batch without the singleton (padding label -1 is ignored).
  (value_wo, _), _ = _reg(x, alpha, np.where(y == 5, -1, y), d0, 2)
  np.testing.assert_allclose(value, value_wo, rtol=1e-6)
  assert float(aux["num_present_classes"]) == 3
  assert _finite(value, gx, ga) and ga[5] == 0 and not gx[8].any()
  (value1, aux1), (gx1, ga1) = _reg(x, alpha, y, d0, 1)
  assert float(aux1["num_present_classes"]) == 4
  assert _finite(value1, gx1, ga1) and ga1[5] != 0

  # The whole DML-DA loss with the paper's contrastive base loss.
  config = ml_collections.ConfigDict({
      "method": {"name": "dmlda", "regularizer": "density"},
      "loss": {"name": "dmlda_contrastive", "kwargs": {"margin": 1.0}}})
  cfg = dmlda.METHOD.settings(config)
  params = jax.jit(lambda key: dmlda.init_params(cfg, key, ModelInfo(
      _C, 40, 5)))(jax.random.PRNGKey(0))
  state = dmlda.DensityState(original_density=d0, measured=np.asarray(True))
  emb = x / np.linalg.norm(x, axis=1, keepdims=True)
  (total, _), grads = jax.jit(jax.value_and_grad(
      lambda p, e: dmlda.loss(cfg, p, {"embedding": e},
                              {"labels": jnp.asarray(y)}, state, None),
      argnums=(0, 1), has_aux=True))(params, emb)
  assert np.isfinite(float(total)) and _finite(grads)

  # Host refresh (D0, eq. 7): a single-example class gets the mean of the
  # measured classes; a training set of singletons gets 1.
  feats = rng.normal(size=(7, 5))
  d0_host = dmlda.original_density(feats, np.array([0, 0, 1, 1, 1, 2, 3]), 4)
  assert np.all(np.isfinite(d0_host))
  np.testing.assert_allclose(d0_host[[2, 3]], d0_host[:2].mean(), rtol=1e-6)
  np.testing.assert_array_equal(
      dmlda.original_density(feats[:4], np.arange(4), 4), 1.0)


def test_dmlda_negative_target_density_counts_as_zero_and_recovers():
  """α_c < 0 (a large optimiser step) is no target density: L_DA uses 0 in
  its place (same value as α_c = 0) and passes the gradient at 0 through, so
  gradient descent drives α_c back to ≥ 0; the count is reported in aux. A
  negative ``alpha_init`` is rejected by the config."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 5)).astype(np.float32)
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], np.int32)
  d0 = rng.uniform(0.3, 0.8, _C).astype(np.float32)
  alpha = np.full(_C, 0.5, np.float32)
  negative, zero = alpha.copy(), alpha.copy()
  negative[1], zero[1] = -0.3, 0.0
  (v_neg, aux_neg), (gx_neg, ga_neg) = _reg(x, negative, y, d0, 2)
  (v_zero, aux_zero), (gx_zero, ga_zero) = _reg(x, zero, y, d0, 2)
  assert v_neg == v_zero and _finite(v_neg, gx_neg, ga_neg)
  np.testing.assert_array_equal(ga_neg, ga_zero)
  np.testing.assert_array_equal(gx_neg, gx_zero)
  assert ga_neg[1] < 0                        # descent raises α_1
  assert float(aux_neg["negative_target_density"]) == 1
  assert float(aux_zero["negative_target_density"]) == 0
  a = jnp.asarray(negative)
  for _ in range(5):
    a = a - 0.5 * _reg(x, a, y, d0, 2)[1][1]
  assert float(a[1]) > 0.0

  with pytest.raises(ValueError, match=r"alpha_init must be >= 0, got -0\.1"):
    dmlda.METHOD.settings(ml_collections.ConfigDict({
        "method": {"name": "dmlda", "alpha_init": -0.1},
        "loss": {"name": "dmlda_contrastive", "kwargs": {}}}))
