"""Proxy-NCA, softmax and normalised-softmax losses against NumPy loops."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx import losses

from loss_testing import check_grads as _check_grads  # pylint: disable=unused-import
from loss_testing import jit  # pylint: disable=unused-import
from loss_testing import x64  # pylint: disable=unused-import  (autouse fixture)


def _batch(seed=0, sizes=(5, 4, 2, 1), d=5):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(sizes)), sizes)
  labels = labels[rng.permutation(len(labels))]
  return rng.normal(size=(len(labels), d)), labels


def _unit(v):
  return v / np.linalg.norm(v)


def _ref_proxy_nca(x, y, proxies, scale, exclude_positive):
  terms = []
  for i in range(len(y)):
    xi = _unit(x[i])
    logit = [-scale * np.sum((xi - _unit(p)) ** 2) for p in proxies]
    denominator = sum(np.exp(logit[c]) for c in range(len(proxies))
                      if not (exclude_positive and c == y[i]))
    terms.append(-np.log(np.exp(logit[y[i]]) / denominator))
  return np.mean(terms)


def _ref_softmax(x, y, kernel, bias, normalized, temperature):
  terms = []
  for i in range(len(y)):
    logits = []
    for c in range(kernel.shape[1]):
      if normalized:
        logits.append(_unit(x[i]) @ _unit(kernel[:, c]) / temperature)
      else:
        logits.append(x[i] @ kernel[:, c] + bias[c])
    logits = np.array(logits)
    terms.append(np.log(np.sum(np.exp(logits))) - logits[y[i]])
  return np.mean(terms)


def _float64(params):
  return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)


@pytest.mark.parametrize("scale,exclude_positive", [(3.0, False), (1.0, True)])
def test_proxy_nca_matches_loops(scale, exclude_positive):
  x, y = _batch(0)
  params = _float64(losses.init_proxy_nca(jax.random.PRNGKey(0), 4, 5))
  loss, aux = jit(
      lambda x, p: losses.proxy_nca(x, y, p, scale=scale,
                                    exclude_positive=exclude_positive))(
                                        x, params)
  np.testing.assert_allclose(
      loss, _ref_proxy_nca(x, y, np.asarray(params["proxies"]), scale,
                           exclude_positive), rtol=1e-9)
  proxies = np.asarray(params["proxies"])
  nearest = [np.argmin([np.sum((_unit(xi) - _unit(p)) ** 2) for p in proxies])
             for xi in x]
  np.testing.assert_allclose(aux["accuracy"], np.mean(np.equal(nearest, y)))


def test_softmax_matches_loops():
  x, y = _batch(1)
  params = _float64(losses.init_softmax(jax.random.PRNGKey(1), 4, 5))
  params["bias"] = params["bias"] + jnp.array([0.1, -0.2, 0.3, 0.0])
  loss, _ = jit(lambda x, p: losses.softmax_cross_entropy(x, y, p))(
      x, params)
  np.testing.assert_allclose(
      loss, _ref_softmax(x, y, np.asarray(params["kernel"]),
                         np.asarray(params["bias"]), False, None), rtol=1e-9)


def test_normalized_softmax_matches_loops():
  x, y = _batch(2)
  params = _float64(losses.init_normalized_softmax(jax.random.PRNGKey(2), 4,
                                                   5))
  loss, _ = jit(lambda x, p: losses.normalized_softmax(
      x, y, p, temperature=0.1))(x, params)
  np.testing.assert_allclose(
      loss, _ref_softmax(x, y, np.asarray(params["kernel"]), None, True, 0.1),
      rtol=1e-9)


@pytest.mark.parametrize("name", ["proxy_nca", "softmax",
                                  "normalized_softmax"])
def test_gradients_wrt_embeddings_and_params(name):
  x, y = _batch(3)
  params = _float64(losses.init(name, jax.random.PRNGKey(3), 4, 5))
  _check_grads(lambda x, p: losses.apply(name, x, y, params=p)[0],
               (x, params))


@pytest.mark.parametrize("name,hyper", [
    ("proxy_nca", {}), ("proxy_nca", {"exclude_positive": True}),
    ("softmax", {}), ("normalized_softmax", {})])
def test_out_of_range_labels_are_ignored(name, hyper):
  """Rows labelled -1 or num_classes change neither the loss, its accuracy
  nor the other rows' gradients, and get no gradient themselves (both the
  masked form of the cross-entropy and its take_along_axis form)."""
  x, y = _batch(4)
  params = _float64(losses.init(name, jax.random.PRNGKey(4), 4, 5))
  loss = lambda x, y, p: losses.apply(name, x, y, params=p, **hyper)
  (full, aux), grads = jit(jax.value_and_grad(loss, argnums=(0, 2),
                                              has_aux=True))(x, y, params)
  padded_x = np.concatenate([x, np.ones((2, 5))])
  padded_y = np.concatenate([y, [-1, 4]])
  (padded, padded_aux), padded_grads = jit(jax.value_and_grad(
      loss, argnums=(0, 2), has_aux=True))(padded_x, padded_y, params)
  np.testing.assert_allclose(padded, full, rtol=1e-12)
  np.testing.assert_allclose(padded_aux["accuracy"], aux["accuracy"])
  np.testing.assert_allclose(padded_grads[0][:len(y)], grads[0], atol=1e-12)
  np.testing.assert_array_equal(padded_grads[0][len(y):], 0.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-12),
               padded_grads[1], grads[1])


def test_param_checks():
  x, y = _batch(0)
  with pytest.raises(ValueError, match="'proxies'"):
    losses.proxy_nca(x, y, {"kernel": jnp.ones((5, 4))})
  with pytest.raises(ValueError, match="embedding dim"):
    losses.softmax_cross_entropy(x, y, {"kernel": jnp.ones((3, 4))})
  with pytest.raises(ValueError, match="temperature"):
    losses.normalized_softmax(x, y, {"kernel": jnp.ones((5, 4))},
                              temperature=0.0)
  with pytest.raises(ValueError, match="num_classes"):
    losses.init_softmax(jax.random.PRNGKey(0), 0, 5)
