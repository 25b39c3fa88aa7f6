"""Tests for dmlx.losses._distances and the masked reductions in _common."""
import functools

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx.losses import _common
from dmlx.losses import _distances

# These tests compile many small programs; LLVM's optimisations would cost more
# than the programs ever run. Numerics do not depend on them. (Functions given
# to check_grads use plain jax.jit: compiler options only work at top level.)
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})



@pytest.fixture(autouse=True)
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def _loop_distances(x, y):
  out = np.zeros((len(x), len(y)))
  for i in range(len(x)):
    for j in range(len(y)):
      out[i, j] = np.sqrt(np.sum((x[i] - y[j]) ** 2))
  return out


def test_pairwise_distances_match_loops():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
  pairwise = jit(_distances.pairwise_distances,
                     static_argnames="squared")
  np.testing.assert_allclose(pairwise(x, y), _loop_distances(x, y),
                             rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(pairwise(x, squared=True),
                             _loop_distances(x, x) ** 2, rtol=1e-10,
                             atol=1e-10)
  d = pairwise(x)
  np.testing.assert_array_equal(np.diag(d), 0.0)


def test_pairwise_distances_gradient_finite_at_zero_distance():
  x = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
  grad = jit(jax.grad(
      lambda x: jnp.sum(_distances.pairwise_distances(x))))(x)
  assert np.all(np.isfinite(grad))
  # Rows 0/1 and 2/3 coincide: the zero distances pull nothing; row 0 is in
  # four nonzero entries, D[0, 2], D[0, 3], D[2, 0], D[3, 0].
  diff = np.array([1.0, 2.0])
  expected = 4 * diff / np.linalg.norm(diff)
  np.testing.assert_allclose(grad[0], expected, rtol=1e-6)


def test_pairwise_distances_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(5, 3)))
  jax.test_util.check_grads(
      jax.jit(lambda x: jnp.sum(jnp.sin(_distances.pairwise_distances(x)))),
      (x,), order=1, modes=["rev"])


def _chain_distances(x, y=None, squared=False):
  """The expanded form as a plain maximum / where / safe-sqrt chain (what
  ``_from_products``'s JVP rule stands in for)."""
  same = y is None
  y = x if same else y
  sq = jnp.maximum(jnp.sum(x * x, 1)[:, None] + jnp.sum(y * y, 1)[None, :]
                   - 2 * x @ y.T, 0)
  if same:
    sq = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0, sq)
  return sq if squared else _distances.safe_sqrt(sq)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_pairwise_distances_derivatives_in_every_mode(cross, squared):
  """Reverse and forward mode derivatives of the distances equal the plain
  chain's with two coincident rows (a zero distance whose pull is 0) in the
  batch, and so do second derivatives away from them (at an exact zero the
  chain's maximum passes half the curvature, the JVP rule none)."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, 3))
  x[4] = x[1]
  x = jnp.asarray(x)
  y = jnp.asarray(rng.normal(size=(4, 3))) if cross else None
  w = jnp.asarray(rng.normal(size=(6, 4 if cross else 6)))
  ours = lambda x: jnp.sum(w * jnp.sin(_distances.pairwise_distances(
      x, y, squared=squared)))
  plain = lambda x: jnp.sum(w * jnp.sin(_chain_distances(x, y, squared)))
  np.testing.assert_allclose(ours(x), plain(x), rtol=1e-12)
  np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.grad(plain)(x),
                             rtol=1e-9, atol=1e-12)
  t = jnp.asarray(rng.normal(size=x.shape))
  np.testing.assert_allclose(jax.jvp(ours, (x,), (t,))[1],
                             jax.jvp(plain, (x,), (t,))[1], rtol=1e-9,
                             atol=1e-12)
  apart = x.at[4].add(0.5)
  np.testing.assert_allclose(jax.hessian(ours)(apart),
                             jax.hessian(plain)(apart), rtol=1e-7, atol=1e-9)
  if not cross:
    assert np.all(np.isfinite(np.asarray(jax.grad(ours)(x))))


def test_pairwise_distances_bad_shapes():
  with pytest.raises(ValueError, match="same dim"):
    _distances.pairwise_distances(jnp.ones((3, 2)), jnp.ones((3, 4)))


def test_l2_normalize_zero_vector_finite():
  x = jnp.zeros((2, 3))
  np.testing.assert_array_equal(_distances.l2_normalize(x), 0.0)
  grad = jax.grad(lambda x: jnp.sum(_distances.l2_normalize(x) ** 2 + x))(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(
      _distances.l2_normalize(jnp.array([[3.0, 4.0]])), [[0.6, 0.8]])


def test_label_masks():
  labels = jnp.array([0, 1, 0, 2])
  same = np.array(_distances.same_class_mask(labels))
  pos = np.array(_distances.positive_mask(labels))
  neg = np.array(_distances.negative_mask(labels))
  for i in range(4):
    for j in range(4):
      assert same[i, j] == (labels[i] == labels[j])
      assert pos[i, j] == (labels[i] == labels[j] and i != j)
      assert neg[i, j] == (labels[i] != labels[j])


def test_masked_logsumexp_value_and_empty_rows():
  x = jnp.array([[1.0, 2.0, 1000.0], [-1e4, 5.0, 3.0], [1.0, 2.0, 3.0]])
  mask = jnp.array([[True, True, False], [True, False, True],
                    [False, False, False]])
  value, nonempty = jit(_common.masked_logsumexp)(x, mask)
  np.testing.assert_allclose(value[0], np.log(np.e + np.e ** 2))
  np.testing.assert_allclose(value[1], 3.0)
  assert value[2] == 0 and list(nonempty) == [True, True, False]
  grad = jit(jax.grad(
      lambda x: jnp.sum(_common.masked_logsumexp(x, mask)[0])))(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.array(grad)[~np.array(mask)], 0.0)


def test_masked_max_min_and_mean():
  x = jnp.array([[1.0, 5.0, 3.0], [2.0, 0.0, 1.0]])
  mask = jnp.array([[True, False, True], [False, False, False]])
  value, nonempty = _common.masked_max(x, mask)
  np.testing.assert_array_equal(value, [3.0, 0.0])
  np.testing.assert_array_equal(nonempty, [True, False])
  value, _ = _common.masked_min(x, mask)
  np.testing.assert_array_equal(value, [1.0, 0.0])
  assert _common.masked_mean(x, mask) == 2.0
  assert _common.masked_mean(x, jnp.zeros_like(mask)) == 0.0


def test_check_inputs_errors():
  with pytest.raises(ValueError, match=r"\[batch_size, dim\]"):
    _common.check_inputs(jnp.ones(3), jnp.zeros(3, jnp.int32), "f")
  with pytest.raises(ValueError, match="floating"):
    _common.check_inputs(jnp.ones((3, 2), jnp.int32),
                         jnp.zeros(3, jnp.int32), "f")
  with pytest.raises(ValueError, match=r"labels must have shape \[batch_size"):
    _common.check_inputs(jnp.ones((3, 2)), jnp.zeros(4, jnp.int32), "f")
  with pytest.raises(ValueError, match="integers"):
    _common.check_inputs(jnp.ones((3, 2)), jnp.zeros(3), "f")


def test_self_gram_is_the_plain_product_in_value_and_every_mode():
  # _self_gram's JVP rule (a speed measure for reverse mode on CPU) gives
  # the plain product's values, gradients, forward-mode derivatives and
  # second derivatives.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(512, 4)))
  w = jnp.asarray(np.random.default_rng(1).normal(size=(512, 512)))

  def loss(gram):
    return lambda x: jnp.sum(w * jnp.sqrt(jnp.maximum(
        jnp.sum(x * x, 1)[:, None] + jnp.sum(x * x, 1)[None, :]
        - 2 * gram(x), 0) + 1.0))

  plain, ours = loss(lambda x: x @ x.T), loss(_distances._self_gram)
  np.testing.assert_allclose(_distances._self_gram(x), x @ x.T, rtol=1e-12)
  np.testing.assert_allclose(jax.jit(jax.grad(ours))(x), jax.grad(plain)(x),
                             rtol=1e-9)
  t = jnp.asarray(np.random.default_rng(2).normal(size=x.shape))
  np.testing.assert_allclose(jax.jvp(ours, (x,), (t,))[1],
                             jax.jvp(plain, (x,), (t,))[1], rtol=1e-9)
  small = x[:6]
  w6 = w[:6, :6]
  second = lambda gram: jax.hessian(
      lambda x: jnp.sum(w6 * gram(x) ** 2))(small)
  np.testing.assert_allclose(second(_distances._self_gram),
                             second(lambda x: x @ x.T), rtol=1e-9)


def test_pair_counts_are_the_masks_row_sums():
  rng = np.random.default_rng(0)
  for labels in [np.arange(12) // 3, rng.integers(0, 5, size=40),
                 np.zeros(6, int), np.arange(7), np.array([3])]:
    y = jnp.asarray(labels)
    num_pos, num_neg = _distances.pair_counts(y)
    pos, neg = _distances.positive_mask(y), _distances.negative_mask(y)
    np.testing.assert_array_equal(num_pos, np.sum(pos, 1))
    np.testing.assert_array_equal(num_neg, np.sum(neg, 1))
    assert num_pos.dtype == num_neg.dtype == jnp.float32
