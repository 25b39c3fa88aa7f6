"""Vo & Hays's smooth all-triplet loss with a learned feature scale.

Vo & Hays, "Generalization in Metric Learning: Should the Embedding Layer be
the Embedding Layer?", WACV 2019, Sec. 3.4: every valid triplet of the batch,
``log(1 + exp(d(a, p) - d(a, n)))`` on squared Euclidean distances of the
features "normalize[d] to have unit magnitude and then scale[d] by 4". The
authors' code (``MyTripletLoss(normalize_scale=4.0, learn_scale=True)``)
*learns* that scale, starting at 4; here it is the loss's one parameter,
``params['scale']``, trained with the method's parameters.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmlx.losses import _distances
from dmlx.losses import _triplet

Array = jax.Array


def init_smooth_triplet(rng: Array, num_classes: int, dim: int, *,
                        scale: float = 4.0) -> dict[str, Array]:
  """``{'scale': scale}``, the initial feature scale (the authors' 4)."""
  del rng, num_classes, dim
  return {"scale": jnp.asarray(scale, jnp.float32)}


def smooth_triplet(embeddings: Array, labels: Array, params: dict[str, Array],
                   *, learn_scale: bool = True, max_positives: int | None = 7
                   ) -> tuple[Array, dict[str, Array]]:
  r"""Smooth all-triplet loss on unit features times a (learned) scale s.

  .. math::
    L = \frac{1}{|T|} \sum_{(a,p,n) \in T}
        \log\big(1 + e^{\|s\hat x_a - s\hat x_p\|^2 - \|s\hat x_a - s\hat x_n\|^2}\big),
    \qquad \hat x = x / \|x\|

  over the valid triplets :math:`T` of the batch (Vo & Hays eq. 1 with the
  sign of the paper's typo corrected, as their code has it).

  Args:
    embeddings: ``[batch_size, dim]`` features (normalised here).
    labels: ``[batch_size]`` integer class labels.
    params: ``{'scale': []}`` from :func:`init_smooth_triplet`.
    learn_scale: False keeps s at its value (no gradient): the paper's text.
    max_positives: as :func:`dmlx.losses.triplet_all`.

  Returns:
    ``(loss, aux)`` with ``feature_scale`` (s) and ``triplet_all``'s aux.

  References:
    Vo & Hays, WACV 2019, Sec. 3.4; the authors' ``generalization-dml`` code.
  """
  scale = params["scale"]
  if not learn_scale:
    scale = jax.lax.stop_gradient(scale)
  x = _distances.l2_normalize(embeddings) * scale
  loss, aux = _triplet.triplet_all(x, labels, soft=True, squared=True,
                                   reduction="valid",
                                   max_positives=max_positives)
  return loss, {**aux, "feature_scale": scale}
