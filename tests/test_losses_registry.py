"""Registry behaviour, degenerate batches, jit/vmap consistency of all losses.

Runs in float32 (the default), as training does.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx import losses

# These tests compile many small programs; LLVM's optimisations would cost more
# than the programs ever run. Numerics do not depend on them.
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


B, D, C = 8, 4, 8   # batch, dim, classes (C = B so singleton labels are valid)

# Every registered loss with default hyper-parameters, plus the variants.
CASES = [(name, {}) for name in losses.REGISTRY]
VARIANTS = [
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


@pytest.mark.parametrize(
    "name,hyper,check_vmap",
    [(n, h, True) for n, h in CASES] + [(n, h, False) for n, h in VARIANTS],
    ids=[n for n, _ in CASES] + [f"{n}-{'-'.join(h)}" for n, h in VARIANTS])
def test_degenerate_batches_finite_and_vmap_matches_loop(name, hyper,
                                                         check_vmap):
  names, xs, ys = _batches()
  vg, params = _value_and_grad(name, hyper)
  keys = jax.random.split(jax.random.PRNGKey(1), len(names))
  single = jit(vg)
  outputs = [single(xs[i], ys[i], params, keys[i]) for i in range(len(names))]
  for case, ((loss, aux), (gx, gp)) in zip(names, outputs):
    assert np.isfinite(loss), (case, loss)
    assert np.all(np.isfinite(gx)), case
    for leaf in jax.tree.leaves(gp):
      assert np.all(np.isfinite(leaf)), case
    for key, value in aux.items():
      assert np.shape(value) == () and np.isfinite(value), (case, key)
  losses_by_case = {case: out[0][0] for case, out in zip(names, outputs)}
  if name in ZERO_WITHOUT_PAIRS:
    assert losses_by_case["one_class"] == 0
    assert losses_by_case["singletons"] == 0
  if name == "npair":
    for case in ("one_class", "singletons"):
      assert outputs[names.index(case)][0][1]["npair_loss"] == 0, case
  assert losses_by_case["random"] > 0
  if not check_vmap:
    return
  # vmap over a leading batch-of-batches axis equals the Python loop above.
  batched = jit(jax.vmap(vg, in_axes=(0, 0, None, 0)))
  (loss, aux), (gx, gp) = batched(xs, ys, params, keys)
  for i, (case, ((loss_i, aux_i), (gx_i, gp_i))) in enumerate(
      zip(names, outputs)):
    np.testing.assert_allclose(loss[i], loss_i, rtol=2e-5, atol=1e-6,
                               err_msg=case)
    np.testing.assert_allclose(gx[i], gx_i, rtol=2e-4, atol=1e-5,
                               err_msg=case)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp_i)):
      np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=1e-5, err_msg=case)
    for key in aux:
      np.testing.assert_allclose(aux[key][i], aux_i[key], rtol=2e-5,
                                 atol=1e-6, err_msg=f"{case} {key}")


def test_jit_matches_eager_on_a_random_batch():
  # Eager dispatch compiles every primitive separately, so only a few losses
  # here; the jitted forms of all losses are checked against NumPy loops in
  # the per-family test files.
  names, xs, ys = _batches()
  x, y = xs[0], ys[0]
  for name in ("contrastive", "softmax"):
    params = losses.init(name, jax.random.PRNGKey(0), C, D)
    f = lambda x, y, p, name=name: losses.apply(name, x, y, params=p)[0]
    np.testing.assert_allclose(jit(f)(x, y, params), f(x, y, params),
                               rtol=1e-5, err_msg=name)


def test_single_example_batch():
  x = jnp.ones((1, D))
  y = jnp.zeros((1,), jnp.int32)
  for name in ("triplet_all", "triplet_semihard", "lifted_structure", "nca",
               "contrastive"):
    loss, _ = jit(lambda x, y, name=name: losses.apply(name, x, y))(x, y)
    assert loss == 0, name


def test_registry_names_and_get():
  assert set(losses.REGISTRY) == {
      "triplet_all", "triplet_semihard", "triplet_batch_hard", "contrastive",
      "npair", "margin", "proxy_nca", "lifted_structure", "nca", "softmax",
      "normalized_softmax", "dmlda_contrastive", "smooth_triplet"}
  assert losses.get("margin").takes_rng
  assert losses.get("proxy_nca").init is not None
  assert losses.get("contrastive").init is None
  with pytest.raises(ValueError, match="'tripplet'.*contrastive"):
    losses.get("tripplet")


def test_apply_forwards_hyper_parameters():
  names, xs, ys = _batches()
  x, y = xs[0], ys[0]
  via_apply, _ = losses.apply("contrastive", x, y, neg_margin=2.0,
                              squared=True)
  direct, _ = losses.contrastive(x, y, neg_margin=2.0, squared=True)
  np.testing.assert_allclose(via_apply, direct)
  default, _ = losses.apply("contrastive", x, y)
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
  # apply skips beta0 (an init-only name); eval_shape traces without compiling.
  loss, _ = jax.eval_shape(lambda x, y: losses.apply(
      "margin", x, y, params=params, rng=rng, **config), xs[0], ys[0])
  assert loss.shape == ()
  assert losses.init("triplet_all", rng, 5, D, margin=0.1) == {}
  assert losses.init("proxy_nca", rng, 5, D, scale=8.0)["proxies"].shape == (
      5, D)
  with pytest.raises(ValueError, match="'bogus'"):
    losses.init("proxy_nca", rng, 5, D, bogus=1)
