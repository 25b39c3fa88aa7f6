"""MIC as a dmlx method: surrogate labels on the host, two encoders trained
adversarially decorrelated.

Roth, Brattoli & Ommer, "MIC: Mining Interclass Characteristics for Improved
Metric Learning", ICCV 2019, Algorithm 1. Two embedding heads sit on one shared
backbone: the class encoder E_α (``outputs['embedding']``), trained with the
class labels, and the auxiliary encoder E_β (``outputs['aux_embedding']``;
the model builder adds it when ``config.model.aux_embedding_dim > 0``),
trained with surrogate labels that capture characteristics shared *across*
classes. γ·l_d, the mutual-information loss of eq. 1 with gradient reversal
into both encoders (:func:`dmlx.losses.mutual_information_loss`), ties them.

Host side (``refresh``): before the first step the training set's
``cluster_layer`` features are standardised per class (Sec. 3.3,
``standardise``) and clustered by FAISS k-means into C clusters; every
``refresh_every`` epochs E_β's own embedding is re-clustered
(``standardise_refresh``). The labels are host and device state.

Schedules (``config.method.schedule``):

* ``'authors'``: every iteration a *class step* minimises l_α + γ·l_d on a
  P×K batch of classes, then, with probability ``aux_probability`` (the
  authors' 0.8), an *auxiliary step* minimises l_β + γ·l_d on its own P×K
  batch of surrogate clusters (stream ``'aux'``); each is its own optimiser
  update. With probability ``switch_prob`` an auxiliary slot's image comes
  from a uniformly random cluster but keeps its slot's label (the authors'
  ``random_cluster_pick_p``).
* ``'joint'``: one update of l_α + l_β + γ·l_d on the class batch, l_β on
  the batch's looked-up surrogate labels, each switched to a random cluster
  with probability ``switch_prob`` (the paper's total loss, Sec. 3.4).
* ``'alternate'``: one update per iteration, L^α = l_α + γ·l_d on even
  steps and L^β = l_β + γ·l_d on odd ones, on the class batch, the other
  encoder under ``stop_gradient`` (the phase is the step's parity).

Evaluation: E_α (``'embedding'``) gives the reported numbers; the
``'mic_concatenation'`` evaluator adds retrieval on [E_α, E_β] (Fig. 4).

Config (``config.method``; paper / authors' values):
  num_clusters: C (30 CUB200, 200 CARS196 in the paper, 150 in the authors'
    scripts, 50 SOP, 150 In-Shop).
  gamma: weight γ of l_d (paper: [100, 2000] by cross-validation; authors'
    scripts 2500 CUB, 500 Cars, 250 SOP / In-Shop at 128-d).
  refresh_every: epochs between re-clusterings (0: only the first).
  grl_lambda: gradient-reversal strength, 1.
  standardise / standardise_refresh: 'none' | 'mean' | 'mean_std' for the
    first / later clusterings ('mean' and 'none' as the authors' code).
  cluster_layer: network output clustered first ('pooled'; the authors use
    their ResNet's layer1 maps average-pooled to a 4 × 4 grid: for dmlx's
    backbones 'stage1@4' (ResNet) or 'block1@4' (small CNN)).
  cluster_l2_normalise: L2-normalise those features first (the authors do).
  switch_prob: p = 0.2.   aux_probability: 0.8.   schedule: see above.
  projection_dim: R's hidden width, 512.
  kmeans_niter: 20.   kmeans_nredo: 1.
The base loss is ``config.loss`` (name and kwargs), for l_α and l_β alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dmlx import losses
from dmlx.data import samplers as samplers_lib
from dmlx.methods import base
from dmlx.methods.mic_clustering import STANDARDISE_MODES
from dmlx.methods.mic_clustering import compute_surrogate_labels
from dmlx.methods.mic_clustering import nmi
from dmlx.methods.mic_clustering import standardise_per_class

Array = jax.Array
SCHEDULES = ("authors", "joint", "alternate")


@dataclasses.dataclass(frozen=True)
class Config:
  """``config.method`` of MIC (see the module docstring)."""
  num_clusters: int = 30
  gamma: float = 0.0
  refresh_every: int = 2
  grl_lambda: float = 1.0
  standardise: str = "mean"
  standardise_refresh: str = "none"
  cluster_layer: str = "pooled"
  cluster_l2_normalise: bool = True
  switch_prob: float = 0.2
  aux_probability: float = 0.8
  schedule: str = "authors"
  projection_dim: int = 512
  kmeans_niter: int = 20
  kmeans_nredo: int = 1
  loss: Any = base.loss_field()

  def __post_init__(self):
    base.check_positive_int(self, "num_clusters", "projection_dim",
                            "kmeans_niter", "kmeans_nredo")
    base.check_positive_int(self, "refresh_every", allow_zero=True)
    if not np.isfinite(self.gamma) or self.gamma < 0:
      raise ValueError(f"config.method.gamma must be >= 0, got {self.gamma}.")
    for name in ("switch_prob", "aux_probability"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"config.method.{name} must lie in [0, 1], got "
                         f"{getattr(self, name)}.")
    base.check_choice("standardise", self.standardise, STANDARDISE_MODES)
    base.check_choice("standardise_refresh", self.standardise_refresh,
                      STANDARDISE_MODES)
    base.check_choice("schedule", self.schedule, SCHEDULES)


@flax.struct.dataclass
class MICState:
  """MIC's state (host and device alike).

  Attributes:
    surrogate_labels: ``[N] int32`` cluster id Y_β of every training example.
  """
  surrogate_labels: Array


class SurrogateSampler:
  """The auxiliary step's batches: P surrogate clusters × K images (the
  P×K sampler over ``Y_β``), each image replaced with probability
  ``switch_prob`` by one of a uniformly random cluster while its slot keeps
  the label (the authors' random cluster pick).

  ``batch(step) -> (rows [B], labels [B])``: a pure function of
  ``(seed, step, surrogate labels)``.
  """

  def __init__(self, surrogate_labels: np.ndarray, classes_per_batch: int,
               images_per_class: int, switch_prob: float, seed: int):
    labels = np.asarray(surrogate_labels)
    present = int(len(np.unique(labels)))
    self.pk = samplers_lib.PKSampler(labels, min(classes_per_batch, present),
                                     images_per_class, seed)
    self.labels, self.switch_prob, self.seed = labels, switch_prob, seed
    self.batch_size = self.pk.batch_size
    self.steps_per_epoch = self.pk.steps_per_epoch

  def batch(self, step: int, state: Any = None) -> tuple[np.ndarray, np.ndarray]:
    del state
    rows = self.pk.batch(step)
    labels = self.labels[rows]
    if self.switch_prob > 0:
      rng = np.random.default_rng([self.seed, int(step), 11])
      switch = rng.random(len(rows)) < self.switch_prob
      rows = np.where(switch, rng.integers(0, len(self.labels), len(rows)), rows)
    return rows.astype(np.int32), labels.astype(np.int32)


# ---------------------------------------------------------------------------
# The method's functions.
# ---------------------------------------------------------------------------


def _aux_dim(info: base.ModelInfo) -> int:
  dim = int(dict(info.feature_dims).get("aux_embedding", 0) or 0)
  if dim <= 0:
    raise ValueError("MIC needs the auxiliary encoder E_beta: set "
                     "config.model.aux_embedding_dim > 0.")
  return dim


def init_params(cfg: Config, rng: Array, info: base.ModelInfo) -> dict:
  """Separate base-loss parameters for both tasks plus R's weights."""
  aux_dim = _aux_dim(info)
  k_class, k_aux, k_proj = jax.random.split(rng, 3)
  return {
      "class_loss": cfg.loss.init(k_class, info.num_classes, info.embedding_dim),
      "aux_loss": cfg.loss.init(k_aux, cfg.num_clusters, aux_dim),
      "projection": losses.init_projection(k_proj, aux_dim, info.embedding_dim,
                                           cfg.projection_dim),
  }


def init_state(cfg: Config, info: base.ModelInfo) -> base.MethodState:
  del cfg
  labels = MICState(np.zeros((info.num_train,), np.int32))
  return base.MethodState(device=labels, host=labels)


def refresh(cfg: Config, ctx: base.HostContext,
            state: base.MethodState) -> base.MethodState:
  """Y_β ← Cluster(Stand(Embed(X, f)), C) first, then Cluster(Embed(X, E_β))."""
  first = ctx.step == 0
  layer = cfg.cluster_layer if first else "aux_embedding"
  mode = cfg.standardise if first else cfg.standardise_refresh
  features = np.asarray(ctx.embed(layer))
  if first and cfg.cluster_l2_normalise:
    features = features / np.maximum(
        np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  class_labels = np.asarray(ctx.train.labels)
  labels = compute_surrogate_labels(
      features, class_labels, cfg.num_clusters, standardise=mode,
      seed=ctx.seed, niter=cfg.kmeans_niter, nredo=cfg.kmeans_nredo)
  sizes = np.bincount(labels, minlength=cfg.num_clusters)
  ctx.log(f"mic: clustered {layer} (standardise={mode}) into "
          f"{int((sizes > 0).sum())}/{cfg.num_clusters} non-empty clusters, "
          f"sizes {int(sizes.min())}..{int(sizes.max())}, "
          f"NMI(surrogate, class)={nmi(labels, class_labels):.3f}"
          + ("" if first else ", NMI(new, previous)="
             f"{nmi(labels, np.asarray(state.host.surrogate_labels)):.3f}"))
  new = MICState(labels.astype(np.int32))
  return base.MethodState(device=new, host=new)


def refresh_every(cfg: Config) -> int:
  return cfg.refresh_every


def _mi(cfg: Config, params, e_alpha, e_beta) -> Array:
  return losses.mutual_information_loss(e_alpha, e_beta, params["projection"],
                                        grl_lambda=cfg.grl_lambda)


def _outputs(outputs: Mapping[str, Array]) -> tuple[Array, Array]:
  if "aux_embedding" not in outputs:
    raise ValueError("MIC needs outputs['aux_embedding'] (E_beta); set "
                     "config.model.aux_embedding_dim > 0.")
  return outputs["embedding"], outputs["aux_embedding"]


def _scalars(prefix: str, aux: Mapping[str, Any]) -> dict:
  return {f"{prefix}_{k}": v for k, v in aux.items() if jnp.ndim(v) == 0}


def _task_loss(task: str, cfg: Config, params, outputs, batch, rng):
  """``l_task + γ·l_d`` on the batch's labels: ``'class'`` is L^α on E_α
  with the class labels, ``'aux'`` L^β on E_β with the surrogate labels the
  auxiliary sampler put in the batch (Algorithm 1)."""
  e_alpha, e_beta = _outputs(outputs)
  encoder, name = (e_alpha, "class") if task == "class" else (e_beta, "aux")
  value, aux = cfg.loss.apply(encoder, batch["labels"],
                              params=params[f"{name}_loss"], rng=rng)
  l_d = _mi(cfg, params, e_alpha, e_beta)
  return value + cfg.gamma * l_d, {f"mic_{name}_loss": value,
                                   "mic_mutual_information": l_d,
                                   **_scalars(name, aux)}


def class_loss(cfg: Config, params, outputs, batch, state, rng):
  """The class step's L^α = l_α(E_α, y) + γ·l_d."""
  del state
  return _task_loss("class", cfg, params, outputs, batch, rng)


def aux_loss(cfg: Config, params, outputs, batch, state, rng):
  """The auxiliary step's L^β = l_β(E_β, Y_β) + γ·l_d on a batch drawn by
  surrogate cluster."""
  del state
  return _task_loss("aux", cfg, params, outputs, batch, rng)


def loss(cfg: Config, params, outputs, batch, state: MICState, rng):
  """The one-update schedules on the class batch: ``'joint'``
  (l_α + l_β + γ·l_d) or ``'alternate'`` (L^α / L^β by step parity)."""
  e_alpha, e_beta = _outputs(outputs)
  y_beta = jnp.take(state.surrogate_labels, batch["index"], axis=0)
  k_switch, k_alpha, k_beta = jax.random.split(rng, 3)
  if cfg.switch_prob > 0:
    y_beta = losses.switch_labels(y_beta, k_switch, cfg.switch_prob)
  if cfg.schedule == "alternate":
    train_alpha = batch["step"] % 2 == 0
    e_alpha = jnp.where(train_alpha, e_alpha, jax.lax.stop_gradient(e_alpha))
    e_beta = jnp.where(train_alpha, jax.lax.stop_gradient(e_beta), e_beta)
  l_alpha, aux_alpha = cfg.loss.apply(e_alpha, batch["labels"],
                                      params=params["class_loss"], rng=k_alpha)
  l_beta, aux_beta = cfg.loss.apply(e_beta, y_beta, params=params["aux_loss"],
                                    rng=k_beta)
  l_d = _mi(cfg, params, e_alpha, e_beta)
  if cfg.schedule == "alternate":
    task = jnp.where(train_alpha, l_alpha, l_beta)
  else:
    task = l_alpha + l_beta
  aux = {"mic_class_loss": l_alpha, "mic_aux_loss": l_beta,
         "mic_mutual_information": l_d, **_scalars("class", aux_alpha),
         **_scalars("aux", aux_beta)}
  return task + cfg.gamma * l_d, aux


def updates(cfg: Config) -> tuple[base.Update, ...]:
  if cfg.schedule == "authors":
    return (base.Update("class", "train", class_loss),
            base.Update("aux", "aux", aux_loss, cfg.aux_probability))
  return (base.Update("train", "train", loss),)


def samplers(cfg: Config, ctx: base.HostContext, state: base.MethodState):
  """``config.sampler`` over the classes and, for the authors' schedule,
  the same P×K over the surrogate clusters."""
  config = ctx.config
  out = {"train": samplers_lib.make_sampler(config.sampler, ctx.train.labels,
                                            config.seed)}
  if cfg.schedule == "authors":
    out["aux"] = SurrogateSampler(
        np.asarray(state.host.surrogate_labels),
        config.sampler.classes_per_batch, config.sampler.images_per_class,
        cfg.switch_prob, base.host_seed(config.seed, 0) + 1)
  return out


def evaluate_concatenation(ctx: base.EvalContext) -> dict[str, float]:
  """Retrieval on the concatenation [E_α, E_β] (MIC Sec. 5, Fig. 4), an
  evaluator. Both encoders are L2-normalised, so each weighs equally in
  ``||[a, b] - [a', b']||² = ||a - a'||² + ||b - b'||²``."""
  from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top
  e_alpha = np.asarray(ctx.test_features["embedding"])
  e_beta = ctx.test_features.get("aux_embedding")
  if e_beta is None:
    e_beta = ctx.embed("aux_embedding", ctx.test)
  joint = np.concatenate([e_alpha, np.asarray(e_beta)], axis=1)
  result = dmlx_eval.evaluate_retrieval(
      joint.astype(np.float32), np.asarray(ctx.test.labels),
      ks=tuple(ctx.config.eval.ks), metrics=tuple(ctx.config.eval.metrics))
  return {f"concat/{k}": float(v) for k, v in result.items()}


METHOD = base.Method(
    name="mic", Config=Config, loss=loss, init_params=init_params,
    init_state=init_state, refresh=refresh, refresh_every=refresh_every,
    updates=updates, samplers=samplers, evaluators=("mic_concatenation",))
