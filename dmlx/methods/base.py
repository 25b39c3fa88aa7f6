"""The method contract: settings, pure functions, state as data.

A *method* (a plain loss, NNGK, Magnet, MIC, DML-DA) is a module that declares

* ``Config``: a frozen dataclass, the single source of the method's settings
  and their defaults (``config.method.*``; :func:`dmlx.config.set_method`
  writes them into a run config, :func:`settings` reads them back and rejects
  unknown keys);
* top-level pure functions of that config, bundled in a :class:`Method`:

  ``init_params(cfg, rng, info)``
      learnable parameters beside the network (NNGK centre weights, margin
      β, proxies, α_c, MIC's R), trained by optax in ``params['method']``.
  ``init_state(cfg, info) -> MethodState``
      the state with its final shapes, zero-filled and cheap (no embedding,
      no FAISS): the template a checkpoint is restored into.
  ``refresh(cfg, ctx, state) -> MethodState``
      host side: embed the training set (``ctx.embed``), run FAISS, return a
      new state of the same shapes. The trainer calls it before the first
      step (the initial centre bank, cluster index, surrogate labels or
      original densities) and every ``refresh_every(cfg)`` epochs after.
  ``loss(cfg, params, outputs, batch, state, rng) -> (loss, aux)``
      jitted, on the global batch; ``state`` is ``MethodState.device``.
  ``update_state(cfg, state, aux, batch) -> state`` (optional)
      jitted, after the update inside the same step: device-side state
      changes (Magnet caches the batch's losses with a scatter).
  ``updates(cfg) -> (Update, ...)`` (optional)
      the optimiser updates of one iteration, each on its own batch stream
      with its own loss, optionally taken with a probability (MIC's authors'
      class step, then an auxiliary step with p = 0.8). Default: one update
      of ``loss`` on the ``'train'`` stream.
  ``samplers(cfg, ctx, state) -> {stream: Sampler}`` (optional)
      host side, rebuilt after every refresh: the batch sampler of each
      stream (Magnet's neighbourhoods, MIC's batches by surrogate cluster).
      Default: ``config.sampler`` over the class labels for ``'train'``.
  ``batch_inputs(cfg, host, rows) -> {name: array}`` (optional)
      host side, for every batch: arrays looked up in the host state for the
      batch's training rows, sent with the batch and sharded like it (NNGK's
      neighbour centres when its bank stays on the host).
  ``sync(cfg, host, device) -> host`` (optional), every ``sync_every(cfg)``
      steps: host state derived from a host copy of the device state
      (Magnet's per-cluster losses for seed sampling). The only transfers of
      the step loop happen at these declared steps and at log steps.
  ``epoch_length(cfg, config, train) -> int`` (optional)
      steps per epoch when the method's own sampler sets it (Magnet);
      default: one pass of ``config.sampler``.

The state is a :class:`MethodState`: ``device`` is an argument of the jitted
step (replicated on the mesh), ``host`` is only read on the host (samplers,
refresh, evaluation). Both are pytrees of arrays and both go into the
checkpoint, so a resumed run continues exactly without a refresh.

A method's extra evaluations (NNGK's classifier, Magnet's kNC, MIC's
concatenation, DML-DA's densities) are evaluators registered in
:mod:`dmlx.train.evaluators`, named by the method's ``evaluators`` and chosen
by ``config.eval.evaluators``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import numpy as np

from dmlx import settings as settings_lib
from dmlx.data.base import Dataset

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Static facts a method needs to create its parameters and state."""
  num_classes: int        # number of training classes
  num_train: int          # number of training examples
  embedding_dim: int      # dimension of outputs['embedding']
  feature_dims: Mapping[str, int] = dataclasses.field(default_factory=dict)


@flax.struct.dataclass
class MethodState:
  """A method's state: what the jitted step reads and what only the host
  reads. Both are pytrees of arrays with static shapes."""
  device: PyTree = ()
  host: PyTree = ()


@dataclasses.dataclass(frozen=True)
class HostContext:
  """What a host-side step (refresh, samplers, evaluators) may use.

  Attributes:
    config: the whole run config (read only).
    train: the training dataset.
    embed: ``embed(layer='embedding', dataset=None, *, bn='inference',
      batch_size=0) -> np.ndarray [N, D]``: features of ``dataset`` (default:
      the training set) at the named layer with the current weights, without
      dropout, batched and jitted; maps are pooled globally (``'block1@4'``:
      a 4×4 grid). ``bn='inference'`` uses BatchNorm's running statistics;
      ``bn='batch'`` the statistics of random batches of ``batch_size``, as
      in the training step. Training-set features are computed once per
      context.
    params: the current ``params['method']`` (host copy).
    epoch: completed epochs.
    step: completed steps.
    seed: integer seed for host randomness (FAISS k-means, sampling),
      a function of the run seed and the epoch, so a resumed run repeats it.
    log: writes a line to the training log.
  """
  config: Any
  train: Dataset
  embed: Callable[..., np.ndarray]
  params: PyTree
  epoch: int
  step: int
  seed: int
  log: Callable[[str], None] = print


@dataclasses.dataclass(frozen=True)
class EvalContext(HostContext):
  """What an evaluator may use: a :class:`HostContext` at the evaluated
  step plus the evaluated split and the method.

  Attributes:
    test: the evaluated dataset (test or validation classes).
    test_features: ``{layer: [N, D]}`` features of ``test`` already computed
      for the retrieval table (``embedding`` always among them).
    method_config: the method's settings.
    state: the method's state (host copies of both parts).
    seen_classes: whether ``test``'s classes are the training classes (a
      classification split), which classifiers need.
  """
  test: Dataset = None  # type: ignore[assignment]
  test_features: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  method_config: Any = None
  state: Any = None
  seen_classes: bool = False


@dataclasses.dataclass(frozen=True)
class Update:
  """One optimiser update of an iteration.

  Attributes:
    name: prefix of its logged metrics (``'class'``, ``'aux'``).
    stream: the batch stream it consumes (a key of ``samplers``).
    loss: ``loss(cfg, params, outputs, batch, state, rng) -> (loss, aux)``.
    probability: chance that the update is taken at an iteration (a coin
      drawn on the device from the step's key); 1 = always.
  """
  name: str
  stream: str
  loss: Callable[..., tuple[Array, dict]]
  probability: float = 1.0


def host_seed(seed: int, epoch: int) -> int:
  """The integer seed of host-side randomness at ``epoch`` of a run with
  ``seed`` (a resumed run derives the same one)."""
  return int(np.random.default_rng([seed, epoch, 7]).integers(2**31 - 1))


def _no_params(cfg, rng, info):
  del cfg, rng, info
  return {}


def _no_state(cfg, info) -> MethodState:
  del cfg, info
  return MethodState()


def _never(cfg) -> int:
  del cfg
  return 0


@dataclasses.dataclass(frozen=True)
class Method:
  """A method's functions (see the module docstring); ``Config`` is its
  settings dataclass, ``evaluators`` the names of its own evaluators."""
  name: str
  Config: type  # pylint: disable=invalid-name
  loss: Callable[..., tuple[Array, dict]]
  init_params: Callable[..., PyTree] = _no_params
  init_state: Callable[..., MethodState] = _no_state
  refresh: Optional[Callable[..., MethodState]] = None
  refresh_every: Callable[[Any], int] = _never
  update_state: Optional[Callable[..., PyTree]] = None
  updates: Optional[Callable[[Any], tuple[Update, ...]]] = None
  samplers: Optional[Callable[..., Mapping[str, Any]]] = None
  batch_inputs: Optional[Callable[..., Mapping[str, np.ndarray]]] = None
  sync: Optional[Callable[..., PyTree]] = None
  sync_every: Callable[[Any], int] = _never
  epoch_length: Optional[Callable[..., int]] = None
  evaluators: tuple[str, ...] = ()

  def settings(self, config: Any) -> Any:
    """The method's ``Config`` read from the run config (``config.method``;
    a base loss from ``config.loss``). Unknown keys and wrong types raise,
    naming the key."""
    external = {}
    for f in dataclasses.fields(self.Config):
      if f.metadata.get(settings_lib.EXTERNAL) == "loss":
        from dmlx import losses  # pylint: disable=g-import-not-at-top
        external[f.name] = losses.LossRef.from_config(config.loss)
    return settings_lib.from_mapping(self.Config, config.method,
                                     prefix="config.method", **external)

  def iteration(self, cfg: Any) -> tuple[Update, ...]:
    """The updates of one iteration."""
    if self.updates is None:
      return (Update("train", "train", self.loss),)
    return tuple(self.updates(cfg))


def loss_field() -> Any:
  """A ``Config`` field holding the base loss (a :class:`dmlx.losses.LossRef`
  read from ``config.loss``, not from ``config.method``)."""
  return dataclasses.field(default=None,
                           metadata={settings_lib.EXTERNAL: "loss"})


def check_positive_int(cfg: Any, *names: str, allow_zero: bool = False) -> None:
  """Raises ``ValueError`` naming ``config.method.<name>`` unless each field
  is an integer ≥ 1 (≥ 0 with ``allow_zero``)."""
  for name in names:
    value = getattr(cfg, name)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < low:
      raise ValueError(f"config.method.{name} must be an integer >= {low}, "
                       f"got {value!r}.")


def check_feature(name: str, layer: str, info: ModelInfo) -> None:
  """Raises ``ValueError`` naming ``config.method.<name>`` unless ``layer``
  is one of the network's outputs (``info.feature_dims``, when known)."""
  if info.feature_dims and layer not in info.feature_dims:
    raise ValueError(f"config.method.{name} = {layer!r} is not an output of "
                     f"the network; it has {sorted(info.feature_dims)}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  """Raises ``ValueError`` naming ``config.method.<name>`` unless ``value``
  is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"config.method.{name} must be one of {choices}, got "
                     f"{value!r}.")
