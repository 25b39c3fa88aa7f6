"""DML-DA: deep metric learning with density adaptivity (Li et al., 2019).

The method adds a regulariser to any base loss of the :mod:`dmlx.losses`
registry (paper: contrastive, N-pair, triplet), eq. (9):

    L = L_base + λ · L_DA,

with L_DA the density regulariser of eqs. (6)/(8)
(:func:`dmlx.losses._density.density_regularizer`). Its pieces here:

* learnable parameters ``params['method'] = {'target_density': α [C],
  'base': <the base loss's own parameters>}``, α_c initialised to
  ``config.method.alpha_init`` (paper: 0.5);
* state :class:`DensityState` ``(original_density [C])``: each training
  class's original density D^(0)_avg, eq. (5) on the L2-normalised
  global-pooled backbone features (``ctx.embed('pooled')``), measured once
  before the first step (the paper uses GoogLeNet's pool5);
* the jitted ``loss`` = base loss + λ · regulariser;
* the ``'dmlda_densities'`` evaluator: after training, the mean class
  density (eq. 5) of the final embeddings on the test and training classes
  and the mean learnt α_c (:func:`evaluate_densities`).

``config.method.regularizer`` selects the regulariser:

* ``'density'``: DML-DA, eq. (8) (with ``correlation=False``: eq. (6));
* ``'density_minus'``: DML-DA⁻, eq. (6) without the inter-class density
  correlation penalty (no original densities are measured);
* ``'gor'``: global orthogonal regularisation (Zhang et al. 2017);
* ``'entropy'``: the entropy regulariser of the paper's comparison;
* ``'none'``: the base loss alone.

``λ`` (``config.method.lam``, paper: 10) weights whichever regulariser is
chosen. Config fields (``config.method``): ``regularizer='density'``,
``lam=10.0``, ``eta=0.5``, ``alpha_init=0.5``, ``correlation=True``,
``min_class_size=2``, ``entropy_temperature=1.0``.

The base loss L_base is ``config.loss`` of :mod:`dmlx.losses` (the paper's
contrastive form, eq. (2): ``'dmlda_contrastive'``; N-pair: ``'npair'``;
triplet: ``'triplet_all'`` with ``squared=True, reduction='valid'``).

Batches: a class's density needs several of its images in the batch. The
paper samples 10 classes × 10 images (Cars196, CUB; the trainer's P×K
sampler) and, for Stanford Online Products (~5 images a class), whole classes
accumulated up to the batch size.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dmlx import losses
from dmlx.methods import base

Array = jax.Array

REGULARIZERS = ("density", "density_minus", "gor", "entropy", "none")


@flax.struct.dataclass
class DensityState:
  """DML-DA method state.

  Attributes:
    original_density: ``[num_classes]`` D^(0)_avg(S_c), the density of each
      training class measured once on the backbone's features (eq. (7)).
    measured: ``[]`` bool, D⁽⁰⁾ has been measured; until then eq. (8)'s
      correlation penalty is off (DML-DA⁻'s eq. (6) alone).
  """
  original_density: Array
  measured: Array


def original_density(features: np.ndarray, labels: np.ndarray,
                     num_classes: int, *, normalize: bool = True
                     ) -> np.ndarray:
  """Original density D^(0)_avg(S_c) of every training class (DML-DA eq. 7).

  Eq. (5) over *all* training examples of each class, computed on the host in
  float64 from features taken before embedding (the paper: GoogLeNet's
  1,024-d pool5; here the backbone's global-pooled features), L2-normalised
  first when ``normalize``. A class with fewer than two examples has no
  measurable spread; it gets the mean density of the other classes, so the
  correlation penalty of eq. (8) ties its α_c to the average instead of
  forcing it to 0.

  Args:
    features: ``[num_train, feature_dim]`` features of the training set.
    labels: ``[num_train]`` integer class ids in ``[0, num_classes)``.
    num_classes: number of training classes C.
    normalize: L2-normalise the features first.

  Returns:
    ``[num_classes]`` float32 original densities.
  """
  features = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"original_density: features {features.shape} and labels "
                     f"{labels.shape} must be [N, F] and [N].")
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"original_density: labels must lie in [0, {num_classes})"
                     f", got range [{labels.min()}, {labels.max()}].")
  if normalize:
    norms = np.sqrt(np.maximum(np.sum(features**2, axis=1, keepdims=True),
                               1e-24))
    features = features / norms
  counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
  sums = np.zeros((num_classes, features.shape[1]))
  np.add.at(sums, labels, features)
  centroids = sums / np.maximum(counts, 1.0)[:, None]
  sq = np.sum((features - centroids[labels])**2, axis=1)
  density = np.bincount(labels, weights=sq, minlength=num_classes)
  density = density / np.maximum(counts, 1.0)
  measurable = counts >= 2
  if not measurable.all():
    fill = density[measurable].mean() if measurable.any() else 1.0
    density = np.where(measurable, density, fill)
  return density.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Config:
  """``config.method`` of DML-DA (see the module docstring)."""
  regularizer: str = "density"
  lam: float = 10.0
  eta: float = 0.5
  alpha_init: float = 0.5
  correlation: bool = True
  min_class_size: int = 2
  entropy_temperature: float = 1.0
  original_density_epoch: int = 0
  loss: Any = base.loss_field()

  def __post_init__(self):
    base.check_choice("regularizer", self.regularizer, REGULARIZERS)
    base.check_positive_int(self, "original_density_epoch", allow_zero=True)
    for name in ("lam", "eta"):
      value = getattr(self, name)
      if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"config.method.{name} must be >= 0, got {value}.")
    if not np.isfinite(self.alpha_init):
      raise ValueError(f"config.method.alpha_init must be finite, got "
                       f"{self.alpha_init}.")
    if self.alpha_init < 0:
      raise ValueError(
          f"config.method.alpha_init must be >= 0, got {self.alpha_init}: "
          "alpha_c is a target class density (a mean squared distance to the "
          "class centre, >= 0); use e.g. the paper's 0.5.")
    base.check_positive_int(self, "min_class_size")
    if not self.entropy_temperature > 0:
      raise ValueError(f"config.method.entropy_temperature must be > 0, got "
                       f"{self.entropy_temperature}.")

  @property
  def uses_alpha(self) -> bool:
    return self.regularizer in ("density", "density_minus")

  @property
  def uses_original_density(self) -> bool:
    """Eq. (8)'s correlation penalty (off for DML-DA⁻ and other
    regularisers)."""
    return self.correlation and self.regularizer == "density"


def init_params(cfg: Config, rng: Array, info: base.ModelInfo) -> dict:
  """The base loss's parameters and the target densities α_c."""
  params = {"base": cfg.loss.init(rng, info.num_classes, info.embedding_dim)}
  if cfg.uses_alpha:
    params["target_density"] = jnp.full((info.num_classes,), cfg.alpha_init,
                                        jnp.float32)
  return params


def init_state(cfg: Config, info: base.ModelInfo) -> base.MethodState:
  if not cfg.uses_original_density:
    return base.MethodState()
  return base.MethodState(device=DensityState(
      original_density=np.zeros((info.num_classes,), np.float32),
      measured=np.asarray(False)))


def refresh(cfg: Config, ctx: base.HostContext,
            state: base.MethodState) -> base.MethodState:
  """D⁽⁰⁾ of every training class from the pooled features, once, at the
  start of epoch ``original_density_epoch``: 0 is the network training
  starts from (the paper's pretrained GoogLeNet), a later epoch a network
  trained that long (for a run from random weights)."""
  if not cfg.uses_original_density or bool(np.asarray(state.device.measured)):
    return state
  if ctx.epoch < cfg.original_density_epoch:
    ctx.log(f"dmlda: D0 is measured at epoch {cfg.original_density_epoch}; "
            "until then the correlation penalty of eq. (8) is off")
    return state
  features = ctx.embed("pooled")
  d0 = original_density(features, ctx.train.labels, ctx.train.num_classes)
  ctx.log(f"dmlda: original densities D0 (epoch {ctx.epoch}) over {len(d0)} "
          f"classes from {features.shape[1]}-d pooled features: mean "
          f"{d0.mean():.4f}, min {d0.min():.4f}, max {d0.max():.4f}")
  return base.MethodState(device=DensityState(original_density=d0,
                                              measured=np.asarray(True)))


def refresh_every(cfg: Config) -> int:
  """D⁽⁰⁾ is due at ``original_density_epoch`` (0: before the first step)."""
  return cfg.original_density_epoch


def _select(flag: Array, a: tuple, b: tuple) -> tuple:
  """``a`` where ``flag`` else ``b``: (loss, aux) pairs, aux keys of ``a``
  (0 where ``b`` lacks one)."""
  loss = jnp.where(flag, a[0], b[0])
  aux = {k: jnp.where(flag, v, b[1].get(k, jnp.zeros_like(v)))
         for k, v in a[1].items()}
  return loss, aux


def _regularize(cfg: Config, params: dict, embeddings: Array, labels: Array,
                state: Optional[DensityState]) -> tuple[Array, dict]:
  reg = cfg.regularizer
  if cfg.uses_alpha:
    plain = functools.partial(
        losses.density_regularizer, embeddings, labels,
        params["target_density"], eta=cfg.eta,
        min_class_size=cfg.min_class_size)
    if not cfg.uses_original_density:
      return plain(None, correlation=False)
    with_d0 = plain(state.original_density, correlation=True)
    if cfg.original_density_epoch == 0:
      return with_d0
    return _select(state.measured, with_d0, plain(None, correlation=False))
  if reg == "gor":
    return losses.global_orthogonal_regularizer(embeddings, labels)
  if reg == "entropy":
    return losses.entropy_regularizer(embeddings, labels,
                                      temperature=cfg.entropy_temperature)
  return jnp.zeros((), embeddings.dtype), {}


def loss(cfg: Config, params: dict, outputs: dict, batch: dict,
         state: Optional[DensityState], rng: Array) -> tuple[Array, dict]:
  """Eq. (9): L_base + λ·L_DA on the embedding."""
  embeddings = outputs["embedding"]
  labels = batch["labels"]
  base_loss, base_aux = cfg.loss.apply(embeddings, labels,
                                       params=params.get("base", {}), rng=rng)
  reg_loss, reg_aux = _regularize(
      cfg, params, embeddings, labels,
      state if cfg.uses_original_density else None)
  total = base_loss + cfg.lam * reg_loss
  aux = {f"base/{k}": v for k, v in dict(base_aux).items()}
  aux.update({f"reg/{k}": v for k, v in reg_aux.items()})
  aux.update({"loss_base": base_loss, "regularizer": reg_loss})
  return total, aux


METHOD = base.Method(name="dmlda", Config=Config, loss=loss,
                     init_params=init_params, init_state=init_state,
                     refresh=refresh, refresh_every=refresh_every,
                     evaluators=("dmlda_densities",))


def evaluate_densities(ctx: base.EvalContext) -> dict[str, float]:
  """The densities DML-DA acts on, measured after training (eq. 5).

  Returns ``test_density`` and ``train_density``: the mean over classes of
  D_avg(S_c) of the L2-normalised embeddings, over all test examples and over
  ``config.eval.train_subset`` training examples (all when 0); a larger value
  is a lower density (more intra-class spread). ``test_global_density`` is
  D_avg of the whole test set taken as one class (the embedding's overall
  spread) and ``test_relative_density`` their ratio, which stays comparable
  when a regulariser shrinks or spreads the whole embedding. Plus
  ``mean_target_density`` (mean α_c) when the method learns α.
  """
  test_dataset = ctx.test
  test_embeddings = ctx.test_features["embedding"]
  test_labels = np.asarray(test_dataset.labels)
  test_density = float(np.mean(original_density(
      test_embeddings, test_labels, test_dataset.num_classes)))
  global_density = float(original_density(
      test_embeddings, np.zeros(len(test_labels), np.int64), 1)[0])
  result = {"test_density": test_density,
            "test_global_density": global_density,
            "test_relative_density": test_density / max(global_density,
                                                        1e-12)}
  train = ctx.train
  limit = int(getattr(getattr(ctx.config, "eval", None), "train_subset", 0)
              or 0)
  if limit and len(train) > limit:
    index = np.sort(np.random.default_rng(ctx.seed).choice(
        len(train), limit, replace=False))
    train = train.subset(index, relabel=False)
  train_embeddings = ctx.embed("embedding", train)
  present = np.unique(train.labels)
  density = original_density(train_embeddings, train.labels, train.num_classes)
  result["train_density"] = float(np.mean(density[present]))
  params = ctx.params if isinstance(ctx.params, dict) else {}
  if "target_density" in params:
    result["mean_target_density"] = float(np.mean(np.asarray(
        params["target_density"])))
  return result
