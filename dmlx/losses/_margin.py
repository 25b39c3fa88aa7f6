"""Margin loss with distance-weighted negative sampling (Wu et al., 2017).

Two pieces, each usable alone:

* :func:`distance_weighted_sampling` draws, for every anchor ``a``, negatives
  ``n`` (one per positive pair ``(a, p)``) with probability proportional to
  ``q(D_an)^{-1}``, the inverse density of pairwise distances between points
  uniform on the unit sphere, clipped below at ``cutoff`` and zero from
  ``nonzero_loss_cutoff`` on.
* :func:`margin_loss` applies ``[alpha + y (D_ij - beta)]_+`` to the positive
  pairs and the sampled negative pairs, with a learnable boundary ``beta``
  (one per class, or one for all) kept in ``params``.

The sampling is a function of ``stop_gradient`` distances and an explicit PRNG
key, so it carries no gradient and is reproducible.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _common
from dmlx.losses import _distances

Array = jax.Array
_SAMPLERS = ("inverse_cdf", "categorical")


def init_margin_loss(num_classes: int, beta0: float = 1.2, *,
                     beta_per_class: bool = False) -> dict[str, Array]:
  """Initial margin-loss parameters: ``{'beta': [] or [num_classes]}``.

  Args:
    num_classes: number of training classes (used when ``beta_per_class``).
    beta0: initial boundary :math:`\\beta^{(0)}` (1.2 in Wu et al.).
    beta_per_class: one :math:`\\beta` per class instead of one shared.

  Returns:
    ``{'beta': beta}``, a float32 scalar or ``[num_classes]`` vector.

  Examples:
    >>> init_margin_loss(3, beta_per_class=True)["beta"].shape
    (3,)
  """
  if beta_per_class and int(num_classes) < 1:
    raise ValueError(
        f"init_margin_loss: num_classes must be >= 1, got {num_classes!r}.")
  shape = (int(num_classes),) if beta_per_class else ()
  return {"beta": jnp.full(shape, beta0, jnp.float32)}


def distance_weighted_log_weights(distances: Array, dim: int, *,
                                  cutoff: float = 0.5,
                                  nonzero_loss_cutoff: float = 1.4) -> Array:
  r"""Unnormalised log sampling weights :math:`\log q(d)^{-1}` (Wu et al.).

  .. math::
    \log q(d) = (n - 2) \log d + \frac{n - 3}{2} \log\Big(1 - \frac{d^2}{4}\Big)

  for :math:`n` = ``dim``, with :math:`d` clipped below at ``cutoff`` (the
  paper's :math:`\lambda`, against the variance of very close pairs) and, only
  to keep the logarithm finite, above at ``nonzero_loss_cutoff``; the caller
  zeroes weights for :math:`d \ge` ``nonzero_loss_cutoff``.

  Args:
    distances: any-shape array of distances between unit-norm embeddings.
    dim: embedding dimension :math:`n`.
    cutoff: lower clip :math:`\lambda`.
    nonzero_loss_cutoff: upper limit, ``< 2``.

  Returns:
    ``-log q(clip(d))``, same shape as ``distances``.
  """
  d = jnp.clip(distances, cutoff, nonzero_loss_cutoff)
  log_q = ((dim - 2.0) * jnp.log(d)
           + (dim - 3.0) / 2.0 * jnp.log(1.0 - 0.25 * jnp.square(d)))
  return -log_q


def distance_weighted_sampling(rng: Array, distances: Array, labels: Array, *,
                               num_samples: int, dim: int, cutoff: float = 0.5,
                               nonzero_loss_cutoff: float = 1.4,
                               sampler: str = "inverse_cdf"
                               ) -> tuple[Array, Array]:
  r"""Draws ``num_samples`` negatives per anchor, weighted by 1/q(d).

  For anchor :math:`a`, negative :math:`n` is drawn with probability

  .. math::
    \Pr(n \mid a) \propto \min\big(\lambda_{\max},\, q(D_{an})^{-1}\big)
      \cdot [y_n \ne y_a] \cdot [D_{an} < \text{nonzero\_loss\_cutoff}]

  (Wu et al., section 4; the cap :math:`\lambda_{\max}` comes from clipping
  :math:`d` at ``cutoff``), independently for each of the ``num_samples``
  draws (with replacement). An anchor whose negatives all lie beyond
  ``nonzero_loss_cutoff`` samples uniformly among its negatives (the authors'
  code falls back to uniform too); an anchor without negatives gets index 0
  and ``has_negative=False``.

  ``sampler="inverse_cdf"`` draws by binary search in each anchor's cumulative
  weights (``O(B log B)`` per draw); ``"categorical"`` calls
  ``jax.random.categorical``, which draws a Gumbel variate per candidate
  (``O(B)`` per draw, slower for large batches). Both draw from the same
  distribution, not the same samples.

  Args:
    rng: PRNG key.
    distances: ``[B, B]`` distances between unit-norm embeddings (used
      without gradient).
    labels: ``[B]`` integer labels.
    num_samples: static number of draws per anchor.
    dim: embedding dimension :math:`n` in :math:`q(d)`.
    cutoff: :math:`\lambda`, lower clip on :math:`d`.
    nonzero_loss_cutoff: negatives this far or farther are never drawn.
    sampler: ``"inverse_cdf"`` or ``"categorical"``.

  Returns:
    ``(negatives, has_negative)``: ``[B, num_samples]`` int32 column indices
    and ``[B]`` bool.
  """
  _common.check_choice("distance_weighted_sampling", "sampler", sampler,
                       _SAMPLERS)
  d = jax.lax.stop_gradient(distances)
  b = d.shape[0]
  neg = _distances.negative_mask(labels)
  has_negative = jnp.any(neg, axis=1)

  def weights(d, neg):
    in_range = neg & (d < nonzero_loss_cutoff)
    log_w = distance_weighted_log_weights(
        d, dim, cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
    use_weights = jnp.any(in_range, axis=1, keepdims=True)
    return jnp.where(use_weights, log_w, 0), jnp.where(use_weights, in_range,
                                                       neg)

  if sampler == "categorical":
    log_w, allowed = weights(d, neg)
    logits = jnp.where(allowed, log_w, -jnp.inf)
    logits = jnp.where(has_negative[:, None], logits, 0)
    # Draws come out [sample, anchor]: the batch shape of logits is trailing.
    negatives = jax.random.categorical(rng, logits, axis=-1,
                                       shape=(num_samples, b)).T
  else:
    def draw(d, neg, u):
      log_w, allowed = weights(d, neg)
      shift = jnp.max(jnp.where(allowed, log_w, -jnp.inf), axis=1,
                      keepdims=True)
      shift = jnp.where(jnp.isfinite(shift), shift, 0)
      w = jnp.exp(jnp.where(allowed, log_w - shift, -jnp.inf))
      cdf = _row_cumsum(w)
      negatives = jax.vmap(
          lambda c, q: jnp.searchsorted(c, q, side="right"))(
              cdf, u * cdf[:, -1:])
      # u * total can round up to total: stay on the last drawable negative.
      last = d.shape[1] - 1 - jnp.argmax(allowed[:, ::-1], axis=1)
      return jnp.minimum(negatives, last[:, None])

    u = jax.random.uniform(rng, (b, num_samples), dtype=d.dtype)
    # On CPU in cache-sized blocks of anchors (_common.by_anchor_blocks).
    negatives = _common.by_anchor_blocks(draw, 1, d, neg, u)
  negatives = jnp.where(has_negative[:, None], negatives, 0)
  return negatives.astype(jnp.int32), has_negative


def margin_loss(embeddings: Array, labels: Array, params: dict[str, Array],
                rng: Array, *, alpha: float = 0.2, beta_per_class: bool = False,
                cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                nu: float = 0.0, normalize: bool = True,
                sampler: str = "inverse_cdf", max_positives: int | None = 7
                ) -> tuple[Array, dict[str, Array]]:
  r"""Margin loss on positive pairs and distance-weighted negatives.

  .. math::
    \ell(i, j) = \big[\alpha + y_{ij} (D_{ij} - \beta_{y_i})\big]_+, \qquad
    L = \frac{\sum_{(a,p)} \ell(a, p) + \ell(a, n_{ap})
              + \nu \sum_{(a,p)} \beta_{y_a}}
             {\#\{\text{nonzero } \ell\}}

  with :math:`y_{ij} = +1` for the positive pairs :math:`(a, p)` and
  :math:`-1` for the sampled negative pairs :math:`(a, n_{ap})`: anchor
  :math:`a` draws as many negatives as it has positives
  (:func:`distance_weighted_sampling`), i.e. one per positive pair. As in the
  authors' implementation the :math:`\nu`-regulariser sums :math:`\beta`
  over the pairs and everything is divided by the number of nonzero terms (at
  least 1). Anchors without negatives keep their positive terms. Embeddings
  are L2-normalised first (``normalize=True``): the sampling density assumes
  the unit sphere, and :math:`\beta_0 = 1.2` is a distance on it.

  Draws are made in a ``[B, W]`` table, ``W = max_positives``; if some
  anchor has more positives, ``jax.lax.cond`` switches to ``W = B - 1`` at run
  time (same distribution, ``O(B^2 log B)``). ``max_positives`` is a speed
  knob (``K - 1`` for P x K batches); ``None`` always uses ``W = B - 1``. Draw
  ``w`` of anchor ``a`` is used iff ``w`` < its number of positives.

  Args:
    embeddings: ``[batch_size, dim]`` embeddings.
    labels: ``[batch_size]`` integer labels in ``[0, num_classes)`` (the range
      matters only with ``beta_per_class``).
    params: ``{'beta': []}`` or ``{'beta': [num_classes]}`` from
      :func:`init_margin_loss`; trained with the network.
    rng: PRNG key for the negative sampling.
    alpha: margin :math:`\alpha` around the boundary.
    beta_per_class: index :math:`\beta` by the anchor's class.
    cutoff: :math:`\lambda`, lower clip of the sampling distance.
    nonzero_loss_cutoff: negatives at this distance or more are not sampled.
    nu: weight :math:`\nu` of the :math:`\beta` regulariser.
    normalize: L2-normalise the embeddings first.
    sampler: see :func:`distance_weighted_sampling`.
    max_positives: draws per anchor in the fast path, or ``None``.

  Returns:
    ``(loss, aux)``: scalar loss and aux with ``fraction_active`` (nonzero
    terms over all terms), ``beta`` (mean :math:`\beta`) and
    ``negative_distance`` (mean distance of the sampled negatives).

  References:
    Wu, Manmatha, Smola & Krähenbühl, Sampling Matters in Deep Embedding
    Learning, ICCV 2017 (section 4, distance weighted sampling; section 5,
    margin-based loss and the learned boundary beta).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    >>> params = init_margin_loss(num_classes=4)
    >>> loss, aux = margin_loss(x, jnp.arange(8) // 2, params,
    ...                         jax.random.PRNGKey(1))
    >>> loss.shape
    ()
  """
  name = "margin_loss"
  embeddings, labels = _common.check_inputs(embeddings, labels, name)
  _common.check_positive(name, "cutoff", cutoff)
  _common.check_max_positives(name, max_positives)
  if not 0 < nonzero_loss_cutoff < 2 or cutoff >= nonzero_loss_cutoff:
    raise ValueError(
        f"{name}: need 0 < cutoff < nonzero_loss_cutoff < 2, got cutoff="
        f"{cutoff!r}, nonzero_loss_cutoff={nonzero_loss_cutoff!r}.")
  _common.check_choice(name, "sampler", sampler, _SAMPLERS)
  beta = _check_beta(name, params, beta_per_class)
  x = _distances.l2_normalize(embeddings) if normalize else embeddings
  d = _distances.pairwise_distances(x)
  b = labels.shape[0]
  pos = _distances.positive_mask(labels)
  num_pos = _distances.pair_counts(labels)[0]
  beta_a = (beta[labels] if beta_per_class
            else jnp.broadcast_to(beta, labels.shape))
  pos_loss = jnp.where(pos, jax.nn.relu(alpha + d - beta_a[:, None]), 0)

  full_width = max(b - 1, 1)

  # The draws and every sum over them run on stop_gradient values inside the
  # cond (no residuals to keep); the gradient to the sampled distances and to
  # beta comes back through terms linear in D and beta that add exactly 0,
  # not through a [B, B - 1] gather whose scatter-add gradient costs more
  # than the sampling.
  d_const = jax.lax.stop_gradient(d)
  beta_const = jax.lax.stop_gradient(beta_a)

  def negative_terms(width):
    def terms(d):
      negatives, has_negative = distance_weighted_sampling(
          rng, d, labels, num_samples=width, dim=embeddings.shape[1],
          cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff,
          sampler=sampler)
      used = ((jnp.arange(width)[None, :] < num_pos[:, None])
              & has_negative[:, None])
      d_an = jnp.take_along_axis(d, negatives, axis=1)
      hinge = alpha - d_an + beta_const[:, None]
      active = used & (hinge > 0)
      rows = jnp.arange(b)[:, None]
      return (jnp.sum(jnp.where(active, hinge, 0)), _common.count(active),
              jnp.sum(jnp.where(used, d_an, 0)), _common.count(used),
              jnp.zeros_like(d).at[rows, negatives].add(
                  active.astype(d.dtype)),
              _common.count(active, axis=1))
    return terms

  if max_positives is None or max_positives >= full_width:
    neg_terms = negative_terms(full_width)(d_const)
  else:
    neg_terms = jax.lax.cond(
        jnp.any(num_pos > max_positives), negative_terms(full_width),
        negative_terms(max_positives), d_const)
  (neg_total, neg_nonzero, d_an_total, num_used, negative_slope,
   active_per_anchor) = neg_terms
  neg_total = (neg_total - jnp.sum(negative_slope * (d - d_const))
               + jnp.sum(active_per_anchor * (beta_a - beta_const)))
  num_nonzero = _common.count(pos_loss > 0) + neg_nonzero
  beta_reg = nu * jnp.sum(num_pos * beta_a)
  loss = _common.safe_divide(jnp.sum(pos_loss) + neg_total + beta_reg,
                             num_nonzero)
  return loss, {
      "fraction_active": _common.safe_divide(
          num_nonzero, jnp.sum(num_pos) + num_used),
      "beta": jnp.mean(beta),
      "negative_distance": _common.safe_divide(d_an_total, num_used),
  }


# Columns per block of the blocked running sum below.
_CUMSUM_BLOCK = 32


def _row_cumsum(w: Array) -> Array:
  """``jnp.cumsum(w, axis=1)`` for a ``[B, N]`` array, blocked.

  XLA:CPU lowers ``cumsum`` as a log-depth scan of whole-array passes (21 ms
  for 2048 x 2048 on one core, measured); here each row is cut into blocks
  of 32, summed within blocks by one matmul with a triangular matrix and
  offset by the running sum of the block totals (a scan over N / 32
  columns): 4 ms. Same values up to float summation order.
  """
  b, n = w.shape
  k = _CUMSUM_BLOCK
  if n <= k:
    return jnp.cumsum(w, axis=1)
  blocks = -(-n // k)
  padded = jnp.pad(w, ((0, 0), (0, blocks * k - n))).reshape(b, blocks, k)
  lower = jnp.triu(jnp.ones((k, k), w.dtype))       # [j, i] = 1 for j <= i
  within = jnp.matmul(padded, lower, precision=jax.lax.Precision.HIGHEST)
  totals = within[:, :, -1]
  offsets = jnp.cumsum(totals, axis=1) - totals       # exclusive
  return (within + offsets[:, :, None]).reshape(b, blocks * k)[:, :n]


def _check_beta(name: str, params, beta_per_class: bool) -> Array:
  if not hasattr(params, "keys") or "beta" not in params:
    raise ValueError(
        f"{name}: params must be a dict with key 'beta' (see "
        f"init_margin_loss), got {type(params).__name__}.")
  beta = jnp.asarray(params["beta"])
  want = 1 if beta_per_class else 0
  if beta.ndim != want:
    raise ValueError(
        f"{name}: params['beta'] must have {want} dimension(s) with "
        f"beta_per_class={beta_per_class}, got shape {beta.shape}.")
  return beta
