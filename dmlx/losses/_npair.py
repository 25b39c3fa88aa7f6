"""Multi-class N-pair loss of Sohn (2016), for any batch composition."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


_PAIRS = ("all", "one_per_class")


def npair(embeddings: Array, labels: Array, *, l2_reg: float = 0.002,
          pairs: str = "all") -> tuple[Array, dict[str, Array]]:
  r"""Multi-class N-pair loss with an L2 penalty on the embeddings.

  Sohn's batches hold exactly one (anchor, positive) pair per class. To accept
  any label composition, by default (``pairs="all"``) every other same-class
  example of an anchor :math:`f` serves in turn as its positive :math:`f^+`
  and all other-class examples :math:`\{f_n\}` as its negatives:

  .. math::
    \ell(f, f^+) = \log\Big(1 + \sum_n \exp(f^\top f_n - f^\top f^+)\Big)
                 = \mathrm{softplus}\big(\mathrm{LSE}_n(f^\top f_n)
                   - f^\top f^+\big),

    L = \frac{1}{|A|} \sum_{a \in A} \frac{1}{|P_a|}
        \sum_{p \in P_a} \ell(f_a, f_p)
        + \lambda \frac{1}{B} \sum_i \|f_i\|_2^2

  over the anchors :math:`A` that have a positive (so a batch without
  positives pays only the L2 term, and an anchor without negatives pays 0).
  The log-sum-exp form is stable for any similarity magnitude.

  ``pairs="one_per_class"`` is Sohn's eq. 3 on the batch's N pairs
  :math:`\{(f_i, f_i^+)\}_{i=1}^N`, one per class that has at least two
  examples (anchor: its first example in batch order, positive: its second;
  pytorch-metric-learning's ``NPairsLoss`` picks the same pairs), each
  anchor's negatives being the *other pairs' positives*:

  .. math::
    L = \frac{1}{N} \sum_{i=1}^N
        \log\Big(1 + \sum_{j \ne i} \exp(f_i^\top f_j^+ - f_i^\top f_i^+)\Big)
        + \lambda \frac{1}{B} \sum_i \|f_i\|_2^2,

  a softmax cross-entropy over the ``[N, N]`` anchor-positive similarities
  (0 for :math:`N \le 1`); the L2 term still averages over the whole batch.
  Its cost is ``O(N^2 D)`` instead of ``O(B^2 D)``: the pairs are gathered
  into a table of ``B // 4`` rows when the batch has at most that many pairs
  (P x K batches with K >= 4), else of ``B // 2`` rows (``jax.lax.cond`` at
  run time; the value does not depend on the table size).

  Args:
    embeddings: ``[batch_size, dim]`` embeddings (not normalised: the L2 term
      keeps their norm in check, as in the paper).
    labels: ``[batch_size]`` integer class labels.
    l2_reg: :math:`\lambda`, weight of the mean squared embedding norm.
    pairs: ``"all"`` (every positive of every anchor, all other-class
      examples as negatives) or ``"one_per_class"`` (Sohn's N pairs).

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``npair_loss`` (without the L2
    term), ``l2_loss`` (mean squared norm, unweighted) and ``accuracy`` (the
    fraction of (anchor, positive) pairs whose positive is more similar than
    every negative).

  References:
    Sohn, Improved Deep Metric Learning with Multi-class N-pair Loss
    Objective, NIPS 2016 (the multi-class N-pair loss and its L2
    regularisation of the embedding vectors).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1., 0.], [1., 0.], [0., 1.], [0., 1.]])
    >>> loss, aux = npair(x, jnp.array([0, 0, 1, 1]), l2_reg=0.0)
    >>> round(float(loss), 4)  # log(1 + 2 exp(0 - 1))
    0.5514
  """
  name = "npair"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_positive(name, "l2_reg", l2_reg, allow_zero=True)
  _common.check_choice(name, "pairs", pairs, _PAIRS)
  l2_loss = jnp.mean(jnp.sum(jnp.square(embeddings), axis=1))
  if pairs == "one_per_class":
    npair_loss, accuracy = _one_pair_per_class(embeddings, labels)
    return npair_loss + l2_reg * l2_loss, {
        "npair_loss": npair_loss,
        "l2_loss": l2_loss,
        "accuracy": accuracy,
    }
  sim = _distances.similarity_matrix(embeddings)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  lse_neg, has_neg = _common.masked_logsumexp(sim, neg, axis=1)   # [B]
  x = lse_neg[:, None] - sim                                       # [a, p]
  per_pair = jnp.where(has_neg[:, None], jax.nn.softplus(x), 0)
  num_pos = _distances.pair_counts(labels)[0]
  per_anchor = _common.safe_divide(
      jnp.sum(jnp.where(pos, per_pair, 0), axis=1), num_pos)
  npair_loss = _common.masked_mean(per_anchor, num_pos > 0)
  hardest_neg, _ = _common.masked_max(sim, neg, axis=1)
  correct = (sim > hardest_neg[:, None]) | ~has_neg[:, None]
  return npair_loss + l2_reg * l2_loss, {
      "npair_loss": npair_loss,
      "l2_loss": l2_loss,
      "accuracy": _common.masked_mean(correct, pos),
  }


def _one_pair_per_class(embeddings: Array, labels: Array
                        ) -> tuple[Array, Array]:
  """Sohn's eq. 3 over one (first, second example) pair per class.

  Returns ``(loss, accuracy)``: the mean cross-entropy of each anchor over
  the pairs' positives, and the fraction of anchors whose own positive is
  strictly the most similar.
  """
  b = labels.shape[0]
  # From the sorted labels (O(B log B), no [B, B] mask): rank = number of
  # earlier examples of the class (0: first, 1: second).
  order, start, end, position = _distances.class_runs(labels)
  anchor = (position == start) & (end - start >= 2)
  positive_of = order[jnp.minimum(start + 1, b - 1)]             # [B]
  num_pairs = jnp.sum(anchor)

  def table(size):
    def loss(x):
      index = jnp.nonzero(anchor, size=size, fill_value=0)[0]    # [size]
      valid = jnp.arange(size) < num_pairs
      sim = _distances.similarity_matrix(x[index], x[positive_of[index]])
      cols = jnp.broadcast_to(valid[None, :], sim.shape)
      lse, _ = _common.masked_logsumexp(sim, cols, axis=1)
      own = jnp.diagonal(sim)
      others, _ = _common.masked_max(
          sim, cols & ~jnp.eye(size, dtype=bool), axis=1)
      correct = (own > others) | (num_pairs < 2)
      return (_common.masked_mean(lse - own, valid),
              _common.masked_mean(correct, valid))
    return loss

  if b < 2:
    zero = jnp.sum(embeddings) * 0
    return zero, zero
  full, small = b // 2, max(b // 4, 1)
  if small == full:
    return table(full)(embeddings)
  return jax.lax.cond(num_pairs > small, table(full), table(small),
                      embeddings)
