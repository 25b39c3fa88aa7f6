"""Magnet loss (Rippel et al., 2016, eq. 5): the jittable batch objective.

The batch is a set of examples each tagged with the id of the cluster of the
Magnet cluster index it belongs to (:mod:`dmlx.methods.magnet` builds the index
and samples neighbourhoods of M clusters × D examples). The loss estimates each
cluster's mean and the variance σ² from the batch itself, then asks every
example to be closer to its own cluster mean than to the means of clusters of
other classes, by a gap of α in units of variance:

.. math::

  \\hat{\\mathcal{L}} = \\frac{1}{MD} \\sum_{m,d} \\Big\\{
    \\tfrac{1}{2\\hat\\sigma^2}\\|r^m_d - \\hat\\mu_m\\|^2 + \\alpha
    + \\log \\sum_{\\hat\\mu: C(\\hat\\mu) \\neq C(r^m_d)}
      e^{-\\frac{1}{2\\hat\\sigma^2}\\|r^m_d - \\hat\\mu\\|^2} \\Big\\}_+

Shapes are static: the batch's clusters are found by grouping on cluster id
(the first example of each cluster is that cluster's *slot*), so the same
function serves the sampler's M×D layout, any other composition, and a batch
sharded over devices under ``jit``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _distances

Array = jax.Array


def magnet_loss(
    embeddings: Array,
    labels: Array,
    cluster_ids: Array,
    *,
    alpha: float = 1.0,
    variance_standardise: bool = True,
    leave_one_out_means: bool = False,
    eps: float = 1e-8,
) -> tuple[Array, dict[str, Array]]:
  """Magnet loss of a batch (Rippel et al., 2016, eq. 5).

  .. math::

    \\ell_n = \\Big\\{ \\tfrac{\\|r_n - \\hat\\mu(r_n)\\|^2}{2\\hat\\sigma^2}
      + \\alpha + \\operatorname{logsumexp}_{\\hat\\mu: C(\\hat\\mu) \\ne y_n}
      \\big(-\\tfrac{\\|r_n - \\hat\\mu\\|^2}{2\\hat\\sigma^2}\\big) \\Big\\}_+,
    \\qquad
    \\hat\\sigma^2 = \\frac{1}{B-1} \\sum_n \\|r_n - \\hat\\mu(r_n)\\|^2,

  where :math:`\\hat\\mu_m` is the mean of the batch's examples of cluster
  :math:`m` (eq. 5's cluster-mean estimate) and the log-sum-exp runs over the
  batch's clusters of *other* classes only (the impostors).

  An example with no impostor cluster in the batch (a batch of one class) has
  no defined term: it gets loss 0 and is left out of the mean, so such a batch
  gives loss 0 rather than ``inf``/NaN.

  Args:
    embeddings: representations ``r`` ``[batch_size, dim]``.
    labels: class ids ``[batch_size]`` (integer).
    cluster_ids: id of each example's cluster in the cluster index
      ``[batch_size]`` (integer; any values, only equality matters). Examples
      sharing an id form one cluster of the batch.
    alpha: the cluster separation gap α, in units of variance when
      ``variance_standardise`` (the paper's "gap").
    variance_standardise: divide squared distances by ``2σ̂²`` (eq. 5). With
      ``False`` the exponent is ``-‖r - μ‖²`` (the "no variance normalisation"
      assumption of the triplet reduction, section 3.4).
    leave_one_out_means: estimate each example's *own* cluster mean without
      the example itself, ``(n_m μ̂_m - r)/(n_m - 1)``; examples alone in their
      cluster then have no own mean and are left out. This is the reading
      under which section 3.4's reduction to the symmetrised triplet loss
      (eq. 7) is exact; the paper's eq. 5 uses the plain mean (``False``).
    eps: lower bound on σ̂² (a batch where every cluster has one example has
      σ̂² = 0).

  Returns:
    ``(loss, aux)``: the scalar mean of the defined per-example terms, and
    ``aux`` with ``'per_example_loss'`` ``[batch_size]`` (0 where undefined),
    ``'sigma2'`` (the batch estimate σ̂², for eq. 6's running average),
    ``'num_clusters'`` (clusters present in the batch) and
    ``'active_fraction'`` (fraction of defined terms with a positive hinge).

  References:
    Rippel, Paluri, Dollár, Bourdev. Metric Learning with Adaptive Density
    Discrimination. ICLR 2016.
  """
  _check_inputs(embeddings, labels, cluster_ids)
  r = embeddings.astype(jnp.promote_types(embeddings.dtype, jnp.float32))
  batch_size = r.shape[0]

  # Slots: slot j stands for the cluster of example j if j is that cluster's
  # first example in the batch. membership[i, j] = example i is in slot j.
  # slot[i] = the first example of i's cluster: segment sums over it give
  # the slot means in O(B D) (no [B, B] x [B, D] membership products), and
  # the first examples come from the sorted cluster ids (no [B, B] mask).
  order, start, _, _ = _distances.class_runs(cluster_ids)
  slot = order[start]                                           # [B]
  is_slot = slot == jnp.arange(batch_size)
  counts = jax.ops.segment_sum(jnp.ones((batch_size,), r.dtype), slot,
                               num_segments=batch_size)         # [B]
  means = jax.ops.segment_sum(r, slot, num_segments=batch_size) / (
      jnp.maximum(counts, 1.0)[:, None])                        # [B, D]
  slot_class = labels

  # Own-cluster residuals, computed directly for accuracy (small distances).
  own_mean = means[slot]                                        # [B, D]
  own_count = counts[slot]                                      # [B]
  residual = r - own_mean
  sigma2 = jnp.sum(residual ** 2) / max(batch_size - 1, 1)
  sigma2 = jnp.maximum(sigma2, eps)
  if leave_one_out_means:
    has_positive = own_count >= 2
    loo_mean = (own_count[:, None] * own_mean - r) / jnp.maximum(
        own_count - 1.0, 1.0)[:, None]
    own_dist = jnp.sum((r - loo_mean) ** 2, axis=1)
  else:
    has_positive = jnp.ones((batch_size,), bool)
    own_dist = jnp.sum(residual ** 2, axis=1)

  # Distances to every slot's mean (only impostor slots are used).
  sq_r = jnp.sum(r ** 2, axis=1)
  sq_mu = jnp.sum(means ** 2, axis=1)
  dist = jnp.maximum(sq_r[:, None] - 2.0 * r @ means.T + sq_mu[None, :], 0.0)
  impostor = is_slot[None, :] & (slot_class[None, :] != labels[:, None])
  has_impostor = jnp.any(impostor, axis=1)

  scale = 0.5 / sigma2 if variance_standardise else 1.0
  logits = -scale * dist
  log_denominator = _masked_logsumexp(logits, impostor, has_impostor)
  margin = scale * own_dist + alpha + log_denominator
  defined = has_impostor & has_positive
  per_example = jnp.where(defined, jax.nn.relu(margin), 0.0)
  num_defined = jnp.sum(defined)
  loss = jnp.sum(per_example) / jnp.maximum(num_defined, 1)
  aux = {
      "per_example_loss": per_example,
      "sigma2": sigma2,
      "num_clusters": jnp.sum(is_slot),
      "active_fraction": jnp.sum(defined & (margin > 0)) / jnp.maximum(
          num_defined, 1),
  }
  return loss, aux


def _masked_logsumexp(logits: Array, mask: Array, any_mask: Array) -> Array:
  """Row-wise log Σ_{mask} exp(logits), 0 on rows without any True entry.

  Max-shifted, and NaN-free in value and gradient on empty rows. The shifted
  logits are clipped to ≤ 0 and the sum to ≥ 1 (both hold exactly in real
  arithmetic): XLA may recompute ``logits`` inside a fusion with different
  rounding than the copy the row maximum was taken from, which at huge
  logits (tiny σ²) would otherwise overflow to ±inf. ``where`` rather than
  ``minimum``/``maximum`` keeps the full gradient at the ties.
  """
  masked = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(masked, axis=1)
  row_max = jax.lax.stop_gradient(jnp.where(any_mask, row_max, 0.0))
  shifted = logits - row_max[:, None]
  shifted = jnp.where(mask, jnp.where(shifted > 0, 0.0, shifted), -jnp.inf)
  summed = jnp.sum(jnp.exp(shifted), axis=1)
  summed = jnp.where(any_mask & (summed >= 1.0), summed, 1.0)
  return jnp.where(any_mask, row_max + jnp.log(summed), 0.0)


def _check_inputs(embeddings: Array, labels: Array, cluster_ids: Array) -> None:
  if embeddings.ndim != 2:
    raise ValueError(f"magnet_loss: embeddings must be [batch_size, dim], got "
                     f"shape {embeddings.shape}.")
  batch_size = embeddings.shape[0]
  for name, value in (("labels", labels), ("cluster_ids", cluster_ids)):
    if value.shape != (batch_size,):
      raise ValueError(f"magnet_loss: {name} must have shape ({batch_size},) "
                       f"to match embeddings, got {value.shape}.")
    if not jnp.issubdtype(value.dtype, jnp.integer):
      raise TypeError(f"magnet_loss: {name} must be integer, got "
                      f"{value.dtype}.")
