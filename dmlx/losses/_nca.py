"""Neighbourhood components analysis (Goldberger et al.) over the batch."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def nca(embeddings: Array, labels: Array, *, scale: float = 1.0
        ) -> tuple[Array, dict[str, Array]]:
  r"""NCA loss: leave-one-out stochastic nearest neighbour within the batch.

  .. math::
    p_{ij} = \frac{\exp(-s\,\|f_i - f_j\|^2)}
                  {\sum_{k \ne i} \exp(-s\,\|f_i - f_k\|^2)}, \qquad
    L = -\frac{1}{|A|} \sum_{i \in A} \log \sum_{j \ne i,\, y_j = y_i} p_{ij}

  over the anchors :math:`A` with at least one same-class example. Both sums
  are log-sum-exps, so far-apart embeddings (all :math:`p_{ij}` underflowing)
  stay finite. :math:`s` plays the role of the learned scale of the linear map
  :math:`A` in the paper.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    scale: :math:`s > 0`, inverse temperature on squared distances.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``expected_accuracy`` (mean over
    anchors of :math:`\sum_{j \in P_i} p_{ij}`, the paper's objective ``f(A)``
    divided by :math:`|A|`).

  References:
    Goldberger, Roweis, Hinton & Salakhutdinov, Neighbourhood Components
    Analysis, NIPS 2004 (the softmax neighbour probabilities and their
    log-likelihood objective).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [1., 0.]])
    >>> loss, _ = nca(x, jnp.array([0, 0, 1]))
    >>> round(float(loss), 4)  # (-log(1/2) - log(1 / (1 + e^-1))) / 2
    0.5032
  """
  name = "nca"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_positive(name, "scale", scale)
  logits = -scale * _distances.pairwise_distances(embeddings, squared=True)
  not_self = ~jnp.eye(labels.shape[0], dtype=bool)
  pos = _distances.positive_mask(labels)
  lse_all, _ = _common.masked_logsumexp(logits, not_self, axis=1)
  lse_pos, has_pos = _common.masked_logsumexp(logits, pos, axis=1)
  log_p = lse_pos - lse_all
  return -_common.masked_mean(log_p, has_pos), {
      "expected_accuracy": _common.masked_mean(jnp.exp(log_p), has_pos),
  }
