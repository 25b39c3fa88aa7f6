"""Lifted structured embedding loss of Oh Song et al. (2016)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def lifted_structure(embeddings: Array, labels: Array, *, margin: float = 1.0,
                     max_positives: int | None = 7
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
    max_positives: width cap of the positive table the pair terms are
      evaluated on (a speed knob as in :func:`dmlx.losses.triplet_all`;
      ``None`` evaluates them on the whole ``[B, B]`` matrix).

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
  _common.check_max_positives(name, max_positives)
  d = _distances.pairwise_distances(embeddings)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  lse, has_neg = _common.masked_logsumexp(margin - d, neg, axis=1)   # [B]
  # Only the positive pairs' terms matter: they are evaluated on the positive
  # table (B x W pairs, not B x B) without gradient, and the gradient comes
  # back through terms linear in D and in the per-example log-sum-exps that
  # add exactly 0.
  d_const, lse_const = jax.lax.stop_gradient(d), jax.lax.stop_gradient(lse)
  li = jnp.where(has_neg, lse_const, -jnp.inf)
  total, num_active, num_valid, pair_slope, lse_slope = (
      _common.by_positive_table(
          labels, max_positives,
          lambda d, index, valid: _pair_terms_table(d, li, has_neg, index,
                                                    valid),
          lambda d: _pair_terms(d, li, has_neg, pos), d_const))
  total = (total + jnp.sum(pair_slope * (d - d_const))
           + jnp.sum(lse_slope * (lse - lse_const)))
  # Summing over ordered pairs counts each unordered pair twice, and
  # count(pos) = 2|P|, so 1/(2|P|) sum_P = sum_ordered / (2 count(pos)).
  loss = _common.safe_divide(
      total / 2, jnp.sum(_distances.pair_counts(labels)[0]))
  return loss, {"fraction_active": _common.safe_divide(num_active, num_valid)}


def _pair_values(d_ap: Array, li: Array, lj: Array, has_i: Array,
                 has_j: Array, mask: Array):
  """Per ordered positive pair: ``[J]_+^2``, ``J > 0``, and the slopes of
  ``[J]_+^2`` in ``D_ij`` and in each member's log-sum-exp.

  ``log(exp(l_i) + exp(l_j))`` over the members that have negatives, as
  max + log1p(exp(min - max)) (a log-sum-exp over a stacked axis of 2 is
  several times slower on CPU).
  """
  either = has_i | has_j
  both = has_i & has_j
  high = jnp.where(either, jnp.maximum(li, lj), 0)
  gap = jnp.where(both, jnp.minimum(li, lj) - high, 0)          # <= 0
  neg_term = jnp.where(
      either, high + jnp.where(both, jnp.log1p(jnp.exp(gap)), 0), 0)
  j = neg_term + d_ap
  valid = mask & either
  hinge = jnp.where(valid, jax.nn.relu(j), 0)
  slope = 2 * hinge
  # d neg_term / d l_i: the softmax weight of i, or 1 / 0 when one member
  # alone has negatives.
  share_i = jnp.where(both, jax.nn.sigmoid(jnp.where(both, li - lj, 0)),
                      has_i.astype(d_ap.dtype))
  return (jnp.square(hinge), valid & (j > 0), valid, slope,
          slope * share_i, slope * (1 - share_i))


def _pair_terms(d: Array, li: Array, has_neg: Array, pos: Array):
  """Sum over ordered positive pairs of ``[J]_+^2``, #active, #valid pairs and
  the slopes of the sum in ``D [B, B]`` and in the log-sum-exps ``[B]``."""
  value, active, valid, slope, to_i, to_j = _pair_values(
      d, li[:, None], li[None, :], has_neg[:, None], has_neg[None, :], pos)
  return (jnp.sum(value), _common.count(active), _common.count(valid),
          slope, jnp.sum(to_i, axis=1) + jnp.sum(to_j, axis=0))


def _pair_terms_table(d: Array, li: Array, has_neg: Array, index: Array,
                      valid: Array):
  """:func:`_pair_terms` on each anchor's ``[B, W]`` positive table."""
  rows = jnp.arange(d.shape[0])[:, None]
  value, active, valid, slope, to_i, to_j = _pair_values(
      jnp.take_along_axis(d, index, 1), li[:, None], li[index],
      has_neg[:, None], has_neg[index], valid)
  pair_slope = jnp.zeros_like(d).at[rows, index].set(slope)
  lse_slope = jnp.sum(to_i, axis=1) + jnp.zeros_like(li).at[index].add(to_j)
  return (jnp.sum(value), _common.count(active), _common.count(valid),
          pair_slope, lse_slope)
