"""Proxy-NCA: NCA against one learned proxy per class (Movshovitz-Attias)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def init_proxy_nca(rng: Array, num_classes: int, dim: int) -> dict[str, Array]:
  """Random proxies ``{'proxies': [num_classes, dim]}`` (standard normal).

  Only their directions matter: :func:`proxy_nca` normalises them.

  Examples:
    >>> import jax
    >>> init_proxy_nca(jax.random.PRNGKey(0), 10, 64)["proxies"].shape
    (10, 64)
  """
  _common.check_sizes("init_proxy_nca", num_classes, dim)
  return {"proxies": jax.random.normal(rng, (int(num_classes), int(dim)))}


def proxy_nca(embeddings: Array, labels: Array, params: dict[str, Array], *,
              scale: float = 3.0, exclude_positive: bool = False
              ) -> tuple[Array, dict[str, Array]]:
  r"""Proxy-NCA loss with L2-normalised embeddings and proxies.

  .. math::
    L(x, y) = -\log \frac{\exp(-s\, \|\hat x - \hat p_y\|^2)}
                         {\sum_{z \in Z} \exp(-s\, \|\hat x - \hat p_z\|^2)}

  averaged over the batch, with :math:`\hat\cdot` the L2 normalisation and
  :math:`s` a scale (inverse temperature). By default :math:`Z` holds *all*
  proxies, i.e. a softmax cross-entropy over negative squared distances (as
  common re-implementations and pytorch-metric-learning's ``ProxyNCALoss``
  with ``softmax_scale=s``; bounded below by 0). ``exclude_positive=True``
  gives the paper's form, :math:`Z = \{p_z : z \ne y\}`, which can go
  negative. On the unit sphere :math:`\|\hat x - \hat p\|^2 = 2 - 2\cos`, so
  :math:`s = 3` equals a cosine softmax at temperature 1/6. No ProxyNCA++
  extras (no temperature schedule, no proxy-specific learning rate here: give
  the proxies their own optax learning rate in the trainer if wanted).

  Examples whose label lies outside ``[0, num_classes)`` are ignored (a
  padding label such as -1 contributes nothing).

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    params: ``{'proxies': [num_classes, dim]}`` from :func:`init_proxy_nca`.
    scale: :math:`s > 0`.
    exclude_positive: leave the positive proxy out of the denominator.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``accuracy`` (the nearest proxy
    has the example's class).

  References:
    Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, No Fuss Distance Metric
    Learning using Proxies, ICCV 2017 (section 3, the proxy NCA loss).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = init_proxy_nca(jax.random.PRNGKey(0), num_classes=3, dim=4)
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    >>> loss, aux = proxy_nca(x, jnp.array([0, 0, 1, 1, 2, 2]), params)
    >>> bool(loss > 0)
    True
  """
  name = "proxy_nca"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_positive(name, "scale", scale)
  proxies = _common.get_param(name, params, "proxies", embeddings.shape[1],
                              axis=1)
  d2 = _distances.pairwise_distances(
      _distances.l2_normalize(embeddings), _distances.l2_normalize(proxies),
      squared=True)
  logits = -scale * d2
  return _common.class_cross_entropy(logits, labels, exclude_positive)
