"""DML-DA's contrastive base loss, eq. (2), which the general contrastive
loss of :mod:`dmlx.losses` does not express: the squared distance for
positive pairs, an *unsquared* hinge on the squared distance for negative
pairs, summed (the paper) or averaged over the pairs of the batch.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from dmlx.losses._density import _check_batch

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def dmlda_contrastive(embeddings: Array, labels: Array, *,
                      margin: float = 1.0, reduction: str = "mean"
                      ) -> tuple[Array, dict[str, Array]]:
  r"""Contrastive loss of DML-DA, eq. (2), summed or averaged over the pairs.

  .. math::
    \mathcal{L}_{pair} = \frac{1}{|\mathcal{M}| + |\mathcal{C}|} \Big(
        \sum_{(x_i, x_j) \in \mathcal{M}} \mathcal{D}(x_i, x_j)
      + \sum_{(x_i, x_j) \in \mathcal{C}} \max(0, m_p - \mathcal{D}(x_i, x_j))
      \Big)

  with :math:`\mathcal{D}` the *squared* Euclidean distance of eq. (1),
  :math:`\mathcal{M}` the positive pairs (same class, i ≠ j) and
  :math:`\mathcal{C}` the negative pairs of the batch, both taken as ordered
  pairs (each unordered pair twice, which leaves the mean unchanged).
  ``reduction="sum"`` is eq. (2) as the paper writes it, the sum over the
  batch's unordered pairs, B(B-1)/2 times the mean: the scale on which the
  paper's λ = 10 in eq. (9) weighs the density regulariser.
  Unlike :func:`dmlx.losses.contrastive` (Hadsell et al.: squared terms on
  the Euclidean distance), both terms here are linear in the squared distance
  -- so the loss is smooth everywhere, including identical embeddings. A
  batch of one example gives 0.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings f(x_i) (the paper's are
      L2-normalised, so D ∈ [0, 4]).
    labels: ``[batch_size]`` integer class labels.
    margin: m_p >= 0 of the hinge (paper: 1).
    reduction: ``"mean"`` over the pairs or ``"sum"`` over unordered pairs.

  Returns:
    ``(loss, aux)``: the scalar loss and scalars ``positive_loss`` (mean D over
    positive pairs), ``negative_loss`` (mean hinge over negative pairs) and
    ``fraction_active_negative`` (negative pairs with D < m_p).

  References:
    Li, Yao, Pan, Chao, Mei, "Deep Metric Learning with Density Adaptivity",
    IEEE Trans. Multimedia, 2019, eqs. (1)-(2).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [0.5, 0.]])
    >>> loss, _ = dmlda_contrastive(x, jnp.array([0, 0, 1]), margin=1.0)
    >>> round(float(loss), 4)  # (2 * 1 + 2 * 0.75 + 0) / 6
    0.5833
  """
  _check_batch(embeddings, labels, "dmlda_contrastive")
  if reduction not in ("mean", "sum"):
    raise ValueError(f"dmlda_contrastive: reduction must be 'mean' or 'sum', "
                     f"got {reduction!r}.")
  if isinstance(margin, numbers.Real) and not margin >= 0:  # traced: unchecked
    raise ValueError(f"dmlda_contrastive: margin must be >= 0, got "
                     f"{margin!r}.")
  b = embeddings.shape[0]
  sq = jnp.sum(jnp.square(embeddings), axis=-1)
  gram = jnp.matmul(embeddings, embeddings.T, precision=_HIGHEST)
  dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)   # eq. (1)
  off_diag = ~jnp.eye(b, dtype=bool)
  same = labels[:, None] == labels[None, :]
  positive = (same & off_diag).astype(dist.dtype)
  negative = (~same).astype(dist.dtype)
  hinge = jax.nn.relu(margin - dist)
  pos_total = jnp.sum(positive * dist)
  neg_total = jnp.sum(negative * hinge)
  num_pos, num_neg = jnp.sum(positive), jnp.sum(negative)
  if reduction == "sum":
    loss = 0.5 * (pos_total + neg_total)          # each unordered pair once
  else:
    loss = (pos_total + neg_total) / jnp.maximum(num_pos + num_neg, 1.0)
  return loss, {
      "positive_loss": pos_total / jnp.maximum(num_pos, 1.0),
      "negative_loss": neg_total / jnp.maximum(num_neg, 1.0),
      "fraction_active_negative":
          jnp.sum(negative * (dist < margin)) / jnp.maximum(num_neg, 1.0),
  }
