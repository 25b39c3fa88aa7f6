"""The training state: one pytree holding everything a resumed run needs."""
from __future__ import annotations

from typing import Any

import flax
import jax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Parameters, BatchNorm statistics, optimiser state, method state and RNG.

  Attributes:
    step: global step; the sampler position is derived from it
      (``epoch = step // steps_per_epoch``).
    params: ``{'model': network weights, 'method': the method's learnable
      parameters (centre weights, β, proxies, α_c, R)}``.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
    method_state: the method's immutable host-refreshed state (centre bank,
      cluster index, surrogate labels, original densities) or ``{}``.
    rng: base PRNG key; step ``s`` uses ``fold_in(rng, s)``.
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: PyTree
  rng: jax.Array
