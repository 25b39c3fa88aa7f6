"""Multi-class N-pair loss of Sohn (2016), for any batch composition."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array


def npair(embeddings: Array, labels: Array, *, l2_reg: float = 0.002
          ) -> tuple[Array, dict[str, Array]]:
  r"""Multi-class N-pair loss with an L2 penalty on the embeddings.

  Sohn's batches hold exactly one (anchor, positive) pair per class. To accept
  any label composition, every other same-class example of an anchor
  :math:`f` serves in turn as its positive :math:`f^+` and all other-class
  examples :math:`\{f_n\}` as its negatives:

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

  Args:
    embeddings: ``[batch_size, dim]`` embeddings (not normalised: the L2 term
      keeps their norm in check, as in the paper).
    labels: ``[batch_size]`` integer class labels.
    l2_reg: :math:`\lambda`, weight of the mean squared embedding norm.

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
  sim = _distances.similarity_matrix(embeddings)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  lse_neg, has_neg = _common.masked_logsumexp(sim, neg, axis=1)   # [B]
  x = lse_neg[:, None] - sim                                       # [a, p]
  per_pair = jnp.where(has_neg[:, None], jax.nn.softplus(x), 0)
  num_pos = _common.count(pos, 1)
  per_anchor = _common.safe_divide(
      jnp.sum(jnp.where(pos, per_pair, 0), axis=1), num_pos)
  npair_loss = _common.masked_mean(per_anchor, num_pos > 0)
  hardest_neg, _ = _common.masked_max(sim, neg, axis=1)
  correct = (sim > hardest_neg[:, None]) | ~has_neg[:, None]
  l2_loss = jnp.mean(jnp.sum(jnp.square(embeddings), axis=1))
  return npair_loss + l2_reg * l2_loss, {
      "npair_loss": npair_loss,
      "l2_loss": l2_loss,
      "accuracy": _common.masked_mean(correct, pos),
  }
