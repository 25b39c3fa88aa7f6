"""Triplet losses (batch-all, semi-hard, batch-hard) against NumPy loops."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx import losses
from dmlx.losses import _distances

from loss_testing import check_grads as _check_grads  # pylint: disable=unused-import
from loss_testing import jit  # pylint: disable=unused-import
from loss_testing import x64  # pylint: disable=unused-import  (autouse fixture)


def _batch(seed=0, b=12, d=5, sizes=(5, 4, 2, 1), scale=0.5):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(sizes)), sizes)[:b]
  labels = labels[rng.permutation(len(labels))]
  return rng.normal(size=(len(labels), d)) * scale, labels


def _dist(x, squared=False):
  b = len(x)
  out = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      sq = float(np.sum((x[i] - x[j]) ** 2))
      out[i, j] = sq if squared else np.sqrt(sq)
  return out


def _softplus(v):
  return np.log1p(np.exp(v))


def _ref_all(x, y, margin, soft, squared, reduction):
  d = _dist(x, squared)
  total, active, valid = 0.0, 0, 0
  for a in range(len(y)):
    for p in range(len(y)):
      if p == a or y[p] != y[a]:
        continue
      for n in range(len(y)):
        if y[n] == y[a]:
          continue
        valid += 1
        v = _softplus(d[a, p] - d[a, n]) if soft else max(
            0.0, d[a, p] - d[a, n] + margin)
        total += v
        active += 1 if (soft or v > 0) else 0
  if reduction == "sum":
    return total
  return total / max(active if reduction == "active" else valid, 1)


def _ref_semihard(x, y, margin, soft, squared=False):
  d = _dist(x, squared)
  total, count = 0.0, 0
  for a in range(len(y)):
    negatives = [n for n in range(len(y)) if y[n] != y[a]]
    if not negatives:
      continue
    for p in range(len(y)):
      if p == a or y[p] != y[a]:
        continue
      beyond = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
      d_an = min(beyond) if beyond else max(d[a, n] for n in negatives)
      total += (_softplus(d[a, p] - d_an) if soft
                else max(0.0, d[a, p] - d_an + margin))
      count += 1
  return total / max(count, 1)


def _ref_batch_hard(x, y, margin, soft, squared=False):
  d = _dist(x, squared)
  total, count = 0.0, 0
  for a in range(len(y)):
    pos = [d[a, p] for p in range(len(y)) if p != a and y[p] == y[a]]
    neg = [d[a, n] for n in range(len(y)) if y[n] != y[a]]
    if not pos or not neg:
      continue
    v = max(pos) - min(neg)
    total += _softplus(v) if soft else max(0.0, v + margin)
    count += 1
  return total / max(count, 1)


@pytest.mark.parametrize("soft,squared,reduction", [
    (False, True, "valid"), (True, True, "active"), (False, True, "sum")])
def test_triplet_all_matches_loops(soft, squared, reduction):
  x, y = _batch(0)
  fn = jit(functools.partial(losses.triplet_all, margin=0.7, soft=soft,
                                 squared=squared, reduction=reduction))
  loss, aux = fn(x, y)
  np.testing.assert_allclose(
      loss, _ref_all(x, y, 0.7, soft, squared, reduction), rtol=1e-9)
  assert aux["num_valid"] == sum(
      (y == c).sum() * ((y == c).sum() - 1) * (y != c).sum() for c in set(y))
  assert 0 < aux["fraction_active"] < 1


@pytest.mark.parametrize("soft,squared", [(False, True)])
def test_triplet_semihard_matches_loops(soft, squared):
  fn = jit(functools.partial(
      losses.triplet_semihard, margin=0.3, soft=soft, squared=squared))
  for seed in range(3):
    x, y = _batch(seed)
    loss, aux = fn(x, y)
    np.testing.assert_allclose(
        loss, _ref_semihard(x, y, 0.3, soft, squared), rtol=1e-9)
    assert 0 <= aux["fraction_semihard"] <= 1


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_batch_hard_matches_loops(soft):
  x, y = _batch(1)
  loss, aux = jit(functools.partial(
      losses.triplet_batch_hard, margin=0.4, soft=soft))(x, y)
  np.testing.assert_allclose(loss, _ref_batch_hard(x, y, 0.4, soft),
                             rtol=1e-9)
  assert aux["hardest_positive"] > 0


@pytest.mark.parametrize("max_positives,soft",
                         [(None, False), (2, True), (7, False), (100, True)])
def test_positive_table_and_sorted_paths_agree_with_loops(max_positives, soft):
  # Close points so many triplets are active. Batch 1: 30 examples in 7
  # classes of 2..6; batch 2: 10 classes of 3. max_positives=None always
  # sorts; 2 overflows on batch 1 (lax.cond falls back to sorting) but not on
  # batch 2 (table); 7 uses the table on both; 100 clips to B - 1 (no cond).
  rng = np.random.default_rng(5)
  batches = [(rng.normal(size=(30, 3)) * 0.3, rng.integers(0, 7, size=30)),
             (rng.normal(size=(30, 3)) * 0.3, np.arange(30) // 3)]
  all_fn = jit(functools.partial(losses.triplet_all, soft=soft,
                                 max_positives=max_positives))
  semihard_fn = jit(functools.partial(losses.triplet_semihard, soft=soft,
                                      max_positives=max_positives))
  for x, y in batches:
    loss, aux = all_fn(x, y)
    np.testing.assert_allclose(
        loss, _ref_all(x, y, 0.2, soft, False, "active"), rtol=1e-9)
    loss, aux = semihard_fn(x, y)
    np.testing.assert_allclose(loss, _ref_semihard(x, y, 0.2, soft),
                               rtol=1e-9)


def test_semihard_ties_use_strictly_farther_negative():
  # Example 3 (class 1) duplicates the positive 1 of anchor 0: D_an == D_ap is
  # not "farther", so the semi-hard negative of (0, 1) is example 2.
  x = np.array([[0.0, 0.0], [1.0, 0.0], [1.5, 0.0], [1.0, 0.0]])
  y = np.array([0, 0, 1, 1])
  loss, aux = jit(losses.triplet_semihard)(x, y, margin=1.0)
  np.testing.assert_allclose(loss, _ref_semihard(x, y, 1.0, False), rtol=1e-9)
  # Pairs (0,1), (2,3), (3,2) find a farther negative; (1,0) does not.
  np.testing.assert_allclose(aux["fraction_semihard"], 0.75)


def test_semihard_falls_back_to_farthest_negative():
  # Every negative is closer than the positive: use the farthest negative.
  x = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  y = np.array([0, 0, 1, 2])
  loss, aux = jit(losses.triplet_semihard)(x, y, margin=0.5)
  # anchor 0: d_ap = 3, negatives at 1 and 2 -> use 2: 3 - 2 + 0.5 = 1.5.
  # anchor 1: d_ap = 3, negatives at 2 and sqrt(13) -> sqrt(13) (semi-hard).
  np.testing.assert_allclose(loss, (1.5 + max(0, 3 - np.sqrt(13) + 0.5)) / 2,
                             rtol=1e-9)
  np.testing.assert_allclose(aux["fraction_semihard"], 0.5)


@pytest.mark.parametrize("fn,soft,max_positives", [
    (losses.triplet_all, False, None), (losses.triplet_all, True, 7),
    (losses.triplet_semihard, False, None), (losses.triplet_semihard, True, 7),
    (losses.triplet_batch_hard, True, None)])
def test_triplet_gradients(fn, soft, max_positives):
  x, y = _batch(2)
  kwargs = {} if fn is losses.triplet_batch_hard else {
      "max_positives": max_positives}
  _check_grads(lambda x: fn(x, y, margin=0.5, soft=soft, **kwargs)[0], (x,))


@pytest.mark.parametrize("max_positives", [None, 7])
def test_batch_all_gradient_matches_cube(max_positives):
  # The prefix-sum (None) and table forms give the explicit cube's gradient.
  x, y = _batch(3)

  def cube(x):
    d = losses.pairwise_distances(x)
    pos, neg = losses.positive_mask(y), losses.negative_mask(y)
    valid = pos[:, :, None] & neg[:, None, :]
    v = jax.nn.relu(d[:, :, None] - d[:, None, :] + 0.5)
    return jnp.sum(jnp.where(valid, v, 0)) / jnp.sum(valid & (v > 0))

  ours = jit(jax.grad(lambda x: losses.triplet_all(
      x, y, margin=0.5, max_positives=max_positives)[0]))
  np.testing.assert_allclose(ours(x), jit(jax.grad(cube))(x), rtol=1e-8,
                             atol=1e-12)


def test_bad_options():
  x, y = _batch(0)
  with pytest.raises(ValueError, match="reduction"):
    losses.triplet_all(x, y, reduction="total")
  with pytest.raises(ValueError, match="max_positives"):
    losses.triplet_semihard(x, y, max_positives=0)


@pytest.mark.parametrize("labels", [
    np.arange(24) // 2,                       # K = 2: a width-1 table
    np.arange(24) // 4,                       # K = 4: width 3
    np.repeat(np.arange(5), [5, 5, 5, 5, 4]),  # width 7
    np.random.default_rng(3).integers(0, 4, size=24)])  # overflows 7: sorts
def test_positive_table_widths_give_the_sorted_paths_values_and_gradients(
    labels):
  # jax.lax.switch picks the narrowest table that holds the largest class;
  # each must agree with the sorted form (max_positives=None) in the loss
  # and in its gradient, including the semi-hard negatives' gradient, which
  # comes back through a term that adds 0.
  x = np.random.default_rng(4).normal(size=(24, 3)) * 0.4
  y = jnp.asarray(labels)
  for fn, kwargs in [(losses.triplet_semihard, {}),
                     (losses.triplet_semihard, {"soft": True}),
                     (losses.triplet_all, {}),
                     (losses.triplet_all, {"soft": True})]:
    def value(x, max_positives, fn=fn, kwargs=kwargs):
      return fn(x, y, max_positives=max_positives, **kwargs)[0]
    table = jax.value_and_grad(value)(x, 7)
    exact = jax.value_and_grad(value)(x, None)
    np.testing.assert_allclose(table[0], exact[0], rtol=1e-9)
    np.testing.assert_allclose(table[1], exact[1], rtol=1e-7, atol=1e-12)
    assert np.abs(exact[1]).max() > 1e-3


def test_positive_table_lists_each_anchors_first_positives():
  rng = np.random.default_rng(0)
  for labels in [np.arange(12) // 3, rng.integers(0, 5, size=40),
                 np.zeros(6, int), np.arange(7)]:
    y = jnp.asarray(labels)
    pos = np.asarray(losses.positive_mask(y))
    for width in (1, 3, min(8, len(labels))):
      index, valid, num_positives = _distances.positive_table(y, width)
      # NumPy: each anchor's positive columns in increasing order, the first
      # `width` of them; padding points at the anchor itself.
      rows = np.arange(len(labels))
      want_index = np.broadcast_to(rows[:, None], (len(labels), width)).copy()
      want_valid = np.zeros((len(labels), width), bool)
      for a in rows:
        cols = np.nonzero(pos[a])[0][:width]
        want_index[a, :len(cols)] = cols
        want_valid[a, :len(cols)] = True
      np.testing.assert_array_equal(valid, want_valid)
      np.testing.assert_array_equal(index, want_index)
      np.testing.assert_array_equal(num_positives, np.sum(pos, axis=1))


@pytest.mark.parametrize("block_elements", [3 * 30 * 4, 1])
def test_anchor_blocks_give_the_whole_tables_values_and_gradients(
    monkeypatch, block_elements):
  # On CPU the table forms run on blocks of anchors in turn (cache-sized
  # [b, W, B] temporaries). With blocks of 4 anchors (30 rows: the last
  # block padded) and of 1, every table loss equals the single-block run in
  # value, gradient and aux, and the blocked path really ran.
  from dmlx.losses import _common
  x = np.random.default_rng(5).normal(size=(30, 3)) * 0.4
  y = jnp.asarray(np.arange(30) // 4)                 # width-3 tables
  cases = [(losses.triplet_semihard, {}), (losses.triplet_semihard,
                                           {"soft": True}),
           (losses.triplet_all, {}), (losses.triplet_all, {"soft": True}),
           (losses.triplet_all, {"soft": True, "squared": True,
                                 "reduction": "valid"})]
  calls = []
  real_map = jax.lax.map

  def counting_map(f, xs, **kwargs):
    calls.append(jax.tree.leaves(xs)[0].shape[:2])
    return real_map(f, xs, **kwargs)

  for fn, kwargs in cases:
    def run(x, fn=fn, kwargs=kwargs):
      return jax.value_and_grad(lambda x: fn(x, y, **kwargs), has_aux=True)(x)
    whole = run(x)
    with monkeypatch.context() as m:
      m.setattr(_common, "_BLOCK_ELEMENTS", block_elements)
      m.setattr(jax.lax, "map", counting_map)
      blocked = run(x)
    for got, want in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)):
      np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert np.abs(whole[1]).max() > 1e-3
  # (The switch traces every width's branch; the width-3 one runs.)
  assert ((8, 4) if block_elements > 1 else (30, 1)) in calls, calls
