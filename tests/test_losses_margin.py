"""Margin loss and distance-weighted sampling (Wu et al., 2017)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx import losses
from dmlx.losses import _margin

from loss_testing import check_grads as _check_grads  # pylint: disable=unused-import
from loss_testing import jit  # pylint: disable=unused-import
from loss_testing import x64  # pylint: disable=unused-import  (autouse fixture)


def _batch(seed=0, sizes=(5, 4, 2, 1), d=5):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(sizes)), sizes)
  labels = labels[rng.permutation(len(labels))]
  return rng.normal(size=(len(labels), d)), labels


def _np_log_weights(d, n, cutoff, upper):
  d = np.clip(d, cutoff, upper)
  return -((n - 2) * np.log(d) + (n - 3) / 2 * np.log(1 - d ** 2 / 4))


def _ref_margin(x, y, beta, negatives, alpha, nu, per_class):
  """Loop reference; anchor a uses its first #positives sampled negatives."""
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  total, reg, nonzero = 0.0, 0.0, 0
  for a in range(len(y)):
    b = beta[y[a]] if per_class else beta
    positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
    has_neg = any(y[n] != y[a] for n in range(len(y)))
    for i, p in enumerate(positives):
      pos_l = max(0.0, alpha + np.linalg.norm(xn[a] - xn[p]) - b)
      neg_l = 0.0
      if has_neg:
        n = negatives[a, i]
        assert y[n] != y[a]
        neg_l = max(0.0, alpha - np.linalg.norm(xn[a] - xn[n]) + b)
      total += pos_l + neg_l
      reg += b
      nonzero += int(pos_l > 0) + int(neg_l > 0)
  return (total + nu * reg) / max(nonzero, 1)


def test_log_weights_match_formula():
  d = np.array([0.01, 0.3, 0.5, 0.9, 1.3, 1.39, 1.5, 2.0, 3.0])
  for n in (3, 5, 128):
    np.testing.assert_allclose(
        losses.distance_weighted_log_weights(jnp.asarray(d), n, cutoff=0.5,
                                             nonzero_loss_cutoff=1.4),
        _np_log_weights(d, n, 0.5, 1.4), rtol=1e-10)


@pytest.mark.parametrize("per_class,nu,max_positives,width", [
    (False, 0.0, 7, 7),     # every anchor has <= 4 positives: [B, 7] draws
    (True, 0.1, 2, 11),     # a class of 5 overflows 2: fallback to B - 1
])
def test_margin_loss_matches_loops_given_sampled_negatives(
    per_class, nu, max_positives, width):
  x, y = _batch(0)
  params = losses.init_margin_loss(4, 0.9, beta_per_class=per_class)
  params = {"beta": params["beta"].astype(jnp.float64)
            + (jnp.arange(4) * 0.1 if per_class else 0)}
  key = jax.random.PRNGKey(3)

  @jit
  def run(x, params):
    loss, aux = losses.margin_loss(x, y, params, key, alpha=0.2, nu=nu,
                                   beta_per_class=per_class,
                                   max_positives=max_positives)
    d = losses.pairwise_distances(losses.l2_normalize(x))
    negatives, _ = losses.distance_weighted_sampling(key, d, y, dim=5,
                                                     num_samples=width)
    return loss, aux, negatives

  loss, aux, negatives = run(x, params)
  ref = _ref_margin(x, y, np.asarray(params["beta"]), np.asarray(negatives),
                    0.2, nu, per_class)
  np.testing.assert_allclose(loss, ref, rtol=1e-9)
  assert 0 < aux["fraction_active"] <= 1


@pytest.mark.parametrize("sampler", ["inverse_cdf", "categorical"])
def test_sampling_frequencies_follow_inverse_density(sampler):
  x, y = _batch(1, sizes=(3, 3, 2), d=5)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  d = jnp.asarray(_pairwise(x))
  negatives, has_negative = jit(functools.partial(
      losses.distance_weighted_sampling, num_samples=4000, dim=5, cutoff=0.5,
      nonzero_loss_cutoff=1.4, sampler=sampler))(
          jax.random.PRNGKey(0), d, y)
  assert np.all(has_negative)
  negatives, dn = np.asarray(negatives), np.asarray(d)
  for a in range(len(y)):
    allowed = [n for n in range(len(y)) if y[n] != y[a] and dn[a, n] < 1.4]
    if allowed:
      w = np.exp(_np_log_weights(dn[a, allowed], 5, 0.5, 1.4))
    else:  # documented fallback: uniform over the anchor's negatives
      allowed = [n for n in range(len(y)) if y[n] != y[a]]
      w = np.ones(len(allowed))
    assert set(negatives[a]) <= set(allowed)
    freq = np.array([np.mean(negatives[a] == n) for n in allowed])
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.03)


def _pairwise(x):
  return np.sqrt(np.maximum(
      np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1), 0))


def test_sampling_falls_back_to_uniform_when_all_negatives_are_far():
  # Class 1 sits opposite class 0 on the circle: every negative distance is
  # about 2 > nonzero_loss_cutoff, so the draw is uniform over negatives.
  angles = np.array([0.0, 0.05, np.pi, np.pi - 0.05])
  x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  y = np.array([0, 0, 1, 1])
  negatives, _ = jit(functools.partial(
      losses.distance_weighted_sampling, num_samples=2000, dim=2))(
          jax.random.PRNGKey(1), jnp.asarray(_pairwise(x)), y)
  drawn = np.asarray(negatives)[0]
  assert set(drawn) == {2, 3}
  np.testing.assert_allclose(np.mean(drawn == 2), 0.5, atol=0.05)


def test_margin_loss_gradients():
  x, y = _batch(2)
  key = jax.random.PRNGKey(7)
  beta = jnp.array([1.0, 1.1, 0.9, 1.2])
  f = lambda x, b: losses.margin_loss(
      x, y, {"beta": b}, key, beta_per_class=True, nu=0.05, alpha=0.3)[0]
  _check_grads(f, (x, beta))
  g_beta = jit(jax.grad(f, argnums=1))(x, beta)
  assert np.any(np.asarray(g_beta) != 0)


def test_margin_loss_checks():
  x, y = _batch(0)
  key = jax.random.PRNGKey(0)
  params = losses.init_margin_loss(4)
  assert params["beta"].shape == () and np.isclose(params["beta"], 1.2)
  with pytest.raises(ValueError, match="beta_per_class"):
    losses.margin_loss(x, y, params, key, beta_per_class=True)
  with pytest.raises(ValueError, match="nonzero_loss_cutoff"):
    losses.margin_loss(x, y, params, key, nonzero_loss_cutoff=2.5)
  with pytest.raises(ValueError, match="'beta'"):
    losses.margin_loss(x, y, {"b": 1.0}, key)
  with pytest.raises(ValueError, match="sampler"):
    losses.margin_loss(x, y, params, key, sampler="gumbel")


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 256])
def test_blocked_row_cumsum_is_cumsum(n):
  w = np.random.default_rng(n).uniform(size=(5, n))
  np.testing.assert_allclose(_margin._row_cumsum(jnp.asarray(w)),
                             np.cumsum(w, axis=1), rtol=1e-12)


@pytest.mark.parametrize("block_elements", [4 * 30, 1])
def test_anchor_blocks_draw_the_same_negatives(monkeypatch, block_elements):
  # On CPU the inverse-CDF draws run on blocks of anchors in turn (4 rows of
  # 30, the last block padded; and 1 row): the same negatives, loss and
  # gradient as one block, with the uniforms drawn once for all anchors.
  from dmlx.losses import _common
  rng = np.random.default_rng(2)
  x = rng.normal(size=(30, 6))
  y = jnp.asarray(np.arange(30) // 3)
  params = {"beta": jnp.asarray(0.9, jnp.float64)}
  key = jax.random.PRNGKey(1)

  def run(x):
    d = losses.pairwise_distances(losses.l2_normalize(x))
    negatives, has = losses.distance_weighted_sampling(key, d, y, dim=6,
                                                       num_samples=5)
    value, grad = jax.value_and_grad(lambda x: losses.margin_loss(
        x, y, params, key)[0])(x)
    return negatives, has, value, grad

  whole = run(x)
  with monkeypatch.context() as m:
    m.setattr(_common, "_BLOCK_ELEMENTS", block_elements)
    blocked = run(x)
  np.testing.assert_array_equal(blocked[0], whole[0])
  np.testing.assert_array_equal(blocked[1], whole[1])
  np.testing.assert_allclose(blocked[2], whole[2], rtol=1e-12)
  np.testing.assert_allclose(blocked[3], whole[3], rtol=1e-10, atol=1e-14)
  assert len(np.unique(np.asarray(whole[0]))) > 10
