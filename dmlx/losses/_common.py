"""Input checks, masked reductions and a class cross-entropy for dmlx losses.

Metric-learning losses reduce over *sets* that vary per anchor (its positives,
its negatives), so every reduction here takes a boolean mask and returns, next
to the value, a flag saying whether the set was empty. Empty sets never reach a
``log(0)``, a division by zero or an ``inf * 0`` in the backward pass: masked
entries are replaced *before* any ``exp``/``log`` (the "double where" pattern),
so their gradients are exactly zero.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from dmlx.losses import _distances

Array = jax.Array


def check_inputs(embeddings, labels, name: str) -> tuple[Array, Array]:
  """Checks float ``embeddings [batch_size, dim]``, int ``labels [batch_size]``.

  Runs at trace time (shapes and dtypes are static), so it costs nothing in a
  jitted step.

  Raises:
    ValueError: naming the function and the bad shape or dtype.
  """
  embeddings = jnp.asarray(embeddings)
  labels = jnp.asarray(labels)
  if embeddings.ndim != 2:
    raise ValueError(
        f"{name}: embeddings must have shape [batch_size, dim], got shape "
        f"{embeddings.shape}.")
  if not jnp.issubdtype(embeddings.dtype, jnp.floating):
    raise ValueError(
        f"{name}: embeddings must be floating point, got dtype "
        f"{embeddings.dtype}.")
  if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
    raise ValueError(
        f"{name}: labels must have shape [batch_size] = [{embeddings.shape[0]}]"
        f", got shape {labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f"{name}: labels must be integers, got dtype {labels.dtype}.")
  return embeddings, labels


def check_positive(name: str, key: str, value, *, allow_zero: bool = False):
  """Raises ValueError if a concrete Python number ``value`` is not > 0.

  Traced values (a hyper-parameter passed as a jitted argument) are not checked.
  """
  if isinstance(value, numbers.Real):
    bad = value < 0 if allow_zero else value <= 0
    if bad:
      bound = ">= 0" if allow_zero else "> 0"
      raise ValueError(f"{name}: {key} must be {bound}, got {value!r}.")


def check_choice(name: str, key: str, value, choices: tuple[str, ...]):
  """Raises ValueError if ``value`` is not one of ``choices``."""
  if value not in choices:
    raise ValueError(
        f"{name}: {key} must be one of {choices}, got {value!r}.")


def count(mask: Array, axis=None) -> Array:
  """Number of True entries of ``mask`` as a float (for use as a divisor)."""
  return jnp.sum(mask, axis=axis, dtype=jnp.float32)


def safe_divide(total: Array, n: Array) -> Array:
  """``total / max(n, 1)``: a mean over a possibly empty set is 0, not NaN."""
  return total / jnp.maximum(n, 1).astype(jnp.result_type(total))


def masked_mean(values: Array, mask: Array) -> Array:
  """Mean of ``values`` over ``mask`` (0 for an empty mask), never NaN."""
  return safe_divide(jnp.sum(jnp.where(mask, values, 0)), count(mask))


def masked_max(x: Array, mask: Array, axis: int = -1) -> tuple[Array, Array]:
  """Maximum of ``x`` over ``mask`` along ``axis``; 0 where the mask is empty.

  Returns:
    ``(value, nonempty)``, both with ``axis`` removed.
  """
  nonempty = jnp.any(mask, axis=axis)
  value = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis)
  return jnp.where(nonempty, value, 0), nonempty


def masked_min(x: Array, mask: Array, axis: int = -1) -> tuple[Array, Array]:
  """Minimum of ``x`` over ``mask`` along ``axis``; 0 for an empty mask."""
  value, nonempty = masked_max(-x, mask, axis)
  return -value, nonempty


def masked_logsumexp(x: Array, mask: Array,
                     axis: int = -1) -> tuple[Array, Array]:
  r"""Stable :math:`\log \sum_{j \in mask} \exp x_j`; 0 where the mask is empty.

  The maximum is subtracted before exponentiating and masked entries are set to
  ``-inf`` *before* the ``exp``, so neither the value nor the gradient can be
  NaN, for any finite ``x`` and any mask (including all-False).

  Returns:
    ``(value, nonempty)``, both with ``axis`` removed.
  """
  nonempty = jnp.any(mask, axis=axis)
  shift = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0))
  summed = jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)), axis=axis)
  value = jnp.log(jnp.where(nonempty, summed, 1)) + jnp.squeeze(shift, axis)
  return jnp.where(nonempty, value, 0), nonempty


def class_cross_entropy(logits: Array, labels: Array,
                        exclude_positive: bool = False
                        ) -> tuple[Array, dict[str, Array]]:
  """Softmax cross-entropy ``LSE_Z(logits) - logits[y]`` averaged over a batch.

  With every class in ``Z`` (``exclude_positive=False``) the target logit is
  read with ``take_along_axis`` and the log-sum-exp runs over the whole row,
  without the masks of the general form: value and gradient as that form's,
  4-8 % faster fwd + bwd with a linear classifier (B = 512 / 2048, D = 128,
  C = B / 4, one thread, AVX-512 Xeon: 0.50 -> 0.48 ms, 7.2 -> 6.6 ms).

  Args:
    logits: ``[batch_size, num_classes]``.
    labels: ``[batch_size]`` ints; labels outside ``[0, num_classes)`` are
      ignored (they select no logit).
    exclude_positive: leave the target out of the log-sum-exp set ``Z``.

  Returns:
    ``(loss, {'accuracy': ...})``, the mean over examples with a valid label.
  """
  num_classes = logits.shape[1]
  if exclude_positive:
    one_hot = labels[:, None] == jnp.arange(num_classes)[None, :]
    valid = jnp.any(one_hot, axis=1)
    target = jnp.sum(jnp.where(one_hot, logits, 0), axis=1)
    lse, nonempty = masked_logsumexp(logits, ~one_hot, axis=1)
    keep = valid & nonempty
  else:
    valid = keep = (labels >= 0) & (labels < num_classes)
    target = jnp.take_along_axis(
        logits, jnp.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    lse = jax.nn.logsumexp(logits, axis=1)
  correct = jnp.argmax(logits, axis=1) == labels
  return masked_mean(lse - target, keep), {
      "accuracy": masked_mean(correct, valid),
  }


def get_param(name: str, params, key: str, dim: int, axis: int) -> Array:
  """``params[key]`` as a 2-D array whose ``axis`` has size ``dim``."""
  if not hasattr(params, "keys") or key not in params:
    raise ValueError(
        f"{name}: params must be a dict with key {key!r}, got "
        f"{type(params).__name__} with keys "
        f"{sorted(params) if hasattr(params, 'keys') else None}.")
  value = jnp.asarray(params[key])
  if value.ndim != 2 or value.shape[axis] != dim:
    raise ValueError(
        f"{name}: params[{key!r}] must be 2-D with size {dim} (the embedding "
        f"dim) on axis {axis}, got shape {value.shape}.")
  return value


def check_sizes(name: str, num_classes: int, dim: int):
  """Raises ValueError unless ``num_classes >= 1`` and ``dim >= 1``."""
  if int(num_classes) < 1 or int(dim) < 1:
    raise ValueError(
        f"{name}: num_classes and dim must be >= 1, got num_classes="
        f"{num_classes!r}, dim={dim!r}.")


def check_max_positives(name: str, max_positives):
  """Raises ValueError unless ``max_positives`` is None or an int >= 1."""
  if max_positives is not None and (
      isinstance(max_positives, bool) or not isinstance(max_positives, int)
      or max_positives < 1):
    raise ValueError(
        f"{name}: max_positives must be None or an int >= 1, got "
        f"{max_positives!r}.")


# Table widths tried below ``max_positives``: K - 1 for P x K batches with
# K = 2, 4, 8, 16 (the papers' batches), so a table is never much wider than
# the batch's largest class.
_TABLE_WIDTHS = (1, 3, 7, 15)


def by_positive_table(labels: Array, max_positives: int | None,
                      table_fn, exact_fn, operand):
  """Runs ``table_fn`` on a positive table if it holds every positive.

  ``table_fn(operand, index, valid)`` works on each anchor's positives
  gathered into a ``[B, W]`` table (fast for P x K batches, ``O(B^2 W)``);
  ``exact_fn(operand)`` works for any label composition. ``W`` is chosen at
  run time with ``jax.lax.switch``: the narrowest of 1, 3, 7, 15 and
  ``min(max_positives, B - 1)`` that holds the batch's largest class (its
  size less one), so a P x 4 batch works on ``[B, 3, B]`` whatever the cap.
  When some anchor has more than ``max_positives`` positives, ``exact_fn``
  runs instead, so the result never depends on ``max_positives``, only the
  speed does. ``max_positives=None`` always uses ``exact_fn``. All must
  return pytrees of the same shapes and dtypes. Prefer outputs without
  gradient (integer selections and counts, computed from a ``stop_gradient``
  operand): a differentiated ``switch`` keeps the residuals of every branch.
  (Under ``vmap`` the ``switch`` becomes a ``select`` and every branch runs.)
  """
  b = labels.shape[0]
  if max_positives is None or b < 2:
    return exact_fn(operand)
  cap = min(int(max_positives), b - 1)
  index, valid, num_positives = _distances.positive_table(labels, cap)
  widths = [w for w in _TABLE_WIDTHS if w < cap] + [cap]
  branches = [
      (lambda o, w=w: table_fn(o, index[:, :w], valid[:, :w]))
      for w in widths]
  if cap < b - 1:  # the cap can overflow: the exact form takes over
    branches.append(exact_fn)
  if len(branches) == 1:
    return branches[0](operand)
  most = jnp.max(num_positives)
  choice = jnp.searchsorted(jnp.asarray(widths, jnp.int32), most, side="left")
  return jax.lax.switch(jnp.minimum(choice, len(branches) - 1), branches,
                        operand)


def sortable_key(x: Array) -> Array:
  """Integers ordered like the floats ``x`` (``-0.0`` maps to ``+0.0``).

  XLA:CPU sorts a single integer array several times faster than floats (the
  float comparator handles NaN); losses that only need sorted *values* sort
  these keys and compare queries through the same map. No NaN allowed.
  """
  int_dtype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
  x = jnp.where(x == 0, jnp.zeros_like(x), x)
  bits = jax.lax.bitcast_convert_type(x, int_dtype)
  return jnp.where(bits >= 0, bits, bits ^ jnp.iinfo(int_dtype).max)


# Entries of a [b, W, B] table block on CPU (512 KiB of float32: cache-sized).
_BLOCK_ELEMENTS = 1 << 17


def by_anchor_blocks(fn, width: int, *rows: Array):
  """``fn(*rows)``, on CPU computed for blocks of anchors in turn.

  ``rows`` are per-anchor arrays (leading axis ``B``, the widest ``B``
  columns) and ``fn``'s outputs are too. The table forms build
  ``[B, W, B]`` temporaries, and XLA:CPU writes each one out before its
  reductions read it back, so on all anchors at once they stream through
  main memory. Blocks of ``b`` anchors whose ``[b, W, B]`` arrays fit in
  cache (``_BLOCK_ELEMENTS``; the last block zero-padded) make semi-hard
  mining 3.3x, the hinge counts 2.8x and the soft table 1.7x faster at
  ``B = 2048``, ``W = 3`` (measured on one thread); margin's
  distance-weighted draws (``[B, B]`` rows, ``width=1``) take the whole loss
  from 82 to 73 ms. Other backends fuse the whole table, and run
  ``fn`` once.
  """
  b, n = rows[0].shape[0], max(r.shape[-1] for r in rows)
  block = 1 << max(0, (_BLOCK_ELEMENTS // max(width * n, 1)).bit_length() - 1)
  if jax.default_backend() != "cpu" or block >= b:
    return fn(*rows)
  pad = -b % block
  blocks = tuple(
      jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1)).reshape(
          (-1, block) + r.shape[1:]) for r in rows)
  out = jax.lax.map(lambda r: fn(*r), blocks)
  return jax.tree.map(lambda z: z.reshape((-1,) + z.shape[2:])[:b], out)
