"""Triplet losses: batch-all, semi-hard (FaceNet) and batch-hard mining.

A triplet is an anchor ``a``, a positive ``p`` (same class, ``p != a``) and a
negative ``n`` (another class). The hinge form pays
``max(0, D_ap - D_an + margin)``; the soft-margin form of Hermans et al. (2017)
pays ``softplus(D_ap - D_an) = log(1 + exp(D_ap - D_an))``.

Speed. A batch of ``B`` examples has up to ``B^3`` triplets, and materialising
the ``[B, B, B]`` cube is what makes naive implementations slow (MEASURED.md).
Two exact strategies avoid it:

* *Positive table* (default, ``max_positives=7``): each anchor's positives are
  read off the sorted labels into a ``[B, W]`` table, so batch-all and
  semi-hard work on ``[B, W, B]`` (anchor, positive, negative) arrays:
  ``O(B^2 W)``, a fraction ``W / B`` of the cube. ``W`` is picked at run
  time (``jax.lax.switch``) as the narrowest of 1, 3, 7, 15 and
  ``max_positives`` that holds the batch's largest class less one: a P x K
  batch with K = 2, 4, 8 or 16 gets ``W = K - 1``. When some class has more
  than ``max_positives + 1`` examples the second strategy runs instead
  (under ``vmap`` every branch runs).
* *Sorted negatives* (``max_positives=None``, or the fallback): each anchor's
  negative distances are sorted once (``O(B^2 log B)``); semi-hard mining is
  then a binary search of ``D_ap`` among them. The batch-all hinge sum is
  linear in the distances once the active triplets are known,
  ``sum_ap c_ap (D_ap + m) - sum_an g_an D_an``, and the counts are binary
  searches too: ``c_ap`` (negatives closer than ``D_ap + m``) among the
  sorted negatives, ``g_an`` (positives with ``D_ap + m > D_an``) among the
  sorted thresholds. The soft batch-all loss has no such form; its fallback
  visits the cube in ``[B, B]`` slices.

Mining (which negative, which triplets are active) runs on ``stop_gradient``
distances and returns integers, so the ``cond`` carries no gradient (JAX would
otherwise keep the residuals of both branches); the loss is evaluated after it.
Both strategies are exact for any label composition; only the speed differs.
Sorting uses integer keys with the floats' order (``_common.sortable_key``):
XLA:CPU sorts those ~6x faster than floats.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array
_REDUCTIONS = ("active", "valid", "sum")
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
  (``reduction="valid"``), or 1 (``reduction="sum"``: the plain sum of
  DML-DA's eq. 3). For ``soft=True`` every valid triplet counts as
  active. Cost: ``O(B^2 W)`` while no anchor has more than
  ``W = max_positives`` positives; otherwise ``O(B^2 log B)`` for the hinge
  and ``O(B^3)`` (in ``[B, B]`` slices) for ``soft``.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class labels.
    margin: :math:`m`, ignored when ``soft``.
    soft: use the soft margin :math:`\log(1 + e^x)` instead of the hinge.
    squared: use squared Euclidean distances.
    reduction: ``"active"``, ``"valid"`` or ``"sum"``: the divisor
      :math:`|T'|` (1 for ``"sum"``).
    max_positives: the widest positive table (a speed knob, see the module
      docstring; narrower tables are picked at run time), or ``None`` to
      always sort.

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
    # Gradient linear in D given c_ap = sum_n sigmoid(D_ap - D_an), g_an =
    # sum_p sigmoid(.): the branches run without gradient (a differentiated
    # cond keeps both branches' [B, B, B] residuals), and the gradient comes
    # back through sum c D_ap - sum g D_an, added as exactly 0.
    d_const = jax.lax.stop_gradient(d)
    total, num_violating, c, g = _common.by_positive_table(
        labels, max_positives,
        lambda d, index, valid: _soft_table(d, index, valid, neg),
        lambda d: _soft_all_triplets(d, pos, neg), d_const)
    delta = d - d_const
    total = total + (jnp.sum(jnp.where(pos, c * delta, 0))
                     - jnp.sum(jnp.where(neg, g * delta, 0)))
    num_active = num_valid
  else:
    # The hinge sum is linear in D given which triplets are active:
    # sum_ap c_ap (D_ap + m) - sum_an g_an D_an, with c_ap (g_an) the active
    # negatives (positives) of pair (a, p) ((a, n)). Only the integer counts
    # come out of the cond, so its branches need no gradient.
    c, g = _common.by_positive_table(
        labels, max_positives,
        lambda d, index, valid: _hinge_counts_table(d, index, valid, neg,
                                                    margin),
        lambda d: _hinge_counts_sorted(d, pos, neg, margin),
        jax.lax.stop_gradient(d))
    c, g = c.astype(d.dtype), g.astype(d.dtype)
    total = (jnp.sum(jnp.where(pos, c * (d + margin), 0))
             - jnp.sum(jnp.where(neg, g * d, 0)))
    num_active = jnp.sum(c, dtype=jnp.float32)
    num_violating = num_active
  if reduction == "sum":
    loss = total
  else:
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
    max_positives: the widest positive table (a speed knob, see the module
      docstring; narrower tables are picked at run time), or ``None`` to
      always sort.

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
  pairs = pos & has_neg[:, None]

  # Mining on stop_gradient distances (see _semihard_sorted): the semi-hard
  # negative's distance d_an [B, B] (per pair a, p), where one was found, and
  # the loss's slope on each (a, n) through those negatives. The gradient
  # through them comes back as a term linear in D that adds exactly 0 (no
  # [B, B] gather, whose scatter-add gradient costs more than the mining).
  d_const = jax.lax.stop_gradient(d)
  d_an, found, negative_slope = _common.by_positive_table(
      labels, max_positives,
      lambda d, index, valid: _semihard_table(d, index, valid, neg, margin,
                                              soft),
      lambda d: _semihard_sorted(d, neg, pairs, margin, soft), d_const)
  # Pairs without a semi-hard negative use the farthest one (differentiable).
  x = d - jnp.where(found, d_an, farthest_neg[:, None])
  per_pair = jax.nn.softplus(x) if soft else jax.nn.relu(x + margin)
  active = x > 0 if soft else x + margin > 0
  num_pairs = _common.count(pairs)
  loss = (_common.masked_mean(per_pair, pairs)
          - _common.safe_divide(jnp.sum(negative_slope * (d - d_const)),
                                num_pairs))
  return loss, {
      "fraction_active": _common.masked_mean(active, pairs),
      "fraction_semihard": _common.masked_mean(found, pairs),
  }


def _triplet_slope(x: Array, margin: float, soft: bool) -> Array:
  """Derivative of the hinge ``[x + m]_+`` (or ``softplus(x)``) in ``x``."""
  return jax.nn.sigmoid(x) if soft else (x + margin > 0).astype(x.dtype)


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


def _row_searchsorted(sorted_rows: Array, queries: Array, side: str) -> Array:
  """Row-wise ``searchsorted``: ``[B, N]`` sorted rows, ``[B, Q]`` queries."""
  return jax.vmap(lambda r, q: jnp.searchsorted(r, q, side=side))(
      sorted_rows, queries)


def _sorted_keys(keys: Array, mask: Array) -> Array:
  """Each row's ``keys[mask]`` in ascending order, padded with the max key."""
  pad = jnp.iinfo(keys.dtype).max
  return jnp.sort(jnp.where(mask, keys, pad), axis=1)


def _scatter_rows(shape, index: Array, values: Array) -> Array:
  """``out[a, index[a, w]] = values[a, w]`` into zeros of ``shape``."""
  rows = jnp.arange(shape[0])[:, None]
  return jnp.zeros(shape, values.dtype).at[rows, index].set(values)


def _semihard_sorted(d: Array, neg: Array, pairs: Array, margin: float,
                     soft: bool) -> tuple[Array, Array, Array]:
  """Semi-hard negative of every pair by sorting each anchor's negatives.

  Returns ``d_an [B, B]`` (distance of the closest negative with
  ``D_an > D_ap``, per pair ``a, p``; 0 where none), ``found [B, B]`` and
  ``negative_slope [B, B]``: per ``(a, n)``, the sum over the ``pairs``
  whose semi-hard negative is ``n`` of the loss's slope in ``D_ap - D_an``.
  """
  b = d.shape[0]
  keys = _common.sortable_key(d)
  sorted_neg = _sorted_keys(keys, neg)
  # rank[a, p]: #negatives with D_an <= D_ap, i.e. the first one beyond.
  rank = _row_searchsorted(sorted_neg, keys, "right")
  found = rank < jnp.sum(neg, axis=1)[:, None]
  # Column of the negative at each rank: negatives scatter to their first
  # (tie-breaking "left") rank, which is the only rank "right" can return.
  neg_rank = jnp.where(neg, _row_searchsorted(sorted_neg, keys, "left"), b)
  columns = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32), (b, b))
  rows = jnp.arange(b)[:, None]
  column_at_rank = jnp.zeros((b, b), jnp.int32).at[rows, neg_rank].set(
      columns, mode="drop")
  n_star = jnp.take_along_axis(column_at_rank, jnp.minimum(rank, b - 1), 1)
  d_an = jnp.where(found, jnp.take_along_axis(d, n_star, 1), 0)
  slope = jnp.where(found & pairs, _triplet_slope(d - d_an, margin, soft), 0)
  return d_an, found, jnp.zeros_like(d).at[rows, n_star].add(slope)


def _semihard_table(d: Array, index: Array, valid: Array, neg: Array,
                    margin: float, soft: bool
                    ) -> tuple[Array, Array, Array]:
  """:func:`_semihard_sorted` on a ``[B, W, B]`` positive-table array.

  ``found`` implies a negative, so every found entry is one of the pairs.
  """
  b = d.shape[1]
  d_ap = jnp.take_along_axis(d, index, 1)                        # [B, W]
  d_n = d[:, None, :]
  beyond = neg[:, None, :] & (d_n > d_ap[:, :, None])             # [B, W, B]
  # Two plain reductions (min distance, then its first column) are about
  # twice as fast on CPU as one variadic argmin.
  nearest = jnp.min(jnp.where(beyond, d_n, jnp.inf), axis=-1)
  columns = jnp.arange(b, dtype=jnp.int32)
  n_star = jnp.min(jnp.where(beyond & (d_n == nearest[:, :, None]), columns,
                             b), axis=-1)
  found = jnp.any(beyond, axis=-1) & valid
  nearest = jnp.where(found, nearest, 0)
  slope = jnp.where(found, _triplet_slope(d_ap - nearest, margin, soft), 0)
  rows = jnp.arange(d.shape[0])[:, None]
  return (_scatter_rows(d.shape, index, nearest),
          _scatter_rows(d.shape, index, found),
          jnp.zeros_like(d).at[rows, jnp.minimum(n_star, b - 1)].add(slope))


def _hinge_counts_sorted(d: Array, pos: Array, neg: Array,
                         margin: float) -> tuple[Array, Array]:
  """Active-triplet counts ``c [B, B]`` (per pair a, p), ``g [B, B]`` (a, n).

  With ``t = D_ap + m``: ``c_ap = #{n : D_an < t_ap}`` is a binary search of
  ``t_ap`` among the anchor's sorted negative distances, and
  ``g_an = #{p : t_ap > D_an}`` one of ``D_an`` among its sorted thresholds.
  """
  t = d + margin
  d_keys, t_keys = _common.sortable_key(d), _common.sortable_key(t)
  c = _row_searchsorted(_sorted_keys(d_keys, neg), t_keys, "left")
  below = _row_searchsorted(_sorted_keys(t_keys, pos), d_keys, "right")
  g = jnp.sum(pos, axis=1, dtype=below.dtype)[:, None] - below
  return jnp.where(pos, c, 0), jnp.where(neg, g, 0)


def _hinge_counts_table(d: Array, index: Array, valid: Array, neg: Array,
                        margin: float) -> tuple[Array, Array]:
  """:func:`_hinge_counts_sorted` on a ``[B, W, B]`` positive-table array."""
  t_ap = jnp.take_along_axis(d, index, 1) + margin                 # [B, W]
  active = (valid[:, :, None] & neg[:, None, :]
            & (t_ap[:, :, None] > d[:, None, :]))                  # [B, W, B]
  c = jnp.sum(active, axis=-1, dtype=jnp.int32)
  g = jnp.sum(active, axis=1, dtype=jnp.int32)
  return _scatter_rows(d.shape, index, jnp.where(valid, c, 0)), g


def _softplus_and_sigmoid(x: Array) -> tuple[Array, Array]:
  """``softplus(x)`` and its derivative ``sigmoid(x)`` from one ``exp``:
  with ``e = exp(-|x|)``, ``softplus = max(x, 0) + log1p(e)`` and
  ``sigmoid = 1 / (1 + e)`` for ``x >= 0``, ``e / (1 + e)`` otherwise (both
  stable). The soft triplet tables are bound by these transcendentals."""
  e = jnp.exp(-jnp.abs(x))
  value = jnp.maximum(x, 0) + jnp.log1p(e)
  slope = jnp.where(x >= 0, 1, e) / (1 + e)
  return value, slope


def _soft_table(d: Array, index: Array, valid: Array, neg: Array
                ) -> tuple[Array, Array, Array, Array]:
  """Soft batch-all sum, #violations and the gradient weights ``c [B, B]``
  (per pair a, p) and ``g [B, B]`` (per pair a, n) over a ``[B, W, B]``
  array (see :func:`_soft_all_triplets`)."""
  x = jnp.take_along_axis(d, index, 1)[:, :, None] - d[:, None, :]
  mask = valid[:, :, None] & neg[:, None, :]
  value, slope = _softplus_and_sigmoid(x)
  slope = jnp.where(mask, slope, 0)
  return (jnp.sum(jnp.where(mask, value, 0)),
          _common.count(mask & (x > 0)),
          _scatter_rows(d.shape, index, jnp.sum(slope, axis=-1)),
          jnp.sum(slope, axis=1))


def _soft_all_triplets(d: Array, pos: Array, neg: Array
                       ) -> tuple[Array, Array, Array, Array]:
  """Sum over valid triplets of ``softplus(D_ap - D_an)``, #violations, and
  the sum's derivatives ``c [B, B] = d sum / d D_ap`` (rows a, columns p)
  and ``g [B, B] = -d sum / d D_an`` (rows a, columns n).

  No closed form exists, so this visits the cube anchor by anchor, a few
  ``[B, B]`` (positive x negative) slices at a time.
  """
  b = d.shape[0]

  def one_anchor(row):
    d_a, pos_a, neg_a = row
    x = d_a[:, None] - d_a[None, :]
    valid = pos_a[:, None] & neg_a[None, :]
    value, slope = _softplus_and_sigmoid(x)
    slope = jnp.where(valid, slope, 0)
    return (jnp.sum(jnp.where(valid, value, 0)),
            jnp.sum(valid & (x > 0), dtype=jnp.float32),
            jnp.sum(slope, axis=1), jnp.sum(slope, axis=0))

  chunk = max(1, min(b, _SOFT_CHUNK_ELEMENTS // max(b * b, 1)))
  sums, violations, c, g = jax.lax.map(one_anchor, (d, pos, neg),
                                       batch_size=chunk)
  return jnp.sum(sums), jnp.sum(violations), c, g
