"""Embedding-spread regularisers: DML-DA density adaptivity, GOR, entropy.

Pure, jittable functions of a batch of embeddings and their integer labels
that are *added* to a base metric-learning loss (contrastive, N-pair,
triplet, ...):

* :func:`class_density` -- the density of each class in the batch, eq. (5) of
  Li et al., "Deep Metric Learning with Density Adaptivity" (DML-DA, 2019).
* :func:`density_regularizer` -- the density regulariser L_DA, eq. (6), with
  the relaxed inter-class density correlation penalty of eq. (8).
* :func:`global_orthogonal_regularizer` -- GOR of Zhang et al., "Learning
  Spread-out Local Feature Descriptors" (2017), DML-DA's reference [40].
* :func:`entropy_regularizer` -- the entropy (EN) regulariser DML-DA compares
  with (its reference [51], Niu et al. 2012), read as the entropy of each
  example's neighbour distribution in the batch (see its docstring).

DML-DA's own base loss is in :mod:`dmlx.losses._dmlda_contrastive`.

All per-class quantities are segment sums over ``num_classes`` segments so
shapes are static (``num_classes`` is the number of *training* classes);
classes absent from the batch are masked out, contribute nothing and
receive zero gradient. Labels outside ``[0, num_classes)`` (e.g. ``-1`` for
padding) are ignored by the density functions. Every function returns
``(scalar loss, aux dict of scalars)`` and is finite for any batch
composition (one class, all singletons, duplicated or zero embeddings).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from dmlx.losses._distances import l2_normalize

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_batch(embeddings: Array, labels: Array, name: str) -> None:
  if embeddings.ndim != 2:
    raise ValueError(f"{name}: embeddings must be [batch_size, dim], got "
                     f"shape {embeddings.shape}.")
  if labels.shape != embeddings.shape[:1]:
    raise ValueError(f"{name}: labels shape {labels.shape} does not match "
                     f"embeddings shape {embeddings.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name}: labels must be integers, got {labels.dtype}.")


def class_density(embeddings: Array, labels: Array, num_classes: int, *,
                  normalize: bool = True) -> tuple[Array, Array]:
  """Density of every class in the batch, eq. (5) of DML-DA.

  .. math::
    D_{avg}(S_c) = \\frac{1}{|S_c|} \\sum_{x_i \\in S_c}
        \\| f(x_i) - \\mu_c \\|_2^2, \\qquad
    \\mu_c = \\frac{1}{|S_c|} \\sum_{x_i \\in S_c} f(x_i).

  A *larger* value means a *lower* density (more intra-class spread). For
  L2-normalised embeddings it lies in ``[0, 1]``; a class seen once has 0.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings f(x_i).
    labels: ``[batch_size]`` integer class ids; ids outside
      ``[0, num_classes)`` are ignored.
    num_classes: number of training classes C (static).
    normalize: L2-normalise the embeddings first (the paper's embeddings are
      length-normalised; idempotent if they already are).

  Returns:
    ``(density [num_classes], counts [num_classes])``: D_avg(S_c), 0 for
    classes absent from the batch, and |S_c| in the batch (float).

  References:
    Li, Yao, Pan, Chao, Mei, "Deep Metric Learning with Density Adaptivity",
    IEEE Trans. Multimedia, 2019.
  """
  _check_batch(embeddings, labels, "class_density")
  if num_classes < 1:
    raise ValueError(f"class_density: num_classes must be >= 1, got "
                     f"{num_classes}.")
  x = l2_normalize(embeddings) if normalize else embeddings
  # Segment sums, O(B D): ids outside [0, C) go to segment C, which is
  # dropped (no [B, C] one-hot products).
  ids = jnp.where((labels >= 0) & (labels < num_classes), labels,
                  num_classes)
  return _segment_density(x, ids, num_classes)


def _density_parts(x: Array, ids: Array, num_classes: int):
  """``(density, counts, x - own centroid, 1 / max(counts, 1))`` by segment
  sums over ``ids`` in ``[0, num_classes]`` (segment ``num_classes`` is
  dropped, and its rows' centroid is 0)."""
  segment_sum = lambda v: jax.ops.segment_sum(v, ids, num_classes)
  counts = segment_sum(jnp.ones(ids.shape, x.dtype))               # [C]
  inv_counts = 1.0 / jnp.maximum(counts, 1.0)
  centroids = segment_sum(x) * inv_counts[:, None]                 # [C, D]
  diff = x - jnp.take(centroids, ids, axis=0, mode="fill", fill_value=0)
  density = segment_sum(jnp.sum(jnp.square(diff), axis=-1)) * inv_counts
  return density, counts, diff, inv_counts


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _segment_density(x: Array, ids: Array, num_classes: int
                     ) -> tuple[Array, Array]:
  r"""``(D_avg(S_c), |S_c|)`` for every segment, eq. (5) of DML-DA.

  Its derivative is written out (a custom JVP) because the mean's own
  derivative cancels: :math:`\sum_{i \in c} (x_i - \mu_c) = 0`, so
  :math:`dD_c = \frac{2}{|S_c|} \sum_{i \in c} (x_i - \mu_c) \cdot dx_i`
  exactly, one segment sum whose transpose (the gradient) is one gather.
  Differentiating the segment sums and the centroid gather as written costs
  two more scatter / gather pairs, which at these sizes are most of the time.
  """
  density, counts, _, _ = _density_parts(x, ids, num_classes)
  return density, counts


@_segment_density.defjvp
def _segment_density_jvp(num_classes, primals, tangents):
  x, ids = primals
  dx, _ = tangents
  density, counts, diff, inv_counts = _density_parts(x, ids, num_classes)
  d_density = jax.ops.segment_sum(
      2.0 * jnp.sum(diff * dx, axis=-1), ids, num_classes) * inv_counts
  return (density, counts), (d_density, jnp.zeros_like(counts))


def density_regularizer(
    embeddings: Array,
    labels: Array,
    target_density: Array,
    original_density: Optional[Array] = None,
    *,
    eta: float = 0.5,
    correlation: bool = True,
    min_class_size: int = 2,
    normalize: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """DML-DA density regulariser L_DA, eqs. (6) and (8).

  .. math::
    L_{DA} = \\frac{1}{C} \\sum_c (D_{avg}(S_c) - \\alpha_c)^2
           - \\frac{1}{C} \\sum_c \\alpha_c
           + \\frac{1}{C^2} \\sum_{c_i, c_j} \\big(
               (D^{(0)}_{avg}(S_{c_j}))^\\eta \\alpha_{c_i}
             - (D^{(0)}_{avg}(S_{c_i}))^\\eta \\alpha_{c_j} \\big)^2

  where the sums run over the C classes *present in the batch* (at least
  ``min_class_size`` examples), α_c is the learnable target density of class
  c and D^(0)_avg(S_c) its original density, measured once before training on
  the backbone's features (see :mod:`dmlx.methods.dmlda`).

  Reading of the paper: eq. (8) appends the soft correlation penalty to L_DA
  with weight 1 (its 1/C² being the only normalisation), and eq. (9) then
  multiplies the whole of L_DA -- fit, spread and penalty -- by λ. So this
  function returns eq. (8) as written and the caller adds λ·L_DA. With
  ``correlation=False`` it is eq. (6) alone (the paper's DML-DA⁻).

  The penalty's sum over pairs of present classes is evaluated in O(C) by
  Lagrange's identity (Σ_ij p_i p_j (a_j α_i − a_i α_j)² = 2(Σ p a²)(Σ p α²)
  − 2(Σ p a α)², p the present-class indicator, exact up to round-off), and
  D^(0) is treated as a constant (``stop_gradient``).

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class ids in ``[0, num_classes)``;
      others are ignored.
    target_density: ``[num_classes]`` learnable α_c (paper init: 0.5). A
      negative α_c counts as 0 in the value (a target density is ≥ 0); its
      gradient is that at 0, passed through, so descent moves it back.
    original_density: ``[num_classes]`` D^(0)_avg per class; required when
      ``correlation`` is true.
    eta: exponent η of the inter-class density correlation (paper: 0.5).
    correlation: add eq. (8)'s penalty (False gives DML-DA⁻, eq. (6)).
    min_class_size: a class counts as present when it has at least this many
      examples in the batch. The default 2 leaves out classes seen once,
      whose density is 0 by definition and would only drag their α_c down.
    normalize: L2-normalise the embeddings before measuring densities.

  Returns:
    ``(loss, aux)``: the scalar L_DA and scalars ``density_fit`` (first
    term), ``density_spread`` ((1/C)Σα_c, subtracted), ``density_correlation``
    (the penalty, 0 without it), ``mean_density``, ``mean_target_density``
    (over present classes), ``num_present_classes`` and
    ``negative_target_density`` (present classes whose α_c < 0, used as 0).

  References:
    Li, Yao, Pan, Chao, Mei, "Deep Metric Learning with Density Adaptivity",
    IEEE Trans. Multimedia, 2019, eqs. (5)-(9).
  """
  _check_batch(embeddings, labels, "density_regularizer")
  if target_density.ndim != 1:
    raise ValueError(f"density_regularizer: target_density must be "
                     f"[num_classes], got shape {target_density.shape}.")
  if min_class_size < 1:
    raise ValueError(f"density_regularizer: min_class_size must be >= 1, got "
                     f"{min_class_size}.")
  if correlation:
    if original_density is None:
      raise ValueError("density_regularizer: correlation=True needs "
                       "original_density (got None).")
    if original_density.shape != target_density.shape:
      raise ValueError(
          f"density_regularizer: original_density shape "
          f"{original_density.shape} != target_density shape "
          f"{target_density.shape}.")
    if eta < 0:
      raise ValueError(f"density_regularizer: eta must be >= 0, got {eta}.")
  num_classes = target_density.shape[0]
  density, counts = class_density(embeddings, labels, num_classes,
                                  normalize=normalize)
  raw_alpha = target_density.astype(density.dtype)
  # α_c is a target for D_avg ≥ 0 (a mean squared distance), so a negative
  # α_c (a large optimiser step) has no meaning: its value is taken as 0,
  # with the gradient passed through unchanged so descent lifts it back
  # (d L_DA / d α_c < 0 at α_c = 0 when the other α's are ≥ 0). Exact
  # identity for α_c ≥ 0: values and gradients there are unchanged.
  alpha = jnp.where(raw_alpha >= 0, raw_alpha,
                    raw_alpha - jax.lax.stop_gradient(raw_alpha))
  present = (counts >= min_class_size).astype(density.dtype)     # [C]
  num_present = jnp.sum(present)
  inv_c = 1.0 / jnp.maximum(num_present, 1.0)

  fit = jnp.sum(present * jnp.square(density - alpha)) * inv_c
  spread = jnp.sum(present * alpha) * inv_c
  loss = fit - spread

  if correlation:
    d0 = jax.lax.stop_gradient(
        jnp.maximum(original_density.astype(density.dtype), 0.0))
    # Lagrange's identity, O(C) instead of the [C, C] class-pair sum:
    # sum_ij p_i p_j (a_j al_i - a_i al_j)^2
    #   = 2 (sum p a^2)(sum p al^2) - 2 (sum p a al)^2  (>= 0; clipped there
    # against round-off), with p the present-class indicator.
    a = jnp.power(d0, eta)
    s_aa = jnp.sum(present * a * a)
    s_ll = jnp.sum(present * alpha * alpha)
    s_al = jnp.sum(present * a * alpha)
    pair_sum = 2.0 * (s_aa * s_ll - jnp.square(s_al))
    penalty = jnp.maximum(pair_sum, 0.0) * inv_c * inv_c
    loss = loss + penalty
  else:
    penalty = jnp.zeros((), density.dtype)

  aux = {
      "density_fit": fit,
      "density_spread": spread,
      "density_correlation": penalty,
      "mean_density": jnp.sum(present * density) * inv_c,
      "mean_target_density": spread,
      "num_present_classes": num_present,
      "negative_target_density": jnp.sum(present * (raw_alpha < 0)),
  }
  return loss, aux


def global_orthogonal_regularizer(
    embeddings: Array, labels: Array, *, normalize: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """Global orthogonal regularisation (GOR), Zhang et al. 2017, eq. (9).

  .. math::
    L_{GOR} = M_1^2 + \\max(0, M_2 - 1/d), \\quad
    M_1 = \\frac{1}{N} \\sum_{(i,j)} f_i^\\top f_j, \\quad
    M_2 = \\frac{1}{N} \\sum_{(i,j)} (f_i^\\top f_j)^2

  over the N non-matching (different-label) ordered pairs of the batch:
  pushes the inner products of non-matching L2-normalised embeddings to have
  the mean 0 and second moment 1/d of points uniform on the sphere. The paper
  uses the (anchor, negative) pairs of its triplets; here every non-matching
  pair of the batch is one. A batch without non-matching pairs gives 0.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class ids.
    normalize: L2-normalise the embeddings first (GOR assumes unit vectors).

  Returns:
    ``(loss, aux)`` with scalars ``gor_m1``, ``gor_m2``, ``num_negative_pairs``.

  References:
    Zhang, Yu, Kumar, Chang, "Learning Spread-out Local Feature Descriptors",
    ICCV 2017.
  """
  _check_batch(embeddings, labels, "global_orthogonal_regularizer")
  x = l2_normalize(embeddings) if normalize else embeddings
  dim = x.shape[-1]
  sim = jnp.matmul(x, x.T, precision=_HIGHEST)
  negative = (labels[:, None] != labels[None, :]).astype(x.dtype)
  num = jnp.sum(negative)
  inv_n = 1.0 / jnp.maximum(num, 1.0)
  m1 = jnp.sum(negative * sim) * inv_n
  m2 = jnp.sum(negative * jnp.square(sim)) * inv_n
  loss = jnp.square(m1) + jax.nn.relu(m2 - 1.0 / dim)
  return loss, {"gor_m1": m1, "gor_m2": m2, "num_negative_pairs": num}


def entropy_regularizer(
    embeddings: Array, labels: Array, *, temperature: float = 1.0,
    normalize: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """Entropy (EN) regulariser that DML-DA compares against (its ref. [51]).

  .. math::
    p_{ij} = \\frac{\\exp(-\\mathcal{D}(x_i, x_j)/\\tau)}
                  {\\sum_{k \\ne i} \\exp(-\\mathcal{D}(x_i, x_k)/\\tau)},
    \\quad
    L_{EN} = -\\frac{1}{B} \\sum_i H(p_{i\\cdot})
           = \\frac{1}{B} \\sum_i \\sum_{j \\ne i} p_{ij} \\log p_{ij}

  with D the squared Euclidean distance of eq. (1). Minimising L_EN maximises
  the entropy of every example's neighbour distribution in the batch.

  Reading of the paper: DML-DA cites Niu et al. (SERAPH), whose entropy
  regularisation acts on the probability of pairs given their (Mahalanobis)
  distance, and describes the EN regulariser as one that "maximizes the
  entropy of the representation distribution in the embedding space and thus
  implicitly encourages large intra-class variation and small inter-class
  distance". A fully supervised batch has no unlabelled pairs for SERAPH's
  term, so we take the batch version of that description: the distance-based
  neighbour distribution p_i· of each example over the other batch examples,
  whose entropy is maximal when all distances are equal -- same-class pairs
  pushed apart, different-class pairs pulled in, which is exactly the effect
  the paper ascribes to EN. Labels are accepted for a uniform signature and
  not used. Its minimum is -log(B-1); a batch of one gives 0.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer class ids (unused).
    temperature: τ > 0 scaling the distances (D ∈ [0, 4] on the sphere).
    normalize: L2-normalise the embeddings first.

  Returns:
    ``(loss, aux)`` with the scalar ``neighbour_entropy`` (mean H, = -loss).

  References:
    Niu, Dai, Yamada, Sugiyama, "Information-theoretic Semi-supervised Metric
    Learning via Entropy Regularization", ICML 2012.
  """
  _check_batch(embeddings, labels, "entropy_regularizer")
  if not temperature > 0:
    raise ValueError(f"entropy_regularizer: temperature must be > 0, got "
                     f"{temperature}.")
  del labels
  x = l2_normalize(embeddings) if normalize else embeddings
  b = x.shape[0]
  if b < 2:  # static: no neighbours, zero entropy
    zero = jnp.sum(x) * 0.0
    return zero, {"neighbour_entropy": zero}
  sq = jnp.sum(x * x, axis=-1)
  gram = jnp.matmul(x, x.T, precision=_HIGHEST)
  dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  off_diag = ~jnp.eye(b, dtype=bool)
  logits = -dist / temperature
  log_p = logits - jax.nn.logsumexp(logits, axis=-1, where=off_diag,
                                    keepdims=True)
  p = jnp.where(off_diag, jnp.exp(log_p), 0.0)
  entropy = -jnp.sum(p * log_p, axis=-1)                          # [B]
  mean_entropy = jnp.mean(entropy)
  return -mean_entropy, {"neighbour_entropy": mean_entropy}
