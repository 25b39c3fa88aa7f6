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
  global-pooled backbone features (``ctx.embed('pooled')``), measured once in
  ``init_state`` before training (the paper uses GoogLeNet's pool5);
* the jitted ``loss`` = base loss + λ · regulariser;
* ``evaluate``: after training, the mean class density (eq. 5) of the final
  embeddings on the test and training classes and the mean learnt α_c
  (:func:`evaluate_densities`).

``config.method.regularizer`` selects the regulariser:

* ``'density'``: DML-DA, eq. (8) (with ``correlation=False``: eq. (6));
* ``'density_minus'``: DML-DA⁻, eq. (6) without the inter-class density
  correlation penalty (no original densities are measured);
* ``'gor'``: global orthogonal regularisation (Zhang et al. 2017);
* ``'entropy'``: the entropy regulariser of the paper's comparison;
* ``'none'``: the base loss alone.

``λ`` (``config.method.lam``, paper: 10) weights whichever regulariser is
chosen. Config fields (``config.method``): ``regularizer='density'``,
``lam=10.0``, ``eta=0.5``, ``alpha_init=0.5``, ``correlation=True``, and
optionally ``min_class_size=2``, ``entropy_temperature=1.0``,
``base='registry'``.

``config.method.base`` picks the base loss L_base:

* ``'registry'`` (default): ``config.loss.name`` of :mod:`dmlx.losses` with
  ``config.loss.kwargs`` (the paper's N-pair: ``'npair'``; triplet:
  ``'triplet_all'`` with ``squared=True, reduction='valid'``);
* ``'dmlda_contrastive'``: the paper's own contrastive loss, eq. (2)
  (:func:`dmlx.losses._density.dmlda_contrastive`: D + max(0, m_p − D) on
  the squared distance, averaged over pairs), with ``config.loss.kwargs``
  holding its ``margin``; ``config.loss.name`` is then not read.

Batches: a class's density needs several of its images in the batch. The
paper samples 10 classes × 10 images (Cars196, CUB; the trainer's P×K
sampler) and, for Stanford Online Products (~5 images a class), whole classes
accumulated up to the batch size.
"""
from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dmlx.losses import _density
from dmlx.methods.base import HostContext, Method, ModelInfo

Array = jax.Array

REGULARIZERS = ("density", "density_minus", "gor", "entropy", "none")
BASES = ("registry", "dmlda_contrastive")


@flax.struct.dataclass
class DensityState:
  """DML-DA method state.

  Attributes:
    original_density: ``[num_classes]`` D^(0)_avg(S_c), the density of each
      training class measured once before training on the backbone's
      features (eq. (7)).
  """
  original_density: Array


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


def _settings(config: Any) -> dict:
  """Reads and checks ``config.method``; returns plain Python values."""
  m = config.method
  get = m.get if hasattr(m, "get") else (lambda k, d=None: getattr(m, k, d))
  regularizer = get("regularizer", "density")
  if regularizer not in REGULARIZERS:
    raise ValueError(f"dmlda: config.method.regularizer={regularizer!r} is "
                     f"not one of {REGULARIZERS}.")
  base = get("base", "registry")
  if base not in BASES:
    raise ValueError(f"dmlda: config.method.base={base!r} is not one of "
                     f"{BASES}.")
  s = dict(
      base=base,
      regularizer=regularizer,
      lam=float(get("lam", 10.0)),
      eta=float(get("eta", 0.5)),
      alpha_init=float(get("alpha_init", 0.5)),
      correlation=bool(get("correlation", True)) and regularizer == "density",
      min_class_size=int(get("min_class_size", 2)),
      entropy_temperature=float(get("entropy_temperature", 1.0)),
  )
  if not (np.isfinite(s["lam"]) and s["lam"] >= 0):
    raise ValueError(f"dmlda: config.method.lam must be >= 0, got {s['lam']}.")
  if not (np.isfinite(s["eta"]) and s["eta"] >= 0):
    raise ValueError(f"dmlda: config.method.eta must be >= 0, got {s['eta']}.")
  if not np.isfinite(s["alpha_init"]):
    raise ValueError(f"dmlda: config.method.alpha_init must be finite, got "
                     f"{s['alpha_init']}.")
  if s["min_class_size"] < 1:
    raise ValueError(f"dmlda: config.method.min_class_size must be >= 1, got "
                     f"{s['min_class_size']}.")
  if not s["entropy_temperature"] > 0:
    raise ValueError(f"dmlda: config.method.entropy_temperature must be > 0, "
                     f"got {s['entropy_temperature']}.")
  return s


def _loss_kwargs(config: Any) -> dict:
  kwargs = config.loss.get("kwargs", None) if hasattr(config.loss, "get") \
      else getattr(config.loss, "kwargs", None)
  if kwargs is None:
    return {}
  return dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)


class _LocalBases:
  """The base losses of DML-DA that live outside the loss registry, behind
  the registry's ``init`` / ``apply`` interface."""

  LOSSES = {"dmlda_contrastive": _density.dmlda_contrastive}
  HYPER = {"dmlda_contrastive": ("margin",)}

  @classmethod
  def check(cls, name: str, kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - set(cls.HYPER[name]))
    if unknown:
      raise ValueError(f"dmlda: base loss {name!r} got unknown "
                       f"config.loss.kwargs {unknown}; it accepts "
                       f"{list(cls.HYPER[name])}.")

  @staticmethod
  def init(name, rng, num_classes, dim, **kwargs) -> dict:
    del name, rng, num_classes, dim, kwargs
    return {}

  @classmethod
  def apply(cls, name, embeddings, labels, params=None, rng=None, **kwargs):
    del params, rng
    return cls.LOSSES[name](embeddings, labels, **kwargs)


def make(config: Any, *, registry: Optional[Any] = None) -> Method:
  """Builds the DML-DA :class:`~dmlx.methods.base.Method` (eq. (9)).

  Args:
    config: the run config; reads ``config.method`` (see the module
      docstring) and the base loss ``config.loss.name`` /
      ``config.loss.kwargs``.
    registry: the loss registry, an object with ``apply(name, embeddings,
      labels, params=, rng=, **kwargs)`` and ``init(name, rng, num_classes,
      dim, **kwargs)``; default :mod:`dmlx.losses` (tests pass a stub). Not
      used when ``config.method.base`` names a local base loss.

  Returns:
    The method: ``loss(params_method, outputs, batch, state, rng) ->
    (L_base + λ·R, aux)`` with ``R`` the chosen regulariser.
  """
  s = _settings(config)
  loss_kwargs = _loss_kwargs(config)
  if s["base"] == "registry":
    loss_name = config.loss.name
    if registry is None:
      import dmlx.losses as registry  # pylint: disable=g-import-not-at-top
  else:
    loss_name = s["base"]
    _LocalBases.check(loss_name, loss_kwargs)
    registry = _LocalBases
  uses_alpha = s["regularizer"] in ("density", "density_minus")

  def init_params(rng: Array, info: ModelInfo) -> dict:
    params = {"base": registry.init(loss_name, rng, info.num_classes,
                                    info.embedding_dim, **loss_kwargs)}
    if uses_alpha:
      params["target_density"] = jnp.full((info.num_classes,),
                                          s["alpha_init"], jnp.float32)
    return params

  def init_state(ctx: HostContext) -> Optional[DensityState]:
    if not s["correlation"]:
      return None
    features = ctx.embed("pooled")
    d0 = original_density(features, ctx.train.labels, ctx.train.num_classes)
    ctx.log(f"dmlda: original densities D0 over {len(d0)} classes from "
            f"{features.shape[1]}-d pooled features: mean {d0.mean():.4f}, "
            f"min {d0.min():.4f}, max {d0.max():.4f}")
    return DensityState(original_density=jnp.asarray(d0))

  def regularize(params: dict, embeddings: Array, labels: Array,
                 state: Optional[DensityState]) -> tuple[Array, dict]:
    reg = s["regularizer"]
    if reg in ("density", "density_minus"):
      if s["correlation"] and state is None:
        raise ValueError("dmlda: regularizer 'density' with correlation=True "
                         "needs the DensityState from init_state, got None.")
      return _density.density_regularizer(
          embeddings, labels, params["target_density"],
          state.original_density if s["correlation"] else None,
          eta=s["eta"], correlation=s["correlation"],
          min_class_size=s["min_class_size"])
    if reg == "gor":
      return _density.global_orthogonal_regularizer(embeddings, labels)
    if reg == "entropy":
      return _density.entropy_regularizer(
          embeddings, labels, temperature=s["entropy_temperature"])
    return jnp.zeros((), embeddings.dtype), {}

  def loss(params: dict, outputs: dict, batch: dict,
           state: Optional[DensityState], rng: Array) -> tuple[Array, dict]:
    embeddings = outputs["embedding"]
    labels = batch["labels"]
    base = registry.apply(loss_name, embeddings, labels,
                          params=params.get("base", {}), rng=rng,
                          **loss_kwargs)
    base_loss, base_aux = base if isinstance(base, tuple) else (base, {})
    reg_loss, reg_aux = regularize(params, embeddings, labels, state)
    total = base_loss + s["lam"] * reg_loss
    aux = {f"base/{k}": v for k, v in dict(base_aux).items()}
    aux.update({f"reg/{k}": v for k, v in reg_aux.items()})
    aux.update({"loss_base": base_loss, "regularizer": reg_loss,
                "loss": total})
    return total, aux

  def evaluate(ctx: HostContext, state: Optional[DensityState], test_dataset,
               test_embeddings: np.ndarray) -> dict:
    """Mean class density (eq. 5) of the final embeddings on the test classes
    and on the training set (``config.eval.train_subset`` of it), and the
    mean learnt target density α_c."""
    del state
    return evaluate_densities(ctx, test_dataset, test_embeddings)

  variant = ("density" if s["correlation"] else "density_minus") \
      if uses_alpha else s["regularizer"]
  return Method(name=f"dmlda:{variant}:{loss_name}", loss=loss,
                init_params=init_params, init_state=init_state,
                evaluate=evaluate)


def evaluate_densities(ctx: HostContext, test_dataset: Any,
                       test_embeddings: np.ndarray) -> dict[str, float]:
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
