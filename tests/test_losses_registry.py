"""Registry behaviour, degenerate batches, and jit/vmap consistency of every loss.

Runs in float32 (the default), as training does.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx import losses

B, D, C = 8, 4, 8   # batch, dim, classes (C = B so singleton labels are valid)

# Every registered loss with default hyper-parameters, plus the variants.
CASES = [(name, {}) for name in losses.REGISTRY] + [
    ("triplet_all", {"soft": True}),
    ("triplet_semihard", {"soft": True}),
    ("triplet_batch_hard", {"soft": True}),
    ("margin", {"sampler": "categorical", "beta_per_class": True}),
    ("proxy_nca", {"exclude_positive": True}),
]
# Losses that must be exactly 0 with no negatives or no positives.
ZERO_WITHOUT_PAIRS = {"triplet_all", "triplet_semihard", "triplet_batch_hard",
                      "lifted_structure", "nca"}


def _batches():
  """Named degenerate batches (all [B, D] float32 and [B] int32)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, D)).astype(np.float32)
  mixed = np.array([0, 0, 0, 1, 1, 2, 3, 3], np.int32)
  dup = x.copy()
  dup[1] = dup[0]   # same class
  dup[3] = dup[0]   # other class
  dup[6] = dup[5]   # other class
  batches = {
      "random": (x, mixed),
      "one_class": (x, np.zeros(B, np.int32)),
      "singletons": (x, np.arange(B, dtype=np.int32)),
      "duplicates": (dup, mixed),
      "all_identical": (np.tile(x[:1], (B, 1)), mixed),
      "all_zero": (np.zeros((B, D), np.float32), mixed),
      "huge": (x * 1e6, mixed),
      "tiny": (x * 1e-20, mixed),
  }
  names = list(batches)
  xs = jnp.asarray(np.stack([batches[n][0] for n in names]))
  ys = jnp.asarray(np.stack([batches[n][1] for n in names]))
  return names, xs, ys


def _value_and_grad(name, hyper):
  params = losses.init(name, jax.random.PRNGKey(0), C, D, **hyper)

  def f(x, labels, params, rng):
    return losses.apply(name, x, labels, params=params, rng=rng, **hyper)

  return jax.value_and_grad(f, argnums=(0, 2), has_aux=True), params


@pytest.mark.parametrize("name,hyper", CASES,
                         ids=[f"{n}-{'-'.join(h)}" for n, h in CASES])
def test_degenerate_batches_finite_and_vmap_matches_loop(name, hyper):
  names, xs, ys = _batches()
  vg, params = _value_and_grad(name, hyper)
  keys = jax.random.split(jax.random.PRNGKey(1), len(names))
  batched = jax.jit(jax.vmap(vg, in_axes=(0, 0, None, 0)))
  ((loss, aux), (gx, gp)) = batched(xs, ys, params, keys)
  single = jax.jit(vg)
  for i, case in enumerate(names):
    assert np.isfinite(loss[i]), (case, loss[i])
    assert np.all(np.isfinite(gx[i])), case
    for leaf in jax.tree.leaves(gp):
      assert np.all(np.isfinite(leaf[i])), case
    for key, value in aux.items():
      assert np.shape(value[i]) == () and np.isfinite(value[i]), (case, key)
    # vmap over a batch of batches equals a Python loop of single calls.
    (loss_i, aux_i), (gx_i, _) = single(xs[i], ys[i], params, keys[i])
    np.testing.assert_allclose(loss[i], loss_i, rtol=2e-5, atol=1e-6,
                               err_msg=case)
    np.testing.assert_allclose(gx[i], gx_i, rtol=2e-4, atol=1e-5,
                               err_msg=case)
    for key in aux:
      np.testing.assert_allclose(aux[key][i], aux_i[key], rtol=2e-5,
                                 atol=1e-6, err_msg=f"{case} {key}")
  if name in ZERO_WITHOUT_PAIRS:
    for case in ("one_class", "singletons"):
      assert loss[names.index(case)] == 0, case
  if name == "npair":
    for case in ("one_class", "singletons"):
      assert aux["npair_loss"][names.index(case)] == 0, case
  assert loss[names.index("random")] > 0


def test_jit_matches_eager_on_a_random_batch():
  names, xs, ys = _batches()
  x, y = xs[0], ys[0]
  rng = jax.random.PRNGKey(2)
  for name in losses.REGISTRY:
    params = losses.init(name, jax.random.PRNGKey(0), C, D)
    f = lambda x, y, p, r, name=name: losses.apply(name, x, y, params=p,
                                                   rng=r)[0]
    np.testing.assert_allclose(jax.jit(f)(x, y, params, rng),
                               f(x, y, params, rng), rtol=1e-5, err_msg=name)


def test_single_example_batch():
  x = jnp.ones((1, D))
  y = jnp.zeros((1,), jnp.int32)
  for name in ("triplet_all", "triplet_semihard", "lifted_structure", "nca",
               "contrastive"):
    loss, _ = jax.jit(lambda x, y, name=name: losses.apply(name, x, y))(x, y)
    assert loss == 0, name


def test_registry_names_and_get():
  assert set(losses.REGISTRY) == {
      "triplet_all", "triplet_semihard", "triplet_batch_hard", "contrastive",
      "npair", "margin", "proxy_nca", "lifted_structure", "nca", "softmax",
      "normalized_softmax"}
  assert losses.get("margin").takes_rng
  assert losses.get("proxy_nca").init is not None
  assert losses.get("contrastive").init is None
  with pytest.raises(ValueError, match="'tripplet'.*contrastive"):
    losses.get("tripplet")


def test_apply_forwards_hyper_parameters():
  names, xs, ys = _batches()
  x, y = xs[0], ys[0]
  via_apply, _ = losses.apply("triplet_all", x, y, margin=0.7, squared=True)
  direct, _ = losses.triplet_all(x, y, margin=0.7, squared=True)
  np.testing.assert_allclose(via_apply, direct)
  default, _ = losses.apply("triplet_all", x, y)
  assert not np.isclose(default, direct)


def test_apply_errors():
  names, xs, ys = _batches()
  x, y = xs[0], ys[0]
  with pytest.raises(ValueError, match="'margn'"):
    losses.apply("triplet_all", x, y, margn=0.1)
  with pytest.raises(ValueError, match="params"):
    losses.apply("proxy_nca", x, y)
  with pytest.raises(ValueError, match="rng"):
    losses.apply("margin", x, y, params=losses.init("margin", None, C, D))
  with pytest.raises(ValueError, match="no parameters"):
    losses.apply("nca", x, y, params={"w": jnp.ones(3)})


def test_init_filters_hyper_parameters_by_signature():
  rng = jax.random.PRNGKey(0)
  # The trainer passes the whole loss config to init and apply.
  config = {"beta0": 0.8, "beta_per_class": True, "alpha": 0.3, "nu": 0.01}
  params = losses.init("margin", rng, 5, D, **config)
  assert params["beta"].shape == (5,)
  np.testing.assert_allclose(params["beta"], 0.8)
  names, xs, ys = _batches()
  loss, _ = losses.apply("margin", xs[0], ys[0], params=params, rng=rng,
                         **config)   # beta0 is skipped by apply
  assert np.isfinite(loss)
  assert losses.init("triplet_all", rng, 5, D, margin=0.1) == {}
  assert losses.init("proxy_nca", rng, 5, D, scale=8.0)["proxies"].shape == (
      5, D)
  with pytest.raises(ValueError, match="'bogus'"):
    losses.init("proxy_nca", rng, 5, D, bogus=1)
