"""Triplet losses: batch-all, semi-hard (FaceNet) and batch-hard mining.

A triplet is an anchor ``a``, a positive ``p`` (same class, ``p != a``) and a
negative ``n`` (another class). The hinge form pays
``max(0, D_ap - D_an + margin)``; the soft-margin form of Hermans et al. (2017)
pays ``softplus(D_ap - D_an) = log(1 + exp(D_ap - D_an))``.

Speed. A batch of ``B`` examples has up to ``B^3`` triplets, and materialising
the ``[B, B, B]`` cube is what makes naive implementations slow (MEASURED.md).
Two exact strategies avoid it:

* *Positive table* (default, ``max_positives=7``): each anchor's positives are
  gathered into a ``[B, W]`` table (``W = max_positives``), so batch-all and
  semi-hard work on ``[B, W, B]`` (anchor, positive, negative) arrays:
  ``O(B^2 W)``, about ``4/B`` of the cube for P x K batches with K = 4. It
  holds every positive when no class has more than ``W + 1`` examples in the
  batch; otherwise ``jax.lax.cond`` switches to the second strategy at run
  time. For P x K batches set ``max_positives=K - 1``.
* *Sorted negatives* (``max_positives=None``, or the fallback): each anchor's
  negative distances are sorted once (``O(B^2 log B)``), after which semi-hard
  mining is a binary search of ``D_ap`` among them, and the batch-all hinge sum
  ``sum_n max(0, D_ap + m - D_an)`` equals ``c (D_ap + m) - (sum of the c
  smallest D_an)``, with ``c`` (the negatives closer than ``D_ap + m``) again a
  binary search and the partial sums a cumulative sum. The soft batch-all loss
  has no such closed form; its fallback visits the cube in ``[B, B]`` slices.

Both are exact for any label composition; only the speed differs. (XLA:CPU
sorts floats slowly, ~150 ms for ``1024 x 1024``, hence the table default.)
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
                reduction: str = "active", max_positives: int | None = 7
                ) -> tuple[Array, dict[str, Array]]:
  r"""Batch-all triplet loss over every valid triplet of the batch.

  .. math::
    \ell(a, p, n) = [D_{ap} - D_{an} + m]_+ \quad\text{or (soft)}\quad
    \log(1 + e^{D_{ap} - D_{an}}), \qquad
    L = \frac{1}{|T'|} \sum_{(a,p,n) \in T} \ell(a, p, n)

  where :math:`T` is the set of valid triplets and :math:`T'` is either the
  *active* triplets (:math:`\ell > 0`, Hermans et al.'s "BA≠0"; the default,
  and pytorch-metric-learning's ``AvgNonZeroReducer``) or all of :math:`T`
  (``reduction="valid"``). For ``soft=True`` every valid triplet counts as
  active. Cost: ``O(B^2 W)`` while no anchor has more than
  ``W = max_positives`` positives; otherwise ``O(B^2 log B)`` for the hinge
  and ``O(B^3)`` (in ``[B, B]`` slices) for ``soft``.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`m`, ignored when ``soft``.
    soft: use the soft margin :math:`\log(1 + e^x)` instead of the hinge.
    squared: use squared Euclidean distances.
    reduction: ``"active"`` or ``"valid"``: the divisor :math:`|T'|`.
    max_positives: width of the positive table (a speed knob, see the module
      docstring; ``K - 1`` for P x K batches), or ``None`` to always sort.

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
  _common.check_max_positives(name, max_positives)
  d = _distances.pairwise_distances(embeddings, squared=squared)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  num_valid = jnp.sum(_common.count(pos, 1) * _common.count(neg, 1))
  if soft:
    exact = lambda d: _soft_all_triplets(d, pos, neg)
  else:
    exact = lambda d: _hinge_all_triplets(d, pos, neg, margin)
  table = lambda d, index, valid: _table_all_triplets(
      d, index, valid, neg, margin, soft)
  total, num_counted = _common.by_positive_table(pos, max_positives, table,
                                                 exact, d)
  # Hinge: num_counted = active triplets; soft: violated ones (all active).
  num_active = num_valid if soft else num_counted
  num_violating = num_counted
  divisor = num_active if reduction == "active" else num_valid
  loss = _common.safe_divide(total, divisor)
  return loss, {
      "fraction_active": _common.safe_divide(num_violating, num_valid),
      "num_valid": num_valid,
  }


def triplet_semihard(embeddings: Array, labels: Array, *, margin: float = 0.2,
                     soft: bool = False, squared: bool = False,
                     max_positives: int | None = 7
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

  With each anchor's positives in a table (``max_positives``), :math:`n^*` is
  a masked minimum over ``[B, W, B]``; otherwise each anchor's negative
  distances are sorted once and :math:`n^*` is found by binary search
  (``O(B^2 log B)``). Never a ``[B, B, B]`` mask.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`m`, ignored when ``soft``.
    soft: use :math:`\log(1 + e^{D_{ap} - D_{an}})` instead of the hinge.
    squared: use squared Euclidean distances.
    max_positives: width of the positive table (a speed knob, see the module
      docstring; ``K - 1`` for P x K batches), or ``None`` to always sort.

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
  _common.check_max_positives(name, max_positives)
  d = _distances.pairwise_distances(embeddings, squared=squared)
  pos = _distances.positive_mask(labels)
  neg = _distances.negative_mask(labels)
  farthest_neg, has_neg = _common.masked_max(d, neg, axis=1)

  def reduce(d_ap, d_an, found, pairs):
    x = d_ap - d_an
    per_pair = jax.nn.softplus(x) if soft else jax.nn.relu(x + margin)
    active = x > 0 if soft else x + margin > 0
    return (jnp.sum(jnp.where(pairs, per_pair, 0)), _common.count(pairs),
            _common.count(pairs & active), _common.count(pairs & found))

  def exact(d):
    order, sorted_neg, num_neg = _sort_negatives(d, neg)
    # rank[a, p] = #negatives with D_an <= D_ap: the first one beyond D_ap.
    rank = _row_searchsorted(sorted_neg, jax.lax.stop_gradient(d), "right")
    found = rank < num_neg[:, None]
    k = jnp.clip(rank, 0, d.shape[1] - 1)
    semihard = jnp.take_along_axis(d, jnp.take_along_axis(order, k, 1), 1)
    d_an = jnp.where(found, semihard, farthest_neg[:, None])
    return reduce(d, d_an, found, pos & has_neg[:, None])

  def table(d, index, valid):
    d_ap = jnp.take_along_axis(d, index, 1)                       # [B, W]
    d_n = jnp.broadcast_to(d[:, None, :], index.shape + d.shape[1:])
    beyond = neg[:, None, :] & (d_n > d_ap[:, :, None])            # [B, W, B]
    semihard, found = _common.masked_min(d_n, beyond, axis=-1)
    d_an = jnp.where(found, semihard, farthest_neg[:, None])
    return reduce(d_ap, d_an, found, valid & has_neg[:, None])

  total, num_pairs, num_active, num_found = _common.by_positive_table(
      pos, max_positives, table, exact, d)
  return _common.safe_divide(total, num_pairs), {
      "fraction_active": _common.safe_divide(num_active, num_pairs),
      "fraction_semihard": _common.safe_divide(num_found, num_pairs),
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


def _table_all_triplets(d: Array, index: Array, valid: Array, neg: Array,
                        margin: float, soft: bool) -> tuple[Array, Array]:
  """Batch-all sum over a ``[B, W, B]`` (anchor, positive, negative) array.

  Returns the summed loss and the number of active (hinge) or violated
  (soft) triplets.
  """
  d_ap = jnp.take_along_axis(d, index, 1)                          # [B, W]
  x = d_ap[:, :, None] - d[:, None, :]                             # [B, W, B]
  mask = valid[:, :, None] & neg[:, None, :]
  if soft:
    per_triplet, counted = jax.nn.softplus(x), x > 0
  else:
    per_triplet, counted = jax.nn.relu(x + margin), x + margin > 0
  return (jnp.sum(jnp.where(mask, per_triplet, 0)),
          _common.count(mask & counted))


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
