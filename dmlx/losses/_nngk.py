"""Nearest-neighbour Gaussian kernel (NNGK) loss: the jittable half of NNGK.

Meyer, Harwood & Drummond, "Deep metric learning and image classification with
nearest neighbour Gaussian kernels", ICIP 2018. Every training example's
embedding is a Gaussian kernel *centre* c_i (eq. 1) with a learned weight w_i
and a global width σ. The probability that an embedding x has class Q is the
weighted kernel mass of the class-Q centres among x's approximate nearest
centres 𝒩 (eq. 3)::

  Pr(x ∈ Q) = Σ_{i ∈ Q∩𝒩} w_i f(x, c_i) / Σ_{j ∈ 𝒩} w_j f(x, c_j),
  f(x, c) = exp(-‖x - c‖² / (2σ²)).

The loss of a training example with label R is -ln Pr(x ∈ R); a training
example never uses its own centre.

The centres, their labels and each training example's candidate neighbour list
are held in a :class:`CentreBank` built on the host between epochs (see
:mod:`dmlx.methods.nngk`); this module only gathers from it, so it runs under
``jit``/``grad``/``vmap`` with static shapes.

Numerics. Both sums of eq. 3 are evaluated as log-sum-exps of the *logits*
``ℓ_j = ln w_j - ‖x - c_j‖² / (2σ²)``; the loss is
``logsumexp_𝒩(ℓ) - logsumexp_{Q∩𝒩}(ℓ)``, which is exact for any σ and distance
(far neighbours do not underflow to ``ln 0``). Squared distances are
computed directly as ``Σ (x - c)²`` (no cancellation), shifted per example by
the nearest candidate's (a constant that cancels in eq. 3) and the scaled
value is capped at ``_MAX_SCALED_D2`` (1e30), so σ → 0 or huge distances give
huge but finite logits and losses instead of ``inf``/``NaN``; gradients are
finite whenever the true gradient, of size ‖x - c‖/σ², fits in the float
type (e.g. σ = 1e-8 with distances 1e8 in float32).

Centre weights. The paper learns the raw w_i (initialised to 1) with the
network and states no constraint; a raw w_i can be pushed to or below 0 by a
large SGD step, where ``ln w_i`` is undefined. We keep the paper's
parameterisation (same gradients, so learning rates and weight decay carry
over) and use ``w_i ← max(w_i, min_weight)`` in the loss: a centre whose weight
is driven to the floor is effectively pruned (its weight no longer receives a
gradient). ``aux['nngk_weight_at_floor']`` reports how many of the weights a
batch used sat at the floor.

Examples without a positive. When an example's neighbour list holds no centre
of its own class, eq. 3 gives Pr = 0 and an infinite loss; the paper does not
say what it does then. We drop such examples from the loss (mask) and report
their fraction in ``aux['nngk_no_positive']``.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from dmlx.losses._bank_distances import squared_distances_to_bank

Array = jax.Array

# Cap on d²/(2σ²): keeps logits finite when float32 overflows (σ → 0).
_MAX_SCALED_D2 = 1e30
# Finite stand-in for -inf in masked log-sum-exps (keeps gradients NaN-free).
_NEG = -1e30


@flax.struct.dataclass
class CentreBank:
  """The stored Gaussian centres and candidate neighbour lists (Section 2.3).

  An immutable pytree argument of the jitted train step; rebuilt on the host
  every ``update_interval`` epochs with the same shapes.

  Attributes:
    centres: ``[num_train, dim]`` float32, the training embeddings computed
      without dropout at the last refresh (the kernel centres c_i).
    labels: ``[num_train]`` int32 class of each centre.
    neighbours: ``[num_train, k]`` int32, row i = indices of the approximate
      nearest centres to training example i, nearest first, never i itself;
      padded entries hold 0 and are masked.
    mask: ``[num_train, k]`` bool, True where ``neighbours`` is a real entry.
  """
  centres: Array
  labels: Array
  neighbours: Array
  mask: Array

  @property
  def num_neighbours(self) -> int:
    return self.neighbours.shape[-1]


def _masked_logsumexp(logits: Array, mask: Array) -> Array:
  """log Σ_{mask} exp(logits) over the last axis; ``_NEG`` where mask is empty.

  Masked entries never produce NaN gradients (no ``-inf`` is formed)."""
  safe = jnp.where(mask, logits, _NEG)
  peak = jax.lax.stop_gradient(jnp.max(safe, axis=-1, keepdims=True))
  total = jnp.sum(jnp.where(mask, jnp.exp(safe - peak), 0.0), axis=-1)
  any_ = jnp.any(mask, axis=-1)
  return jnp.where(any_, jnp.log(jnp.where(any_, total, 1.0)) + peak[..., 0],
                   _NEG)


def _check_sigma(sigma) -> None:
  try:
    value = float(sigma)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # traced σ: cannot check here.
  if not value > 0.0:
    raise ValueError(f"NNGK sigma must be > 0, got {sigma!r}.")


def kernel_logits(embeddings: Array, centres: Array, weights: Array, *,
                  sigma: float | Array, min_weight: float = 1e-4,
                  mask: Optional[Array] = None) -> Array:
  """Log of the weighted Gaussian kernel values ln(w_j f(x, c_j)) (eq. 1-2).

  .. math::
    ℓ_{bj} = \\ln \\max(w_{bj}, w_{min}) - (\\|x_b - c_{bj}\\|^2 - s_b) / (2σ^2)

  With ``mask`` given, each row is shifted by ``s_b`` = its smallest squared
  distance among masked-in entries (a per-row constant, which cancels in the
  ratio of eq. 2-3, without gradient); this keeps the differences exact for
  tiny σ or huge distances. Without ``mask``, ``s_b = 0`` (the plain kernel).

  Args:
    embeddings: ``[batch_size, dim]`` embeddings x.
    centres: ``[batch_size, k, dim]`` each example's candidate centres.
    weights: ``[batch_size, k]`` their weights w (raw, see module docstring).
    sigma: the global kernel width σ > 0.
    min_weight: floor applied to the weights before the log.
    mask: optional ``[batch_size, k]`` bool, entries that define the shift.

  Returns:
    ``[batch_size, k]`` logits, float32 (float64 for float64 embeddings).
  """
  _check_sigma(sigma)
  dtype = jnp.promote_types(embeddings.dtype, jnp.float32)  # bf16 -> f32
  diff = embeddings[:, None, :].astype(dtype) - centres.astype(dtype)
  # exact, >= 0, no cancellation; as a batched dot (one pass) rather than a
  # square and a reduction: measured faster on CPU.
  d2 = jnp.einsum("bkd,bkd->bk", diff, diff,
                  precision=jax.lax.Precision.HIGHEST)
  return _logits_from_squared_distances(d2, weights, sigma=sigma,
                                        min_weight=min_weight, mask=mask)


def _logits_from_squared_distances(d2: Array, weights: Array, *,
                                   sigma: float | Array, min_weight: float,
                                   mask: Optional[Array]) -> Array:
  """:func:`kernel_logits` given the squared distances ``d2 [B, k]``."""
  dtype = d2.dtype
  if mask is not None:
    ref = jnp.min(jnp.where(mask, d2, jnp.inf), axis=-1, keepdims=True)
    ref = jax.lax.stop_gradient(jnp.where(jnp.isfinite(ref), ref, 0.0))
    d2 = d2 - ref
  scale = 0.5 / jnp.square(jnp.asarray(sigma, dtype))
  scaled = jnp.minimum(d2 * scale, _MAX_SCALED_D2)
  log_w = jnp.log(jnp.maximum(weights.astype(dtype), min_weight))
  return log_w - scaled


def nngk_from_neighbours(
    embeddings: Array,
    labels: Array,
    centres: Array,
    centre_labels: Array,
    weights: Array,
    mask: Array,
    *,
    sigma: float | Array,
    min_weight: float = 1e-4,
) -> tuple[Array, Array]:
  """Per-example NNGK loss -ln Pr(x ∈ R) over given neighbours (eq. 3).

  .. math::
    L_b = \\ln \\sum_{j ∈ 𝒩_b} w_j f(x_b, c_j)
          - \\ln \\sum_{i ∈ R_b ∩ 𝒩_b} w_i f(x_b, c_i)

  Args:
    embeddings: ``[batch_size, dim]`` current embeddings x (with dropout).
    labels: ``[batch_size]`` int true classes R.
    centres: ``[batch_size, k, dim]`` candidate centres of each example.
    centre_labels: ``[batch_size, k]`` int classes of those centres.
    weights: ``[batch_size, k]`` their weights w.
    mask: ``[batch_size, k]`` bool, False for padding / excluded entries.
    sigma: the global kernel width σ > 0.
    min_weight: floor applied to the weights (see module docstring).

  Returns:
    ``(loss [batch_size], has_positive [batch_size] bool)``: the loss is 0
    where ``has_positive`` is False (no valid same-class neighbour).
  """
  if embeddings.ndim != 2 or centres.ndim != 3:
    raise ValueError(
        f"NNGK expects embeddings [B, D] and centres [B, k, D], got "
        f"{embeddings.shape} and {centres.shape}.")
  if centres.shape[0] != embeddings.shape[0] or (
      centres.shape[2] != embeddings.shape[1]):
    raise ValueError(
        f"NNGK centres shape {centres.shape} does not match embeddings "
        f"{embeddings.shape}.")
  for name, arr in (("centre_labels", centre_labels), ("weights", weights),
                    ("mask", mask)):
    if arr.shape != centres.shape[:2]:
      raise ValueError(f"NNGK {name} shape {arr.shape} != {centres.shape[:2]}.")
  mask = mask.astype(bool)
  logits = kernel_logits(embeddings, centres, weights, sigma=sigma,
                         min_weight=min_weight, mask=mask)
  return _loss_from_logits(logits, labels, centre_labels, mask)


def _loss_from_logits(logits: Array, labels: Array, centre_labels: Array,
                      mask: Array) -> tuple[Array, Array]:
  """Eq. 3 per example from the kernel logits (see nngk_from_neighbours)."""
  positive = mask & (centre_labels == labels[:, None])
  has_positive = jnp.any(positive, axis=-1)
  log_all = _masked_logsumexp(logits, mask)
  log_pos = _masked_logsumexp(logits, positive)
  loss = jnp.where(has_positive, log_all - log_pos, 0.0)
  return loss, has_positive


def gather_neighbours(bank: CentreBank, weights: Array,
                      index: Array) -> tuple[Array, Array, Array, Array]:
  """Looks up the stored neighbours of training rows ``index`` (Section 2.3).

  Args:
    bank: the centre bank.
    weights: ``[num_train]`` per-centre weights w.
    index: ``[batch_size]`` int training-set row of each batch example.

  Returns:
    ``(centres [B, k, D], centre_labels [B, k], weights [B, k], mask [B, k])``;
    the mask also drops any entry equal to the example's own row (a training
    example never uses its own centre).
  """
  nbrs, centre_labels, w, mask = _neighbour_entries(bank, weights, index)
  return bank.centres[nbrs], centre_labels, w, mask


def _neighbour_entries(bank: CentreBank, weights: Array, index: Array
                       ) -> tuple[Array, Array, Array, Array]:
  """:func:`gather_neighbours` less the centres: ``(neighbours [B, k],
  centre_labels, weights, mask)``, the mask without the example's own row."""
  nbrs = bank.neighbours[index]                       # [B, k]
  mask = bank.mask[index] & (nbrs != index[:, None])
  return nbrs, bank.labels[nbrs], weights[nbrs], mask


def nngk(
    embeddings: Array,
    labels: Array,
    index: Array,
    bank: CentreBank,
    weights: Optional[Array] = None,
    *,
    sigma: float | Array,
    min_weight: float = 1e-4,
    reduction: str = "mean",
) -> tuple[Array, dict]:
  """NNGK loss of a batch against the stored centre bank (eq. 3, Section 2.3).

  Batch example b (training-set row ``index[b]``) is scored against the stored
  centres ``bank.neighbours[index[b]]``; the stored centres are constants (the
  gradient flows into the current embeddings and the weights only).

  Args:
    embeddings: ``[batch_size, dim]`` current embeddings (dropout allowed).
    labels: ``[batch_size]`` int class labels.
    index: ``[batch_size]`` int training-set row of each example.
    bank: the :class:`CentreBank`.
    weights: ``[num_train]`` per-centre weights w_i, or None for w_i = 1.
    sigma: the global kernel width σ > 0 (in units of embedding distance; with
      L2-normalised embeddings ‖x - c‖² = 2 - 2 cos, so σ² acts as the
      temperature of a softmax over cosine similarities and σ ≲ 0.5 is needed).
    min_weight: floor on w_i before its log.
    reduction: ``'mean'`` over examples that have a positive, or ``'sum'``
      (the paper's summed loss).

  Returns:
    ``(scalar loss, aux)``; aux holds ``nngk_no_positive`` (fraction of the
    batch without a same-class neighbour, dropped), ``nngk_prob_true`` (mean
    Pr of the true class), ``nngk_weight_at_floor`` (fraction of used
    weights at the floor) and ``nngk_loss_per_example`` ``[batch_size]``.
  """
  if reduction not in ("mean", "sum"):
    raise ValueError(f"NNGK reduction must be 'mean' or 'sum', got "
                     f"{reduction!r}.")
  if weights is None:
    weights = jnp.ones(bank.labels.shape, jnp.float32)
  if weights.shape != bank.labels.shape:
    raise ValueError(f"NNGK weights shape {weights.shape} != number of "
                     f"centres {bank.labels.shape}.")
  _check_reduction(reduction)
  _check_sigma(sigma)
  if embeddings.ndim != 2 or embeddings.shape[1:] != bank.centres.shape[1:]:
    raise ValueError(
        f"NNGK embeddings must be [batch_size, {bank.centres.shape[1]}] to "
        f"match the bank's centres {bank.centres.shape}, got "
        f"{embeddings.shape}.")
  nbrs, centre_labels, w, mask = _neighbour_entries(bank, weights, index)
  d2 = squared_distances_to_bank(embeddings, bank.centres, nbrs)
  logits = _logits_from_squared_distances(d2, w, sigma=sigma,
                                          min_weight=min_weight, mask=mask)
  per_example, has_pos = _loss_from_logits(logits, labels, centre_labels,
                                           mask)
  return _reduce(per_example, has_pos, w, mask, min_weight=min_weight,
                 reduction=reduction)


def nngk_gathered(
    embeddings: Array,
    labels: Array,
    centres: Array,
    centre_labels: Array,
    weights: Array,
    mask: Array,
    *,
    sigma: float | Array,
    min_weight: float = 1e-4,
    reduction: str = "mean",
) -> tuple[Array, dict]:
  """NNGK loss of a batch whose neighbour centres were gathered already
  (eq. 3): :func:`nngk` after its look-up, for a centre bank that stays on
  the host and sends each batch its ``[B, k, D]`` neighbour centres
  (``config.method.bank_placement = 'host'``).

  Args:
    embeddings: ``[batch_size, dim]`` current embeddings.
    labels: ``[batch_size]`` int class labels.
    centres: ``[batch_size, k, dim]`` each example's stored neighbour centres
      (constants: no gradient flows into them).
    centre_labels: ``[batch_size, k]`` their classes.
    weights: ``[batch_size, k]`` their weights w.
    mask: ``[batch_size, k]`` bool, real entries other than the example's own
      centre.
    sigma, min_weight, reduction: as :func:`nngk`.

  Returns:
    ``(scalar loss, aux)`` as :func:`nngk`.
  """
  _check_reduction(reduction)
  centres = jax.lax.stop_gradient(centres)
  per_example, has_pos = nngk_from_neighbours(
      embeddings, labels, centres, centre_labels, weights, mask, sigma=sigma,
      min_weight=min_weight)
  return _reduce(per_example, has_pos, weights, mask.astype(bool),
                 min_weight=min_weight, reduction=reduction)


def _check_reduction(reduction: str) -> None:
  if reduction not in ("mean", "sum"):
    raise ValueError(f"NNGK reduction must be 'mean' or 'sum', got "
                     f"{reduction!r}.")


def _reduce(per_example: Array, has_pos: Array, weights: Array, mask: Array,
            *, min_weight: float, reduction: str) -> tuple[Array, dict]:
  """The batch loss and aux of :func:`nngk` from the per-example losses."""
  count = jnp.sum(has_pos)
  total = jnp.sum(per_example)
  loss = total / jnp.maximum(count, 1) if reduction == "mean" else total
  at_floor = jnp.sum(mask & (weights <= min_weight)) / jnp.maximum(jnp.sum(mask), 1)
  aux = {
      "nngk_no_positive": 1.0 - jnp.mean(has_pos.astype(jnp.float32)),
      "nngk_prob_true": jnp.sum(jnp.where(has_pos, jnp.exp(-per_example), 0.0))
                        / per_example.shape[0],
      "nngk_weight_at_floor": at_floor,
      "nngk_loss_per_example": per_example,
  }
  return loss, aux
