"""MIC as a dmlx method: surrogate labels on the host, joint loss in the step.

Roth, Brattoli & Ommer, "MIC: Mining Interclass Characteristics for Improved
Metric Learning", ICCV 2019, Algorithm 1. Two embedding heads sit on one shared
backbone f: the class encoder E_α (``outputs['embedding']``), trained with the
class labels, and the auxiliary encoder E_β (``outputs['aux_embedding']``; the
model builder adds it when ``config.model.aux_embedding_dim > 0``), trained with
surrogate labels that capture characteristics shared *across* classes.

Host side (:func:`compute_surrogate_labels`, ``init_state``, ``refresh``):

* ``init_state``: embed the training set at the pooled backbone features
  (``ctx.embed('pooled')``), standardise them per class (Sec. 3.3: subtract the
  class mean μ_y, optionally divide by the class std σ_y) and cluster them with
  FAISS k-means into C clusters: ``Y_β ← Cluster(Stand(Embed(X, E, f)), C)``.
* ``refresh`` (every ``refresh_every`` = T_U epochs): re-cluster E_β's own
  embedding, ``Y_β ← Cluster(Embed(X, E_β, f), C)``; as in Algorithm 1 and the
  authors' ``deepcluster`` this is *not* standardised unless
  ``standardise_refresh`` says so.

The labels live in :class:`MICState` (``surrogate_labels [N] int32``); the loss
looks up a batch's labels with ``batch['index']``.

Jitted side (``loss``): l_α = base loss on (E_α, class labels), l_β = the same
registry loss (``config.loss.name``) on (E_β, surrogate labels) with its own
parameters, and γ·l_d, the adversarial mutual-information loss (eq. 1, see
:mod:`dmlx.losses._mic`). Two schedules:

* ``alternate=False`` (default): one step minimises
  ``L = l_α(E_α) + l_β(E_β) + γ·l_d``, the paper's total loss (Sec. 3.4).
  l_α reaches only E_α's head and the backbone, l_β only E_β's head and the
  backbone (each loss is a function of its own embedding only), their
  gradients add on the backbone; l_d reaches both heads (reversed) and R.
* ``alternate=True``: Algorithm 1's alternation. ``MICState.phase`` (0 or 1)
  is flipped by ``after_step`` after every step. Phase 0 minimises
  ``L^α = l_α + γ·l_d`` with E_β under ``stop_gradient``; phase 1 minimises
  ``L^β = l_β + γ·l_d`` with E_α under ``stop_gradient``. The other task's
  loss and its parameters get zero gradient (``jnp.where`` on the phase).
  R is trained in both phases. Because dmlx cannot freeze a head's weights
  from inside the loss, stopping the gradient at the head's *output* also
  stops l_d's path through that head into the backbone; over a pair of steps
  each path is used exactly once. The authors' code draws two batches per
  iteration (one per task); here a phase uses one batch, so an alternating
  run needs twice the steps for the same number of updates per task.

Random label switching (Sec. 4.1, ``switch_prob`` = p ≤ 0.2) is done in the
loss with the step's ``rng`` (fresh noise every step, as the authors' sampler
re-draws at every batch), see :func:`dmlx.losses._mic.switch_labels`.

Evaluation: E_α (``'embedding'``) gives the reported numbers; E_β
(``'aux_embedding'``) is evaluated by the trainer like any named output
(``config.eval.layers``), and ``Method.evaluate`` adds retrieval on the
concatenation [E_α, E_β] (Fig. 4, "the combination of the two"), reported as
``concat/recall@k``, ``concat/nmi``, ... (:func:`evaluate_concatenation`).

Config (``config.method``; paper / authors' defaults):
  num_clusters: C, required (30 CUB200, 200 CARS196, 50 SOP, 150 In-Shop,
    50 PKU VehicleID).
  gamma: weight γ of l_d, required (paper: [100, 2000] by cross-validation;
    authors' scripts 2500 CUB, 500 Cars, 250 SOP / In-Shop / VehicleID).
  refresh_every: T_U = 2 epochs between re-clusterings (0 disables).
  grl_lambda: gradient-reversal strength λ = 1.0.
  standardise: 'none' | 'mean' | 'mean_std' for the first clustering,
    default 'mean' (the authors' ``cluster_mode`` default; the paper's text
    describes 'mean_std').
  standardise_refresh: same choices for later clusterings, default 'none'.
  switch_prob: p = 0.2.
  alternate: False.
  projection_dim: R's hidden width, 512.
  kmeans_niter: Lloyd iterations, 20.
  kmeans_nredo: k-means restarts, best objective kept, 1 (as the authors).
The base loss is ``config.loss.name`` with ``config.loss.kwargs``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dmlx.losses import _mic
from dmlx.methods.base import HostContext, Method, ModelInfo

Array = jax.Array

STANDARDISE_MODES = ("none", "mean", "mean_std")
_STD_EPS = 1e-8


# ---------------------------------------------------------------------------
# State.
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class MICState:
  """MIC's method state.

  Attributes:
    surrogate_labels: ``[N] int32`` cluster id Y_β of every training example.
    phase: ``[] int32``; 0 = train E_α (L^α), 1 = train E_β (L^β). Only read
      when ``config.method.alternate`` is set; flipped by ``after_step``.
  """
  surrogate_labels: Array
  phase: Array


# ---------------------------------------------------------------------------
# Host side: standardisation and clustering (Sec. 3.3).
# ---------------------------------------------------------------------------


def standardise_per_class(features: np.ndarray, labels: np.ndarray,
                          mode: str = "mean") -> np.ndarray:
  """Per-class standardisation of MIC Sec. 3.3, ``z_i = (f(x_i) - μ_y) / σ_y``.

  μ_y and σ_y (population std, per dimension) are computed over the examples
  of class y. ``mode='mean'`` only subtracts μ_y (the authors' default),
  ``'mean_std'`` also divides by σ_y, ``'none'`` returns the features as
  float32. A class with one example becomes all zeros; a dimension with zero
  (or < 1e-8) variance in a class is divided by 1 instead of σ.

  Args:
    features: ``[N, D]`` features f(x).
    labels: ``[N]`` integer class labels (any ids).
    mode: ``'none'``, ``'mean'`` or ``'mean_std'``.

  Returns:
    ``[N, D]`` float32 standardised features Z.
  """
  if mode not in STANDARDISE_MODES:
    raise ValueError(
        f"standardise must be one of {STANDARDISE_MODES}, got {mode!r}.")
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if features.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {features.shape}.")
  if labels.shape != (features.shape[0],):
    raise ValueError(f"labels must be [N] = [{features.shape[0]}], got shape "
                     f"{labels.shape}.")
  if mode == "none" or features.shape[0] == 0:
    return features.copy()
  # Sort once so every class is a contiguous block, standardise the blocks in
  # place (one [N, D] copy plus the output), then undo the sort.
  order = np.argsort(labels, kind="stable")
  _, starts = np.unique(labels[order], return_index=True)
  ends = np.append(starts[1:], len(order))
  z = features[order]
  for start, end in zip(starts, ends):
    block = z[start:end]
    block -= block.mean(axis=0, dtype=np.float64).astype(np.float32)
    if mode == "mean_std":
      std = np.sqrt(np.mean(np.square(block, dtype=np.float64), axis=0))
      block /= np.where(std < _STD_EPS, 1.0, std).astype(np.float32)
  out = np.empty_like(z)
  out[order] = z
  return out


def compute_surrogate_labels(features: np.ndarray, labels: np.ndarray,
                             num_clusters: int, *, standardise: str = "mean",
                             seed: int = 0, niter: int = 20,
                             nredo: int = 1) -> np.ndarray:
  """Surrogate labels Y_β = Cluster(Stand(features), C) of MIC Algorithm 1.

  Standardises per class (:func:`standardise_per_class`) and runs FAISS k-means
  (:func:`dmlx.index.kmeans`, k-means++ seeding) into ``num_clusters`` clusters.

  Args:
    features: ``[N, D]`` training-set features (pooled backbone features for
      the first clustering, E_β's embedding afterwards).
    labels: ``[N]`` class labels, used only for the standardisation.
    num_clusters: C, ``1 <= C <= N``.
    standardise: ``'none'``, ``'mean'`` or ``'mean_std'``.
    seed: k-means seed.
    niter: Lloyd iterations.
    nredo: k-means restarts (seeds ``seed, seed + 1, ...``); the run with the
      lowest objective is kept.

  Returns:
    ``[N] int32`` cluster ids in ``[0, C)``.
  """
  from dmlx import index  # FAISS is host-only; imported where it is used.
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {features.shape}.")
  num_clusters = int(num_clusters)
  if not 1 <= num_clusters <= features.shape[0]:
    raise ValueError(
        f"num_clusters must lie in [1, N={features.shape[0]}], got "
        f"{num_clusters}.")
  if not np.all(np.isfinite(features)):
    raise ValueError("features for clustering contain NaN or inf.")
  z = standardise_per_class(features, labels, standardise)
  _, assignments = index.kmeans(z, num_clusters, niter=niter, seed=int(seed),
                                nredo=nredo)
  return np.asarray(assignments, np.int32)


# ---------------------------------------------------------------------------
# Base loss plumbing.
# ---------------------------------------------------------------------------


class BaseLoss(NamedTuple):
  """The registry functions MIC uses for l_α and l_β.

  ``init(name, rng, num_classes, dim, **kwargs) -> params`` and
  ``apply(name, embeddings, labels, params=..., rng=..., **kwargs) ->
  scalar or (scalar, aux)``, i.e. :func:`dmlx.losses.init` /
  :func:`dmlx.losses.apply`.
  """
  init: Callable[..., Any]
  apply: Callable[..., Any]


def _registry() -> BaseLoss:
  from dmlx import losses  # the registry package imports this module's loss.
  return BaseLoss(init=losses.init, apply=losses.apply)


def _scalar_and_aux(result: Any) -> tuple[Array, Mapping[str, Any]]:
  if isinstance(result, tuple):
    value, aux = result
    return value, dict(aux or {})
  return result, {}


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MICConfig:
  """Validated ``config.method`` fields (see the module docstring)."""
  num_clusters: int
  gamma: float
  refresh_every: int = 2
  grl_lambda: float = 1.0
  standardise: str = "mean"
  standardise_refresh: str = "none"
  switch_prob: float = 0.2
  alternate: bool = False
  projection_dim: int = 512
  kmeans_niter: int = 20
  kmeans_nredo: int = 1

  def __post_init__(self):
    if self.num_clusters < 1:
      raise ValueError(
          f"config.method.num_clusters must be >= 1, got {self.num_clusters}.")
    if not np.isfinite(self.gamma) or self.gamma < 0:
      raise ValueError(f"config.method.gamma must be >= 0, got {self.gamma}.")
    if self.refresh_every < 0:
      raise ValueError("config.method.refresh_every must be >= 0, got "
                       f"{self.refresh_every}.")
    for name in ("standardise", "standardise_refresh"):
      if getattr(self, name) not in STANDARDISE_MODES:
        raise ValueError(f"config.method.{name} must be one of "
                         f"{STANDARDISE_MODES}, got {getattr(self, name)!r}.")
    if not 0.0 <= self.switch_prob <= 1.0:
      raise ValueError("config.method.switch_prob must lie in [0, 1], got "
                       f"{self.switch_prob}.")
    if self.projection_dim < 1:
      raise ValueError("config.method.projection_dim must be >= 1, got "
                       f"{self.projection_dim}.")
    for name in ("kmeans_niter", "kmeans_nredo"):
      if getattr(self, name) < 1:
        raise ValueError(f"config.method.{name} must be >= 1, got "
                         f"{getattr(self, name)}.")


def parse_config(method_config: Any) -> MICConfig:
  """Reads and checks ``config.method`` (a ConfigDict or mapping)."""
  get = (method_config.get if hasattr(method_config, "get")
         else lambda k, d=None: getattr(method_config, k, d))
  missing = [k for k in ("num_clusters", "gamma") if get(k, None) is None]
  if missing:
    raise ValueError(f"MIC needs config.method.{missing[0]} (no default: it is "
                     "dataset dependent, see dmlx.methods.mic).")
  defaults = MICConfig(num_clusters=1, gamma=0.0)
  return MICConfig(
      num_clusters=int(get("num_clusters")),
      gamma=float(get("gamma")),
      refresh_every=int(get("refresh_every", defaults.refresh_every)),
      grl_lambda=float(get("grl_lambda", defaults.grl_lambda)),
      standardise=str(get("standardise", defaults.standardise)),
      standardise_refresh=str(get("standardise_refresh",
                                  defaults.standardise_refresh)),
      switch_prob=float(get("switch_prob", defaults.switch_prob)),
      alternate=bool(get("alternate", defaults.alternate)),
      projection_dim=int(get("projection_dim", defaults.projection_dim)),
      kmeans_niter=int(get("kmeans_niter", defaults.kmeans_niter)),
      kmeans_nredo=int(get("kmeans_nredo", defaults.kmeans_nredo)))


def _loss_name_and_kwargs(config: Any) -> tuple[str, dict]:
  loss_cfg = getattr(config, "loss", None)
  name = getattr(loss_cfg, "name", None) if loss_cfg is not None else None
  if not name:
    raise ValueError("MIC needs config.loss.name (the base loss used for both "
                     "l_alpha and l_beta).")
  kwargs = getattr(loss_cfg, "kwargs", None)
  if kwargs is None:
    kwargs = {}
  elif hasattr(kwargs, "to_dict"):
    kwargs = kwargs.to_dict()
  return str(name), dict(kwargs)


def evaluate_concatenation(ctx: HostContext, test_dataset: Any,
                           test_embeddings: Optional[np.ndarray] = None
                           ) -> dict[str, float]:
  """Retrieval on the concatenation [E_α, E_β] (MIC Sec. 5, Fig. 4).

  Both encoders are L2-normalised, so the concatenation has norm sqrt(2) and
  each encoder weighs equally in the distance
  ``||[a, b] - [a', b']||² = ||a - a'||² + ||b - b'||²``.

  Args:
    ctx: host context; ``ctx.embed(layer, dataset)`` embeds the test set and
      ``ctx.config.eval`` gives ``ks`` and ``metrics`` (defaults (1, 2, 4, 8),
      recall and NMI when absent).
    test_dataset: the test split (``.labels``).
    test_embeddings: E_α of the test set if already computed (``[N, D]``),
      else it is embedded here.

  Returns:
    ``{'concat/recall@1': ..., 'concat/nmi': ..., ...}``.
  """
  from dmlx import eval as dmlx_eval  # host-only (FAISS).
  e_alpha = (np.asarray(ctx.embed("embedding", test_dataset))
             if test_embeddings is None else np.asarray(test_embeddings))
  e_beta = np.asarray(ctx.embed("aux_embedding", test_dataset))
  if e_alpha.shape[0] != e_beta.shape[0]:
    raise ValueError(f"E_alpha has {e_alpha.shape[0]} test embeddings but "
                     f"E_beta has {e_beta.shape[0]}.")
  eval_cfg = getattr(getattr(ctx, "config", None), "eval", None)
  ks = tuple(getattr(eval_cfg, "ks", (1, 2, 4, 8)))
  metrics = tuple(getattr(eval_cfg, "metrics", ("recall", "nmi")))
  joint = np.concatenate([e_alpha, e_beta], axis=1).astype(np.float32)
  result = dmlx_eval.evaluate_retrieval(joint, np.asarray(test_dataset.labels),
                                        ks=ks, metrics=metrics)
  return {f"concat/{k}": float(v) for k, v in result.items()}


def _aux_dim(config: Any, info: ModelInfo) -> int:
  dim = dict(info.feature_dims).get("aux_embedding")
  if dim is None:
    model_cfg = getattr(config, "model", None)
    dim = getattr(model_cfg, "aux_embedding_dim", 0) if model_cfg else 0
  dim = int(dim or 0)
  if dim <= 0:
    raise ValueError(
        "MIC needs the auxiliary encoder E_beta: set "
        f"config.model.aux_embedding_dim > 0 (got {dim}).")
  return dim


# ---------------------------------------------------------------------------
# The method.
# ---------------------------------------------------------------------------


def make(config: Any, *, base_loss: Optional[BaseLoss] = None) -> Method:
  """Builds the MIC :class:`~dmlx.methods.base.Method` (Algorithm 1).

  Args:
    config: the run config; reads ``config.method`` (see module docstring),
      ``config.loss.name`` / ``config.loss.kwargs`` and
      ``config.model.aux_embedding_dim``.
    base_loss: the ``(init, apply)`` pair of the loss registry; defaults to
      :mod:`dmlx.losses` (override in tests or for an external loss).

  Returns:
    The method: ``init_params``, ``init_state``, ``refresh`` (every
    ``refresh_every`` epochs), ``loss``, with ``alternate`` ``after_step``,
    and with ``config.model.aux_embedding_dim > 0`` ``evaluate`` (retrieval on
    the concatenation [E_α, E_β]).
  """
  settings = parse_config(config.method)
  loss_name, loss_kwargs = _loss_name_and_kwargs(config)
  registry = base_loss

  def get_registry() -> BaseLoss:
    return registry if registry is not None else _registry()

  def init_params(rng: Array, info: ModelInfo) -> dict:
    """Separate base-loss parameters for both tasks plus R's weights."""
    aux_dim = _aux_dim(config, info)
    reg = get_registry()
    k_class, k_aux, k_proj = jax.random.split(rng, 3)
    return {
        "class_loss": reg.init(loss_name, k_class, info.num_classes,
                               info.embedding_dim, **loss_kwargs),
        "aux_loss": reg.init(loss_name, k_aux, settings.num_clusters, aux_dim,
                             **loss_kwargs),
        "projection": _mic.init_projection(k_proj, aux_dim, info.embedding_dim,
                                           settings.projection_dim),
    }

  def _cluster(ctx: HostContext, layer: str, standardise: str) -> np.ndarray:
    features = np.asarray(ctx.embed(layer))
    class_labels = np.asarray(ctx.train.labels)
    labels = compute_surrogate_labels(
        features, class_labels, settings.num_clusters, standardise=standardise,
        seed=ctx.seed, niter=settings.kmeans_niter, nredo=settings.kmeans_nredo)
    sizes = np.bincount(labels, minlength=settings.num_clusters)
    ctx.log(f"mic: clustered {layer} (standardise={standardise}) into "
            f"{int((sizes > 0).sum())}/{settings.num_clusters} non-empty "
            "clusters, "
            f"sizes {int(sizes.min())}..{int(sizes.max())}, "
            f"NMI(surrogate, class)={_nmi(labels, class_labels):.3f}")
    return labels

  def init_state(ctx: HostContext) -> MICState:
    """Y_β ← Cluster(Stand(Embed(X, E, f)), C) on pooled backbone features."""
    labels = _cluster(ctx, "pooled", settings.standardise)
    return MICState(surrogate_labels=jnp.asarray(labels, jnp.int32),
                    phase=jnp.zeros((), jnp.int32))

  def refresh(ctx: HostContext, state: MICState) -> MICState:
    """Y_β ← Cluster(Embed(X, E_β, f), C) every T_U epochs."""
    labels = _cluster(ctx, "aux_embedding", settings.standardise_refresh)
    old = np.asarray(state.surrogate_labels)
    ctx.log(f"mic: NMI(new, previous surrogate labels)={_nmi(labels, old):.3f}")
    return state.replace(surrogate_labels=jnp.asarray(labels, jnp.int32))

  def loss(params: Mapping[str, Any], outputs: Mapping[str, Array],
           batch: Mapping[str, Array], state: MICState,
           rng: Array) -> tuple[Array, dict]:
    """L = l_α + l_β + γ·l_d (or L^α / L^β by phase), MIC Sec. 3.4 / Alg. 1."""
    if "aux_embedding" not in outputs:
      raise ValueError("MIC needs outputs['aux_embedding'] (E_beta); set "
                       "config.model.aux_embedding_dim > 0.")
    reg = get_registry()
    e_alpha = outputs["embedding"]
    e_beta = outputs["aux_embedding"]
    y_alpha = batch["labels"]
    y_beta = jnp.take(state.surrogate_labels, batch["index"], axis=0)
    k_switch, k_alpha, k_beta = jax.random.split(rng, 3)
    if settings.switch_prob > 0:
      y_beta = _mic.switch_labels(y_beta, k_switch, settings.switch_prob)

    if settings.alternate:
      train_alpha = jnp.asarray(state.phase) == 0
      e_alpha = jnp.where(train_alpha, e_alpha, jax.lax.stop_gradient(e_alpha))
      e_beta = jnp.where(train_alpha, jax.lax.stop_gradient(e_beta), e_beta)

    l_alpha, aux_alpha = _scalar_and_aux(reg.apply(
        loss_name, e_alpha, y_alpha, params=params["class_loss"], rng=k_alpha,
        **loss_kwargs))
    l_beta, aux_beta = _scalar_and_aux(reg.apply(
        loss_name, e_beta, y_beta, params=params["aux_loss"], rng=k_beta,
        **loss_kwargs))
    l_d = _mic.mutual_information_loss(
        e_alpha, e_beta, params["projection"], grl_lambda=settings.grl_lambda)

    if settings.alternate:
      task = jnp.where(train_alpha, l_alpha, l_beta)
    else:
      task = l_alpha + l_beta
    total = task + settings.gamma * l_d
    aux = {"mic_class_loss": l_alpha, "mic_aux_loss": l_beta,
           "mic_mutual_information": l_d}
    aux.update({f"class_{k}": v for k, v in aux_alpha.items()
                if jnp.ndim(v) == 0})
    aux.update({f"aux_{k}": v for k, v in aux_beta.items()
                if jnp.ndim(v) == 0})
    if settings.alternate:
      aux["mic_phase"] = jnp.asarray(state.phase)
    return total, aux

  def after_step(state: MICState, aux: dict, batch: dict) -> MICState:
    """Flips the phase: L^α and L^β steps alternate (Algorithm 1)."""
    del aux, batch
    return state.replace(phase=1 - jnp.asarray(state.phase, jnp.int32))

  def evaluate(ctx: HostContext, state: MICState, test_dataset: Any,
               test_embeddings: np.ndarray) -> dict[str, float]:
    """Retrieval on [E_α, E_β] (:func:`evaluate_concatenation`)."""
    del state
    return evaluate_concatenation(ctx, test_dataset, test_embeddings)

  model_cfg = getattr(config, "model", None)
  has_aux = int(getattr(model_cfg, "aux_embedding_dim", 0) or 0) > 0
  return Method(
      name="mic",
      loss=loss,
      init_params=init_params,
      init_state=init_state,
      refresh=refresh if settings.refresh_every > 0 else None,
      refresh_every=settings.refresh_every,
      after_step=after_step if settings.alternate else None,
      evaluate=evaluate if has_aux else None)


def _nmi(a: np.ndarray, b: np.ndarray) -> float:
  from sklearn.metrics import normalized_mutual_info_score
  return float(normalized_mutual_info_score(a, b))
