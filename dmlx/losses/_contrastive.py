"""Contrastive (siamese pair) loss of Hadsell, Chopra & LeCun (2006)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def contrastive(embeddings: Array, labels: Array, *, pos_margin: float = 0.0,
                neg_margin: float = 1.0, squared: bool = False
                ) -> tuple[Array, dict[str, Array]]:
  r"""Contrastive loss over every pair of the batch.

  .. math::
    L = \frac{1}{|P| + |N|} \Big(\sum_{(i,j) \in P} [D_{ij} - m_+]_+^2
        + \sum_{(i,j) \in N} [m_- - D_{ij}]_+^2\Big)

  with :math:`P` the positive pairs (same class, :math:`i \ne j`), :math:`N`
  the negative pairs, both as ordered pairs (each unordered pair is counted
  twice, which leaves the mean unchanged). With :math:`m_+ = 0` this is
  Hadsell et al.'s eq. 4 without its constant factor 1/2: similar pairs pay
  :math:`D^2`, dissimilar pairs :math:`\max(0, m - D)^2`. A batch without
  pairs gives 0. Note that duplicate embeddings of different classes
  (:math:`D = 0`) receive a zero (sub)gradient: the distance is not
  differentiable there.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    pos_margin: :math:`m_+`, distance below which positives pay nothing.
    neg_margin: :math:`m_-`, distance beyond which negatives pay nothing.
    squared: use squared Euclidean distances for :math:`D`.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``positive_loss`` and
    ``negative_loss`` (means over their pairs) and ``fraction_active_positive``
    / ``fraction_active_negative``.

  References:
    Hadsell, Chopra & LeCun, Dimensionality Reduction by Learning an Invariant
    Mapping, CVPR 2006 (eq. 4).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [0.5, 0.]])
    >>> loss, _ = contrastive(x, jnp.array([0, 0, 1]), neg_margin=1.0)
    >>> round(float(loss), 4)  # (2 * 1 + 2 * 0.25 + 0) / 6
    0.4167
  """
  name = "contrastive"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_positive(name, "neg_margin", neg_margin, allow_zero=True)
  _common.check_positive(name, "pos_margin", pos_margin, allow_zero=True)
  d = _distances.pairwise_distances(embeddings, squared=squared)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  pos_hinge = jax.nn.relu(d - pos_margin)
  neg_hinge = jax.nn.relu(neg_margin - d)
  pos_total = jnp.sum(jnp.where(pos, jnp.square(pos_hinge), 0))
  neg_total = jnp.sum(jnp.where(neg, jnp.square(neg_hinge), 0))
  num_pos, num_neg = map(jnp.sum, _distances.pair_counts(labels))
  loss = _common.safe_divide(pos_total + neg_total, num_pos + num_neg)
  return loss, {
      "positive_loss": _common.safe_divide(pos_total, num_pos),
      "negative_loss": _common.safe_divide(neg_total, num_neg),
      "fraction_active_positive": _common.safe_divide(
          _common.count(pos & (pos_hinge > 0)), num_pos),
      "fraction_active_negative": _common.safe_divide(
          _common.count(neg & (neg_hinge > 0)), num_neg),
  }
