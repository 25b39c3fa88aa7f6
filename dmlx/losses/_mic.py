"""MIC's jittable parts: gradient reversal, projection R, l_d, label switching.

Roth, Brattoli & Ommer, "MIC: Mining Interclass Characteristics for Improved
Metric Learning", ICCV 2019. MIC trains a class encoder E_α on class labels
and an auxiliary encoder E_β on *surrogate* labels (clusters of class-
standardised features, see :mod:`dmlx.methods.mic`) and removes the information
the two share with an adversarial mutual-information loss (eq. 1)

.. math::
  l_d = -\\big(E_\\alpha^r(f(x)) \\odot R(E_\\beta^r(f(x)))\\big)^2,

where ``r`` is a gradient-reversal layer (Ganin et al., 2016) and ``R`` a small
two-layer network with unit-length output that predicts E_α from E_β. ``R``
descends l_d (it learns to predict E_α from E_β) while, through the reversed
gradient, the encoders ascend it (they make that prediction impossible).

Everything here is a pure function of arrays; ``R``'s parameters are a plain
dict ``{'hidden': {'kernel', 'bias'}, 'output': {'kernel', 'bias'}}`` so they
can live in ``params['method']['projection']`` and be trained by optax.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
ProjectionParams = Mapping[str, Mapping[str, Array]]

_NORM_EPS = 1e-12   # as torch.nn.functional.normalize, used by the authors.


# ---------------------------------------------------------------------------
# Gradient reversal layer.
# ---------------------------------------------------------------------------


@jax.custom_vjp
def _reverse(x: Array, scale: Array) -> Array:
  del scale
  return x


def _reverse_fwd(x: Array, scale: Array):
  return x, scale


def _reverse_bwd(scale: Array, g: Array):
  return (-scale * g).astype(g.dtype), jnp.zeros_like(scale)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x: Array, grl_lambda: float | Array = 1.0) -> Array:
  """Gradient-reversal layer ``r`` of MIC eq. (1) (Ganin et al., 2016).

  .. math::
    r(x) = x, \\qquad \\partial r / \\partial x = -\\lambda I.

  Args:
    x: any array.
    grl_lambda: reversal strength λ (scalar, may be traced); no gradient flows
      into it.

  Returns:
    ``x`` unchanged; its gradient is multiplied by ``-grl_lambda``.
  """
  scale = jnp.asarray(grl_lambda, dtype=jnp.result_type(x.dtype, jnp.float32))
  if scale.ndim != 0:
    raise ValueError(f"grl_lambda must be a scalar, got shape {scale.shape}.")
  return _reverse(x, scale)


# ---------------------------------------------------------------------------
# Projection network R.
# ---------------------------------------------------------------------------


def l2_normalise(x: Array, axis: int = -1) -> Array:
  """``x / max(||x||, 1e-12)`` along ``axis``; finite value and gradient at 0.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS ** 2))


def init_projection(rng: Array, aux_dim: int, class_dim: int,
                    hidden_dim: int = 512) -> dict[str, dict[str, Array]]:
  """Initial parameters of MIC's projection net R: Linear → ReLU → Linear.

  R maps the auxiliary embedding E_β (``aux_dim``) to the class-embedding
  space E_α (``class_dim``) through ``hidden_dim`` units (512 in the authors'
  code, ``--adv_dim``). Weights follow PyTorch's ``nn.Linear`` default (the
  authors' setting): ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for kernel and bias.

  Args:
    rng: PRNG key.
    aux_dim: dimension of E_β.
    class_dim: dimension of E_α.
    hidden_dim: width of the hidden layer.

  Returns:
    ``{'hidden': {'kernel' [aux_dim, hidden_dim], 'bias' [hidden_dim]},
    'output': {'kernel' [hidden_dim, class_dim], 'bias' [class_dim]}}``.
  """
  for name, value in (("aux_dim", aux_dim), ("class_dim", class_dim),
                      ("hidden_dim", hidden_dim)):
    if int(value) < 1:
      raise ValueError(f"{name} must be >= 1, got {value!r}.")
  keys = jax.random.split(rng, 4)

  def uniform(key, shape, fan_in):
    bound = 1.0 / jnp.sqrt(float(fan_in))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

  return {
      "hidden": {"kernel": uniform(keys[0], (aux_dim, hidden_dim), aux_dim),
                 "bias": uniform(keys[1], (hidden_dim,), aux_dim)},
      "output": {"kernel": uniform(keys[2], (hidden_dim, class_dim),
                                   hidden_dim),
                 "bias": uniform(keys[3], (class_dim,), hidden_dim)},
  }


def apply_projection(params: ProjectionParams, aux_embeddings: Array) -> Array:
  """MIC's projection net R (Sec. 3.4), its output L2-normalised.

  .. math::
    R(b) = \\mathrm{normalise}(W_2\\,\\mathrm{relu}(W_1 b + c_1) + c_2).

  Args:
    params: see :func:`init_projection`.
    aux_embeddings: ``[batch_size, aux_dim]``.

  Returns:
    ``[batch_size, class_dim]`` unit-length predictions of E_α.
  """
  hidden = params["hidden"]
  output = params["output"]
  if aux_embeddings.shape[-1] != hidden["kernel"].shape[0]:
    raise ValueError(
        f"aux_embeddings have dimension {aux_embeddings.shape[-1]} but R "
        f"expects {hidden['kernel'].shape[0]}.")
  h = jax.nn.relu(aux_embeddings @ hidden["kernel"] + hidden["bias"])
  return l2_normalise(h @ output["kernel"] + output["bias"])


# ---------------------------------------------------------------------------
# Mutual-information loss l_d.
# ---------------------------------------------------------------------------


def mutual_information_loss(class_embeddings: Array, aux_embeddings: Array,
                            projection_params: ProjectionParams, *,
                            grl_lambda: float | Array = 1.0) -> Array:
  """MIC's adversarial mutual-information loss l_d, eq. (1).

  In the form the authors' code computes it: both embeddings pass a
  gradient-reversal layer and are L2-normalised, R projects E_β onto E_α's
  space, and the loss is minus the mean over the batch of the mean over
  dimensions of the *squared element-wise products*:

  .. math::
    a = \\mathrm{normalise}(r(E_\\alpha)),\\quad
    b = \\mathrm{normalise}(r(E_\\beta)),\\quad
    l_d = -\\frac{1}{B\\,D_\\alpha}\\sum_{i,k} \\big(a_{ik}\\,R(b_i)_k\\big)^2.

  Minimising it trains R to predict E_α from E_β; the reversed gradient makes
  E_α, E_β and the shared backbone *decrease* that predictability.

  Args:
    class_embeddings: E_α, ``[batch_size, class_dim]``.
    aux_embeddings: E_β, ``[batch_size, aux_dim]``.
    projection_params: R's parameters (:func:`init_projection`).
    grl_lambda: gradient-reversal strength λ.

  Returns:
    Scalar l_d (≤ 0).

  References:
    Roth, Brattoli & Ommer, MIC: Mining Interclass Characteristics for Improved
    Metric Learning, ICCV 2019. Ganin et al., Domain-Adversarial Training of
    Neural Networks, JMLR 2016.
  """
  if class_embeddings.ndim != 2 or aux_embeddings.ndim != 2:
    raise ValueError(
        f"embeddings must be [batch_size, dim], got {class_embeddings.shape} "
        f"and {aux_embeddings.shape}.")
  if class_embeddings.shape[0] != aux_embeddings.shape[0]:
    raise ValueError(
        f"batch sizes differ: {class_embeddings.shape[0]} class embeddings vs "
        f"{aux_embeddings.shape[0]} auxiliary embeddings.")
  out_dim = projection_params["output"]["kernel"].shape[1]
  if class_embeddings.shape[1] != out_dim:
    raise ValueError(
        f"class embeddings have dimension {class_embeddings.shape[1]} but R "
        f"outputs {out_dim}.")
  a = l2_normalise(gradient_reversal(class_embeddings, grl_lambda))
  b = l2_normalise(gradient_reversal(aux_embeddings, grl_lambda))
  predicted = apply_projection(projection_params, b)
  return -jnp.mean(jnp.square(a * predicted))


# ---------------------------------------------------------------------------
# Random label switching (Sec. 4.1).
# ---------------------------------------------------------------------------


def switch_labels(labels: Array, rng: Array,
                  switch_prob: float | Array) -> Array:
  """MIC's random switching of surrogate labels within a batch (Sec. 4.1).

  "To ensure that we do not reinforce such a strong initial bias, we [...]
  ease the class constraint by randomly switching samples with samples from
  different cluster classes (with probability p ≤ 0.2)." In the authors'
  sampler a batch slot drawn for cluster c holds, with probability p, an image
  of a random cluster instead, and that image is given c's label. In dmlx the
  batch is fixed before the loss sees it, so the equivalent is applied to
  labels: each example, independently with probability ``switch_prob``, is
  treated as drawn for the cluster of another batch member chosen uniformly
  (never itself) and takes that cluster's label. Switched labels therefore
  follow the batch's own cluster distribution, so they join existing positive
  groups (as in the authors' P×K batches) rather than making singletons. An
  example whose partner shares its cluster keeps its label.

  Args:
    labels: ``[batch_size]`` integer surrogate labels.
    rng: PRNG key (fresh per step, so the noise differs at every step).
    switch_prob: probability p in [0, 1] that an example is switched.

  Returns:
    ``[batch_size]`` labels of the same dtype.
  """
  if labels.ndim != 1:
    raise ValueError(f"labels must be [batch_size], got shape {labels.shape}.")
  if isinstance(switch_prob, (int, float)) and not 0.0 <= switch_prob <= 1.0:
    raise ValueError(f"switch_prob must lie in [0, 1], got {switch_prob!r}.")
  size = labels.shape[0]
  if size < 2:
    return labels
  key_switch, key_partner = jax.random.split(rng)
  switch = jax.random.bernoulli(key_switch, switch_prob, (size,))
  offset = jax.random.randint(key_partner, (size,), 1, size)
  partner = (jnp.arange(size) + offset) % size
  return jnp.where(switch, labels[partner], labels)
