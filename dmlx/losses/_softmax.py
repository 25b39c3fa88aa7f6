"""Classification baselines for metric learning: softmax, normalised softmax."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def init_softmax(rng: Array, num_classes: int, dim: int) -> dict[str, Array]:
  """Linear classifier ``{'kernel': [dim, C], 'bias': [C]}``, C = num_classes.

  LeCun-normal kernel (flax ``nn.Dense``'s default) and zero bias.

  Examples:
    >>> import jax
    >>> p = init_softmax(jax.random.PRNGKey(0), 10, 64)
    >>> p["kernel"].shape, p["bias"].shape
    ((64, 10), (10,))
  """
  _common.check_sizes("init_softmax", num_classes, dim)
  kernel = jax.nn.initializers.lecun_normal()(
      rng, (int(dim), int(num_classes)), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((int(num_classes),), jnp.float32)}


def softmax_cross_entropy(embeddings: Array, labels: Array,
                          params: dict[str, Array]
                          ) -> tuple[Array, dict[str, Array]]:
  r"""Softmax cross-entropy of a linear classifier on the embeddings.

  .. math::
    L = -\frac{1}{B} \sum_i \log \frac{\exp(w_{y_i}^\top x_i + b_{y_i})}
                                      {\sum_c \exp(w_c^\top x_i + b_c)}

  The plain classification baseline of deep metric learning (e.g. Zhai & Wu,
  2019, compare against it). Examples whose label lies outside
  ``[0, num_classes)`` are ignored.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    params: ``{'kernel': [dim, num_classes], 'bias': [num_classes]}``.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``accuracy``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = init_softmax(jax.random.PRNGKey(0), num_classes=3, dim=4)
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    >>> loss, aux = softmax_cross_entropy(x, jnp.array([0, 0, 1, 1, 2, 2]),
    ...                                   params)
    >>> loss.shape
    ()
  """
  name = "softmax_cross_entropy"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  kernel = _common.get_param(name, params, "kernel", embeddings.shape[1],
                             axis=0)
  bias = jnp.asarray(params.get("bias", jnp.zeros(kernel.shape[1])))
  if bias.shape != (kernel.shape[1],):
    raise ValueError(
        f"{name}: params['bias'] must have shape ({kernel.shape[1]},), got "
        f"{bias.shape}.")
  logits = _distances.similarity_matrix(embeddings, kernel.T) + bias
  return _common.class_cross_entropy(logits, labels)


def init_normalized_softmax(rng: Array, num_classes: int,
                            dim: int) -> dict[str, Array]:
  """Class weights ``{'kernel': [dim, num_classes]}`` (standard normal).

  Only the directions matter: :func:`normalized_softmax` normalises columns.

  Examples:
    >>> import jax
    >>> init_normalized_softmax(jax.random.PRNGKey(0), 10, 64)["kernel"].shape
    (64, 10)
  """
  _common.check_sizes("init_normalized_softmax", num_classes, dim)
  return {"kernel": jax.random.normal(rng, (int(dim), int(num_classes)))}


def normalized_softmax(embeddings: Array, labels: Array,
                       params: dict[str, Array], *, temperature: float = 0.05
                       ) -> tuple[Array, dict[str, Array]]:
  r"""Normalised softmax (cosine classifier) loss of Zhai & Wu (2019).

  .. math::
    L = -\frac{1}{B} \sum_i \log
        \frac{\exp(\hat x_i^\top \hat w_{y_i} / \sigma)}
             {\sum_c \exp(\hat x_i^\top \hat w_c / \sigma)}

  with L2-normalised embeddings :math:`\hat x` and class weights
  :math:`\hat w` (no bias) and temperature :math:`\sigma`. Examples whose
  label lies outside ``[0, num_classes)`` are ignored.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    params: ``{'kernel': [dim, num_classes]}``.
    temperature: :math:`\sigma > 0` (0.05 in the paper).

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``accuracy``.

  References:
    Zhai & Wu, Classification is a Strong Baseline for Deep Metric Learning,
    BMVC 2019 (section 3, normalized softmax loss with temperature).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = init_normalized_softmax(jax.random.PRNGKey(0), 3, 4)
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    >>> loss, aux = normalized_softmax(x, jnp.array([0, 0, 1, 1, 2, 2]),
    ...                                params)
    >>> loss.shape
    ()
  """
  name = "normalized_softmax"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_positive(name, "temperature", temperature)
  kernel = _common.get_param(name, params, "kernel", embeddings.shape[1],
                             axis=0)
  cosine = _distances.similarity_matrix(
      _distances.l2_normalize(embeddings),
      _distances.l2_normalize(kernel, axis=0).T)
  return _common.class_cross_entropy(cosine / temperature, labels)
