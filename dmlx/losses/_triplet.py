"""Triplet losses: batch-all, semi-hard (FaceNet) and batch-hard mining.

A triplet is an anchor ``a``, a positive ``p`` (same class, ``p != a``) and a
negative ``n`` (another class). The hinge form pays
``max(0, D_ap - D_an + margin)``; the soft-margin form of Hermans et al. (2017)
pays ``softplus(D_ap - D_an) = log(1 + exp(D_ap - D_an))``.

Speed. A batch of ``B`` examples has up to ``B^3`` triplets, and materialising
the ``[B, B, B]`` cube is what makes naive implementations slow (MEASURED.md).
Here only the soft batch-all loss touches every triplet (and does so anchor by
anchor, in ``[B, B]`` slices). The other forms work on ``[B, B]`` arrays: each
anchor's negative distances are sorted once (``O(B^2 log B)``), after which

* semi-hard mining is a binary search of ``D_ap`` among the sorted ``D_an``;
* the batch-all hinge sum ``sum_n max(0, D_ap + m - D_an)`` equals
  ``c * (D_ap + m) - (sum of the c smallest D_an)``, where ``c`` (the number of
  negatives closer than ``D_ap + m``) is again a binary search and the partial
  sums are a cumulative sum over the sorted negatives.

Both are exact for any label composition, not only P x K batches.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array
_REDUCTIONS = ("active", "valid")
# [B, B] slices of the soft batch-all cube processed together: bounds memory.
_SOFT_CHUNK_ELEMENTS = 1 << 22


def triplet_all(embeddings: Array, labels: Array, *, margin: float = 0.2,
                soft: bool = False, squared: bool = False,
                reduction: str = "active") -> tuple[Array, dict[str, Array]]:
  r"""Batch-all triplet loss over every valid triplet of the batch.

  .. math::
    \ell(a, p, n) = [D_{ap} - D_{an} + m]_+ \quad\text{or (soft)}\quad
    \log(1 + e^{D_{ap} - D_{an}}), \qquad
    L = \frac{1}{|T'|} \sum_{(a,p,n) \in T} \ell(a, p, n)

  where :math:`T` is the set of valid triplets and :math:`T'` is either the
  *active* triplets (:math:`\ell > 0`, Hermans et al.'s "BA≠0"; the default,
  and pytorch-metric-learning's ``AvgNonZeroReducer``) or all of :math:`T`
  (``reduction="valid"``). For ``soft=True`` every valid triplet counts as
  active. Cost: ``O(B^2 log B)`` for the hinge, ``O(B^3)`` for ``soft``.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`m`, ignored when ``soft``.
    soft: use the soft margin :math:`\log(1 + e^x)` instead of the hinge.
    squared: use squared Euclidean distances.
    reduction: ``"active"`` or ``"valid"``: the divisor :math:`|T'|`.

  Returns:
    ``(loss, aux)``: scalar loss (0 without valid triplets) and an aux dict with
    ``fraction_active`` (active / valid triplets; for ``soft``, the fraction
    with :math:`D_{ap} > D_{an}`) and ``num_valid``.

  References:
    Schroff, Kalenichenko & Philbin, FaceNet: A Unified Embedding for Face
    Recognition and Clustering, 2015 (the triplet loss).
    Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person
    Re-Identification, 2017 (batch all, soft margin).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [3., 0.], [3., 1.]])
    >>> loss, aux = triplet_all(x, jnp.array([0, 0, 1, 1]), margin=3.0)
    >>> round(float(loss), 4), float(aux["fraction_active"])
    (0.9189, 1.0)
  """
  name = "triplet_all"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_choice(name, "reduction", reduction, _REDUCTIONS)
  d = _distances.pairwise_distances(embeddings, squared=squared)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  num_valid = jnp.sum(_common.count(pos, 1) * _common.count(neg, 1))
  if soft:
    total, num_violating = _soft_all_triplets(d, pos, neg)
    num_active = num_valid
  else:
    total, num_active = _hinge_all_triplets(d, pos, neg, margin)
    num_violating = num_active
  divisor = num_active if reduction == "active" else num_valid
  loss = _common.safe_divide(total, divisor)
  return loss, {
      "fraction_active": _common.safe_divide(num_violating, num_valid),
      "num_valid": num_valid,
  }


def triplet_semihard(embeddings: Array, labels: Array, *, margin: float = 0.2,
                     soft: bool = False, squared: bool = False
                     ) -> tuple[Array, dict[str, Array]]:
  r"""Triplet loss with FaceNet's semi-hard negatives (TF-Addons semantics).

  For every positive pair :math:`(a, p)` the negative is the *closest negative
  farther than the positive*,

  .. math::
    n^*(a, p) = \arg\min_{n:\, D_{an} > D_{ap}} D_{an},

  and, when no negative is farther than :math:`D_{ap}`, the negative with the
  *largest* distance :math:`\max_n D_{an}` (as ``tfa.losses.
  triplet_semihard_loss``). The loss is the mean over positive pairs of
  :math:`[D_{ap} - D_{an^*} + m]_+` (or the soft margin). Pairs whose anchor
  has no negative at all are masked out (TF-Addons would compare against 0).

  Each anchor's negative distances are sorted once and :math:`n^*` is found by
  binary search: ``O(B^2 log B)``, no ``[B, B, B]`` mask.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`m`, ignored when ``soft``.
    soft: use :math:`\log(1 + e^{D_{ap} - D_{an}})` instead of the hinge.
    squared: use squared Euclidean distances.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``fraction_active`` (pairs with a
    nonzero hinge, or with :math:`D_{ap} > D_{an^*}` for ``soft``) and
    ``fraction_semihard`` (pairs for which a negative beyond :math:`D_{ap}`
    existed).

  References:
    Schroff, Kalenichenko & Philbin, FaceNet: A Unified Embedding for Face
    Recognition and Clustering, 2015 (section 3.2, semi-hard negatives).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [3., 0.], [3., 1.]])
    >>> loss, _ = triplet_semihard(x, jnp.array([0, 0, 1, 1]), margin=3.0)
    >>> round(float(loss), 4)
    1.0
  """
  name = "triplet_semihard"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  d = _distances.pairwise_distances(embeddings, squared=squared)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  order, sorted_neg, num_neg = _sort_negatives(d, neg)
  # rank[a, p] = #negatives with D_an <= D_ap: the first one beyond D_ap.
  rank = _row_searchsorted(sorted_neg, jax.lax.stop_gradient(d), "right")
  found = rank < num_neg[:, None]
  k = jnp.clip(jnp.where(found, rank, num_neg[:, None] - 1), 0, d.shape[1] - 1)
  d_an = jnp.take_along_axis(d, jnp.take_along_axis(order, k, 1), 1)
  valid = pos & (num_neg > 0)[:, None]
  x = d - d_an
  per_pair = jax.nn.softplus(x) if soft else jax.nn.relu(x + margin)
  active = x > 0 if soft else x + margin > 0
  loss = _common.masked_mean(per_pair, valid)
  return loss, {
      "fraction_active": _common.masked_mean(active, valid),
      "fraction_semihard": _common.masked_mean(found, valid),
  }


def triplet_batch_hard(embeddings: Array, labels: Array, *,
                       margin: float = 0.2, soft: bool = False,
                       squared: bool = False
                       ) -> tuple[Array, dict[str, Array]]:
  r"""Batch-hard triplet loss: hardest positive and negative per anchor.

  .. math::
    L = \frac{1}{|A|} \sum_{a \in A}
        \Big[\max_p D_{ap} - \min_n D_{an} + m\Big]_+

  over the anchors :math:`A` that have at least one positive and one negative
  (soft form: :math:`\log(1 + e^{\max_p D_{ap} - \min_n D_{an}})`).

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`m`, ignored when ``soft``.
    soft: use the soft margin instead of the hinge.
    squared: use squared Euclidean distances.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``fraction_active`` (anchors with
    a nonzero hinge, or a violated ordering for ``soft``),
    ``hardest_positive`` and ``hardest_negative`` (mean distances).

  References:
    Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person
    Re-Identification, 2017 ("Batch Hard" and the soft margin).

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[0., 0.], [0., 1.], [3., 0.], [3., 1.]])
    >>> loss, _ = triplet_batch_hard(x, jnp.array([0, 0, 1, 1]), margin=3.0)
    >>> round(float(loss), 4)
    1.0
  """
  name = "triplet_batch_hard"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  d = _distances.pairwise_distances(embeddings, squared=squared)
  hardest_pos, has_pos = _common.masked_max(
      d, _distances.positive_mask(labels))
  hardest_neg, has_neg = _common.masked_min(
      d, _distances.negative_mask(labels))
  valid = has_pos & has_neg
  x = hardest_pos - hardest_neg
  per_anchor = jax.nn.softplus(x) if soft else jax.nn.relu(x + margin)
  active = x > 0 if soft else x + margin > 0
  return _common.masked_mean(per_anchor, valid), {
      "fraction_active": _common.masked_mean(active, valid),
      "hardest_positive": _common.masked_mean(hardest_pos, valid),
      "hardest_negative": _common.masked_mean(hardest_neg, valid),
  }


def _sort_negatives(d: Array, neg: Array) -> tuple[Array, Array, Array]:
  """Sorts each anchor's negative distances (no gradient through the order).

  Returns:
    ``order [B, B]`` (column indices, negatives first, ascending distance),
    ``sorted_neg [B, B]`` (the sorted distances, ``+inf`` after the last
    negative; no gradient) and ``num_neg [B]`` (int).
  """
  masked = jnp.where(neg, jax.lax.stop_gradient(d), jnp.inf)
  order = jnp.argsort(masked, axis=1)
  return order, jnp.take_along_axis(masked, order, 1), jnp.sum(neg, axis=1)


def _row_searchsorted(sorted_rows: Array, queries: Array, side: str) -> Array:
  """Row-wise ``searchsorted``: ``[B, N]`` sorted rows, ``[B, Q]`` queries."""
  return jax.vmap(lambda r, q: jnp.searchsorted(r, q, side=side))(
      sorted_rows, queries)


def _hinge_all_triplets(d: Array, pos: Array, neg: Array,
                        margin: float) -> tuple[Array, Array]:
  """Sum over valid triplets of ``max(0, D_ap - D_an + m)`` and #active ones.

  For a pair (a, p) with threshold ``t = D_ap + m`` and the ``c`` negatives of
  ``a`` with ``D_an < t``, the sum over n is ``c * t - sum_{j<c} sorted_j``.
  """
  order, sorted_neg, num_neg = _sort_negatives(d, neg)
  b = d.shape[1]
  in_row = jnp.arange(b)[None, :] < num_neg[:, None]
  # Sorted negative distances *with* gradient, and their prefix sums.
  sorted_d = jnp.where(in_row, jnp.take_along_axis(d, order, 1), 0)
  prefix = jnp.concatenate(
      [jnp.zeros_like(sorted_d[:, :1]), jnp.cumsum(sorted_d, axis=1)], axis=1)
  threshold = d + margin
  c = _row_searchsorted(sorted_neg, jax.lax.stop_gradient(threshold), "left")
  per_pair = c * threshold - jnp.take_along_axis(prefix, c, 1)
  total = jnp.sum(jnp.where(pos, per_pair, 0))
  num_active = jnp.sum(jnp.where(pos, c, 0), dtype=jnp.float32)
  return total, num_active


def _soft_all_triplets(d: Array, pos: Array, neg: Array) -> tuple[Array, Array]:
  """Sum over valid triplets of ``softplus(D_ap - D_an)``, and #violations.

  No closed form exists, so this visits the cube anchor by anchor, a few
  ``[B, B]`` (positive x negative) slices at a time.
  """
  b = d.shape[0]

  def one_anchor(row):
    d_a, pos_a, neg_a = row
    x = d_a[:, None] - d_a[None, :]
    valid = pos_a[:, None] & neg_a[None, :]
    return (jnp.sum(jnp.where(valid, jax.nn.softplus(x), 0)),
            jnp.sum(valid & (x > 0), dtype=jnp.float32))

  chunk = max(1, min(b, _SOFT_CHUNK_ELEMENTS // max(b * b, 1)))
  sums, violations = jax.lax.map(one_anchor, (d, pos, neg), batch_size=chunk)
  return jnp.sum(sums), jnp.sum(violations)
