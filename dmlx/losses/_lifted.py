"""Lifted structured embedding loss of Oh Song et al. (2016)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def lifted_structure(embeddings: Array, labels: Array, *, margin: float = 1.0
                     ) -> tuple[Array, dict[str, Array]]:
  r"""Smooth lifted structured loss (Oh Song et al., eq. 4).

  For each positive pair :math:`(i, j) \in P`, the negatives of *both*
  members compete through one smooth maximum:

  .. math::
    \tilde J_{ij} = \log\Big(\sum_{(i,k) \in N} e^{\alpha - D_{ik}}
                    + \sum_{(j,l) \in N} e^{\alpha - D_{jl}}\Big) + D_{ij},
    \qquad
    \tilde J = \frac{1}{2|P|} \sum_{(i,j) \in P} \big[\tilde J_{ij}\big]_+^2

  with :math:`P` the unordered positive pairs and :math:`\alpha` the margin.
  The log is evaluated as a log-sum-exp of the two per-example log-sum-exps,
  so it is stable for any distance. A pair whose members have no negative
  contributes 0 (the log of an empty sum is :math:`-\infty`).

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`\alpha`.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``fraction_active`` (positive
    pairs with :math:`\tilde J_{ij} > 0`).

  References:
    Oh Song, Xiang, Jegelka & Savarese, Deep Metric Learning via Lifted
    Structured Feature Embedding, CVPR 2016 (eq. 4).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [1.5, 0.]])
    >>> loss, _ = lifted_structure(x, jnp.array([0, 0, 1]), margin=1.0)
    >>> round(float(loss), 4)
    0.5546
  """
  name = "lifted_structure"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  d = _distances.pairwise_distances(embeddings)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  lse, has_neg = _common.masked_logsumexp(margin - d, neg, axis=1)   # [B]
  # log(exp(lse_i) + exp(lse_j)) over the members that have negatives, as
  # max + log1p(exp(min - max)): elementwise on [B, B] (a log-sum-exp over a
  # stacked [B, B, 2] axis is several times slower on CPU).
  li = jnp.where(has_neg, lse, -jnp.inf)
  hi, hj = li[:, None], li[None, :]
  either = has_neg[:, None] | has_neg[None, :]
  both = has_neg[:, None] & has_neg[None, :]
  high = jnp.where(either, jnp.maximum(hi, hj), 0)
  gap = jnp.where(both, jnp.minimum(hi, hj) - high, 0)          # <= 0
  neg_term = jnp.where(
      either, high + jnp.where(both, jnp.log1p(jnp.exp(gap)), 0), 0)
  j = neg_term + d
  valid = pos & either
  per_pair = jnp.where(valid, jnp.square(jax.nn.relu(j)), 0)
  # Summing over ordered pairs counts each unordered pair twice, and
  # count(pos) = 2|P|, so 1/(2|P|) sum_P = sum_ordered / (2 count(pos)).
  loss = _common.safe_divide(jnp.sum(per_pair) / 2, _common.count(pos))
  return loss, {"fraction_active": _common.masked_mean(j > 0, valid)}
