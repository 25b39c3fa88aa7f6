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
from dmlx.losses import _triplet_mining as _mining

Array = jax.Array
_REDUCTIONS = ("active", "valid", "sum")


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
  num_pos, num_neg = _distances.pair_counts(labels)
  num_valid = jnp.sum(num_pos * num_neg)
  if soft:
    # Gradient linear in D given c_ap = sum_n sigmoid(D_ap - D_an), g_an =
    # sum_p sigmoid(.): the branches run without gradient (a differentiated
    # cond keeps both branches' [B, B, B] residuals), and the gradient comes
    # back through sum c D_ap - sum g D_an, added as exactly 0.
    d_const = jax.lax.stop_gradient(d)
    total, num_violating, c, g = _common.by_positive_table(
        labels, max_positives,
        lambda d, index, valid: _mining.soft_table(d, index, valid, neg),
        lambda d: _mining.soft_all_triplets(d, pos, neg), d_const)
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
        lambda d, index, valid: _mining.hinge_counts_table(
            d, index, valid, neg, margin),
        lambda d: _mining.hinge_counts_sorted(d, pos, neg, margin),
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

  # Mining on stop_gradient distances (_mining.semihard_*): the semi-hard
  # negative's distance d_an [B, B] (per pair a, p; -1 where none), and
  # the loss's slope on each (a, n) through those negatives. The gradient
  # through them comes back as a term linear in D that adds exactly 0 (no
  # [B, B] gather, whose scatter-add gradient costs more than the mining).
  d_const = jax.lax.stop_gradient(d)
  d_an, negative_slope = _common.by_positive_table(
      labels, max_positives,
      lambda d, index, valid: _mining.semihard_table(
          d, index, valid, neg, margin, soft),
      lambda d: _mining.semihard_sorted(d, neg, pairs, margin, soft), d_const)
  found = d_an >= 0
  # Pairs without a semi-hard negative use the farthest one (differentiable).
  x = d - jnp.where(found, d_an, farthest_neg[:, None])
  per_pair = jax.nn.softplus(x) if soft else jax.nn.relu(x + margin)
  active = x > 0 if soft else x + margin > 0
  # |pairs| from the class sizes, not a count over the [B, B] mask.
  num_pos, num_neg = _distances.pair_counts(labels)
  num_pairs = jnp.sum(jnp.where(num_neg > 0, num_pos, 0))
  per_pair_sum = jnp.sum(jnp.where(pairs, per_pair, 0))
  loss = _common.safe_divide(
      per_pair_sum - jnp.sum(negative_slope * (d - d_const)), num_pairs)
  return loss, {
      "fraction_active": _common.safe_divide(_common.count(pairs & active),
                                             num_pairs),
      "fraction_semihard": _common.safe_divide(_common.count(pairs & found),
                                               num_pairs),
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
