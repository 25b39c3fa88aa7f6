"""The contract every training method implements: pure functions, state as data.

A *method* (plain loss, NNGK, Magnet, MIC, DML-DA, ...) is a bundle of functions
that the generic trainer in :mod:`dmlx.train` calls:

* ``init_params(rng, info)``: learnable parameters the method adds beside the
  network (NNGK centre weights, margin-loss β, proxies, DML-DA target densities
  α_c, MIC's projection net R). They live in ``params['method']`` and are
  trained by optax like any weight (learning-rate group ``'method'``).
* ``init_state(ctx)``: host side, once before the first epoch: the method's
  immutable state pytree (NNGK centre bank, Magnet cluster index, MIC surrogate
  labels, DML-DA original densities), or ``None``.
* ``refresh(ctx, state)``: host side, between epochs, every ``refresh_every``
  epochs: embed the training set (``ctx.embed``), run FAISS, return a *new*
  state with the same shapes (shapes are static so the jitted step is not
  recompiled).
* ``loss(params, outputs, batch, state, rng)``: jitted, inside the train step;
  ``outputs`` is the network's dict of named features (``'embedding'``,
  ``'pooled'``, ...), ``batch`` the dict ``{'images', 'labels', 'index'}``
  (``index`` = position of each example in the training set). Returns
  ``(scalar loss, aux dict of scalars or per-example arrays)``. The loss is a
  function of the *global* batch: under ``jit`` with a sharded batch, XLA
  computes exactly the single-device value and gradients.
* ``after_step(state, aux, batch)``: optional, host side, after each step
  (Magnet caches per-example losses into its cluster index here).
* ``make_sampler(ctx, state)``: optional, host side: a custom batch sampler
  (Magnet's neighbourhood sampling); default is the config's sampler.

State objects are ``flax.struct.dataclass`` pytrees of arrays stored in the
``TrainState`` and written to the same orbax checkpoint as the weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from dmlx.data.base import Dataset

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Static facts the method needs to create its parameters."""
  num_classes: int        # number of training classes
  num_train: int          # number of training examples
  embedding_dim: int      # dimension of outputs['embedding']
  feature_dims: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class HostContext:
  """What a host-side step (init_state / refresh / make_sampler) may use.

  Attributes:
    config: the whole run config (ml_collections.ConfigDict).
    train: the training dataset.
    embed: ``embed(layer='embedding', dataset=None) -> np.ndarray [N, D]``:
      features of ``dataset`` (default: the training set) at the named layer,
      computed with the current weights in inference mode (no dropout, running
      BatchNorm statistics), batched and jitted. Conv maps are globally pooled.
    params: current ``params['method']`` (host copy) for methods that need it.
    epoch: number of completed epochs.
    seed: an integer seed for host-side randomness (FAISS k-means, sampling),
      derived from the run seed and the epoch so a resumed run repeats it.
    log: ``log(str)`` writes a line to the training log.
  """
  config: Any
  train: Dataset
  embed: Callable[..., np.ndarray]
  params: PyTree
  epoch: int
  seed: int
  log: Callable[[str], None] = print


def _no_params(rng: Array, info: ModelInfo) -> dict:
  del rng, info
  return {}


def _no_state(ctx: HostContext) -> None:
  del ctx
  return None


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: see the module docstring for each function's role."""
  name: str
  loss: Callable[..., tuple[Array, dict]]
  init_params: Callable[[Array, ModelInfo], PyTree] = _no_params
  init_state: Callable[[HostContext], PyTree] = _no_state
  refresh: Optional[Callable[[HostContext, PyTree], PyTree]] = None
  refresh_every: int = 0
  after_step: Optional[Callable[[PyTree, dict, dict], PyTree]] = None
  make_sampler: Optional[Callable[[HostContext, PyTree], Any]] = None
  # Extra evaluations reported at the end of training:
  # evaluate(ctx, state, test_dataset, test_embeddings) -> dict[str, float].
  evaluate: Optional[Callable[..., dict]] = None
