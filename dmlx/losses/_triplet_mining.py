"""Triplet mining on a distance matrix, for :mod:`dmlx.losses._triplet`.

Each strategy has two forms with the same outputs: on each anchor's
``[B, W]`` positive table (``*_table``: ``[B, W, B]`` arrays) and on each
anchor's sorted negatives or the whole cube in slices (``*_sorted`` /
``soft_all_triplets``: any label composition). They run on ``stop_gradient``
distances and return selections, counts and slopes; the losses add the
gradient back through terms linear in the distances (see ``_triplet``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common

Array = jax.Array
# [B, B] slices of the soft batch-all cube processed together: bounds memory.
_SOFT_CHUNK_ELEMENTS = 1 << 22


def triplet_slope(x: Array, margin: float, soft: bool) -> Array:
  """Derivative of the hinge ``[x + m]_+`` (or ``softplus(x)``) in ``x``."""
  return jax.nn.sigmoid(x) if soft else (x + margin > 0).astype(x.dtype)


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


def semihard_sorted(d: Array, neg: Array, pairs: Array, margin: float,
                     soft: bool) -> tuple[Array, Array]:
  """Semi-hard negative of every pair by sorting each anchor's negatives.

  Returns ``d_an [B, B]`` (distance of the closest negative with
  ``D_an > D_ap``, per pair ``a, p``; ``-1`` where none was found, which no
  distance is) and ``negative_slope [B, B]``: per ``(a, n)``, the sum over
  the ``pairs`` whose semi-hard negative is ``n`` of the loss's slope in
  ``D_ap - D_an``.
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
  d_an = jnp.where(found, jnp.take_along_axis(d, n_star, 1), -1)
  slope = jnp.where(found & pairs, triplet_slope(d - d_an, margin, soft), 0)
  return d_an, jnp.zeros_like(d).at[rows, n_star].add(slope)


def _nearest_beyond(d_ap: Array, neg: Array, d: Array) -> tuple[Array, Array]:
  """Per pair ``(a, w)``: the smallest negative ``D_an > D_ap`` (``inf`` if
  none) and its first column (``B`` if none); ``[B, W, B]`` temporaries."""
  b = d.shape[1]
  d_n = d[:, None, :]
  beyond = neg[:, None, :] & (d_n > d_ap[:, :, None])             # [B, W, B]
  # Two plain reductions (min distance, then its first column) are about
  # twice as fast on CPU as one variadic argmin.
  nearest = jnp.min(jnp.where(beyond, d_n, jnp.inf), axis=-1)
  columns = jnp.arange(b, dtype=jnp.int32)
  n_star = jnp.min(jnp.where(beyond & (d_n == nearest[:, :, None]), columns,
                             b), axis=-1)
  return nearest, n_star


def semihard_table(d: Array, index: Array, valid: Array, neg: Array,
                    margin: float, soft: bool) -> tuple[Array, Array]:
  """:func:`semihard_sorted` on a ``[B, W, B]`` positive-table array.

  A found negative implies a pair, and ``found`` is read off the masked
  minimum (finite distances), so the cube is reduced twice: the nearest
  distance beyond ``D_ap``, then its first column. Entries of ``d_an`` off
  the table are ``-1`` too (no pair there).
  """
  b = d.shape[1]
  d_ap = jnp.take_along_axis(d, index, 1)                        # [B, W]
  nearest, n_star = _common.by_anchor_blocks(
      _nearest_beyond, index.shape[1], d_ap, neg, d)
  found = (nearest < jnp.inf) & valid
  slope = jnp.where(found, triplet_slope(d_ap - nearest, margin, soft), 0)
  rows = jnp.arange(d.shape[0])[:, None]
  d_an = jnp.full(d.shape, -1, d.dtype).at[rows, index].set(
      jnp.where(found, nearest, -1))
  return d_an, jnp.zeros_like(d).at[rows, jnp.minimum(n_star, b - 1)].add(
      slope)


def hinge_counts_sorted(d: Array, pos: Array, neg: Array,
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


def hinge_counts_table(d: Array, index: Array, valid: Array, neg: Array,
                        margin: float) -> tuple[Array, Array]:
  """:func:`hinge_counts_sorted` on a ``[B, W, B]`` positive-table array."""
  def counts(t_ap, valid, neg, d):
    active = (valid[:, :, None] & neg[:, None, :]
              & (t_ap[:, :, None] > d[:, None, :]))                # [B, W, B]
    return (jnp.sum(active, axis=-1, dtype=jnp.int32),
            jnp.sum(active, axis=1, dtype=jnp.int32))

  t_ap = jnp.take_along_axis(d, index, 1) + margin                 # [B, W]
  c, g = _common.by_anchor_blocks(counts, index.shape[1], t_ap, valid, neg,
                                  d)
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


def soft_table(d: Array, index: Array, valid: Array, neg: Array
                ) -> tuple[Array, Array, Array, Array]:
  """Soft batch-all sum, #violations and the gradient weights ``c [B, B]``
  (per pair a, p) and ``g [B, B]`` (per pair a, n) over a ``[B, W, B]``
  array (see :func:`soft_all_triplets`)."""
  def sums(d_ap, valid, neg, d):
    x = d_ap[:, :, None] - d[:, None, :]                           # [B, W, B]
    mask = valid[:, :, None] & neg[:, None, :]
    value, slope = _softplus_and_sigmoid(x)
    slope = jnp.where(mask, slope, 0)
    return (jnp.sum(jnp.where(mask, value, 0), axis=(1, 2)),
            jnp.sum(mask & (x > 0), axis=(1, 2), dtype=jnp.float32),
            jnp.sum(slope, axis=-1), jnp.sum(slope, axis=1))

  value, violating, c, g = _common.by_anchor_blocks(
      sums, index.shape[1], jnp.take_along_axis(d, index, 1), valid, neg, d)
  return (jnp.sum(value), jnp.sum(violating),
          _scatter_rows(d.shape, index, c), g)


def soft_all_triplets(d: Array, pos: Array, neg: Array
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
