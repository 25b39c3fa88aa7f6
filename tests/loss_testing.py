"""Shared helpers of the loss tests: fast-compiling jit, a reverse-mode
gradient check at those compile settings, and a float64 fixture."""
import functools

import jax
import numpy as np
import pytest

# These tests compile many small programs; LLVM's optimisations would cost more
# than the programs ever run. Numerics do not depend on them.
jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def check_grads(f, args, eps=1e-6, rtol=1e-6, atol=1e-9, directions=3):
  """check_grads(order=1, modes=["rev"]) at the tests' compile settings.

  Like ``jax.test_util.check_vjp``: the reverse-mode gradient of ``f``
  (float64) against central finite differences of ``f`` along random
  directions. (check_grads itself cannot take a jit with compiler options.)
  """
  grads = jit(jax.grad(f, argnums=tuple(range(len(args)))))(*args)
  value = jit(f)
  rng = np.random.default_rng(0)
  for _ in range(directions):
    v = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), args)
    shift = lambda s: jax.tree.map(lambda a, u: a + s * eps * u, args, v)
    numeric = (value(*shift(1.0)) - value(*shift(-1.0))) / (2 * eps)
    analytic = sum(np.vdot(g, u) for g, u in zip(
        jax.tree.leaves(grads), jax.tree.leaves(v)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)
