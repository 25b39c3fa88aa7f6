"""Magnet loss as a dmlx method (Rippel et al., ICLR 2016).

Host side, before the first step and every ``refresh_every`` epochs, the whole
training set is embedded with the current weights and each class is split
into K clusters by K-means: the :class:`~dmlx.methods.magnet_index.ClusterIndex`
(section 3.2, component #2; host state). Each training step draws a
*neighbourhood* (component #1, :class:`NeighbourhoodSampler`): a seed cluster
with probability proportional to its mean cached loss ℒ_I, its M−1 nearest
impostor clusters, D examples of each. The jitted loss is eq. 5
(:func:`dmlx.losses.magnet_loss`); inside the same step the batch's
per-example losses and σ̂² are written into the device's :class:`LossCache`
with a scatter (no host round trip). Every ``sync_every`` steps the host
copies the cache and recomputes ℒ_I for the sampler. Evaluation is the
k-nearest-cluster classifier of eq. 6 with σ² the running average of the
batch estimates (evaluator ``'magnet_classifier'``).

``config.method`` fields (defaults from Appendix B and section 4.1):

* ``M=12`` clusters per neighbourhood, ``D=4`` examples per cluster (the paper
  keeps M·D ≤ 48 and found M≈12, D=4 best).
* ``K=8`` clusters per class; Appendix B's best K: Pet 8, Flowers 1, Dogs 1,
  ImageNet Attributes 2, hierarchy recovery 16 ("varied as function of
  dataset cardinality"). Classes with fewer than K examples get one cluster
  per example; the table is padded to C·K with a validity mask.
* ``alpha=1.0``: gap α in units of variance ("the optimal gap has in general
  been α ≈ 1"; Appendix B lists 7.18 Pet, 2.43 Flowers, 0.71 Dogs, 0.70
  ImageNet Attributes).
* ``refresh_every=1`` epochs between index refreshes (smaller datasets).
* ``L=128`` nearest clusters for kNC (section 3.3).
* ``variance_standardise=True``: eq. 5's division by 2σ̂² (``False`` is the
  triplet reduction of section 3.4).
* dmlx additions: ``leave_one_out_means=False`` (see the loss),
  ``sigma_momentum=0.99`` (the running average of σ̂² is an exponential moving
  average, bias-corrected), ``kmeans_iters=20``, ``knn_k=0`` (neighbours of
  the soft kNN evaluation; 0 = L), ``steps_per_epoch=0`` (0 = ⌈N / (M·D)⌉),
  ``sync_every=10`` (steps between copies of the device's loss cache to the
  sampler's ℒ_I; 1 copies after every step as the paper's host-side cache
  does, at the cost of a device → host copy that stalls the step pipeline
  every step; an example's cached loss is already as old as its last visit,
  ⌈N/(M·D)⌉ steps on average, so 10 steps add little).

A training row drawn several times into one batch (a cluster of fewer than D
examples) caches the mean of its copies' losses.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dmlx import losses
from dmlx.methods import base
from dmlx.methods.magnet_index import ClusterIndex
from dmlx.methods.magnet_index import build_cluster_index
from dmlx.methods.magnet_index import cluster_mean_loss
from dmlx.methods.magnet_index import empty_index
from dmlx.methods.magnet_index import knc_predict
from dmlx.methods.magnet_index import knn_predict
from dmlx.methods.magnet_index import nearest_impostors
from dmlx.methods.magnet_index import seed_probabilities
from dmlx.methods.magnet_index import soft_vote

__all__ = ["ClusterIndex", "Config", "LossCache", "METHOD",
           "NeighbourhoodSampler", "build_cluster_index", "knc_predict",
           "knn_predict", "running_sigma2", "seed_probabilities", "soft_vote"]


@dataclasses.dataclass(frozen=True)
class Config:
  """``config.method`` of Magnet (see the module docstring)."""
  M: int = 12  # pylint: disable=invalid-name
  D: int = 4  # pylint: disable=invalid-name
  K: int = 8  # pylint: disable=invalid-name
  alpha: float = 1.0
  refresh_every: int = 1
  L: int = 128  # pylint: disable=invalid-name
  variance_standardise: bool = True
  leave_one_out_means: bool = False
  sigma_momentum: float = 0.99
  kmeans_iters: int = 20
  knn_k: int = 0
  steps_per_epoch: int = 0
  sync_every: int = 10

  def __post_init__(self):
    base.check_positive_int(self, "M", "D", "K", "refresh_every", "L",
                            "kmeans_iters", "sync_every")
    base.check_positive_int(self, "knn_k", "steps_per_epoch", allow_zero=True)
    if self.M < 2:
      raise ValueError(f"config.method.M must be >= 2 (a seed cluster and at "
                       f"least one impostor), got {self.M}.")
    if not 0.0 <= self.sigma_momentum < 1.0:
      raise ValueError(f"config.method.sigma_momentum must be in [0, 1), got "
                       f"{self.sigma_momentum!r}.")


@flax.struct.dataclass
class LossCache:
  """Magnet's device state: what the jitted step reads and writes.

  Attributes:
    assignments: ``[N]`` int32 cluster of each training example (the
      index's, copied at each refresh).
    example_loss: ``[N]`` last cached loss of each example.
    example_seen: ``[N]`` bool, the example has a cached loss.
    sigma2_avg: running (EMA) sum of the batch estimates σ̂², not yet divided
      by ``sigma2_weight`` (bias correction).
    sigma2_weight: total EMA weight; 0 before the first step.
  """
  assignments: Any
  example_loss: Any
  example_seen: Any
  sigma2_avg: Any
  sigma2_weight: Any


def running_sigma2(cache: LossCache, index: ClusterIndex) -> float:
  """σ² of eq. 6: the bias-corrected running average of the batch σ̂², or
  eq. 4's whole-set variance before any step was taken."""
  weight = float(cache.sigma2_weight)
  if weight > 0:
    return float(cache.sigma2_avg) / weight
  return float(index.index_sigma2)


class NeighbourhoodSampler:
  """Magnet batches: M clusters (a seed and its M−1 nearest impostors) × D.

  ``batch(step, index)`` is a pure function of ``(seed, step, index)``;
  ``index`` is the current host :class:`ClusterIndex`.
  """

  def __init__(self, num_examples: int, M: int, D: int, seed: int = 0,  # pylint: disable=invalid-name
               steps_per_epoch: Optional[int] = None):
    if num_examples < 1 or M < 2 or D < 1:
      raise ValueError(f"NeighbourhoodSampler needs data, M >= 2 and D >= 1; "
                       f"got num_examples={num_examples}, M={M}, D={D}.")
    self.M, self.D, self.seed = M, D, int(seed)  # pylint: disable=invalid-name
    self.batch_size = M * D
    self.steps_per_epoch = int(steps_per_epoch or
                               -(-num_examples // self.batch_size))

  def _rng(self, step: int) -> np.random.Generator:
    epoch, within = divmod(int(step), self.steps_per_epoch)
    return np.random.default_rng([self.seed, epoch, within])

  def clusters(self, step: int, index: ClusterIndex,
               rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The M cluster ids of a batch: the seed first, then its impostors."""
    rng = rng or self._rng(step)
    p = seed_probabilities(index)
    seed_cluster = int(rng.choice(len(p), p=p))
    return np.concatenate([[seed_cluster],
                           nearest_impostors(index, seed_cluster, self.M - 1)])

  def batch(self, step: int, index: ClusterIndex) -> np.ndarray:
    """Training rows ``[M*D]``: D uniform draws from each cluster, cluster by
    cluster (with replacement only for clusters of fewer than D examples)."""
    rng = self._rng(step)
    members = np.asarray(index.members)
    starts = np.asarray(index.member_start)
    counts = np.asarray(index.member_count)
    rows = []
    for cluster in self.clusters(step, index, rng):
      count = int(counts[cluster])
      pick = rng.choice(count, self.D, replace=count < self.D)
      rows.append(members[starts[cluster] + pick])
    return np.concatenate(rows).astype(np.int32)


# ----------------------------------------------------------------------------
# The method's functions
# ----------------------------------------------------------------------------


def init_state(cfg: Config, info: base.ModelInfo) -> base.MethodState:
  """An empty index and loss cache of the final shapes."""
  n = info.num_train
  cache = LossCache(assignments=np.zeros((n,), np.int32),
                    example_loss=np.zeros((n,), np.float32),
                    example_seen=np.zeros((n,), bool),
                    sigma2_avg=np.asarray(0.0, np.float32),
                    sigma2_weight=np.asarray(0.0, np.float32))
  index = empty_index(n, info.num_classes, cfg.K, info.embedding_dim)
  return base.MethodState(device=cache, host=index)


def refresh(cfg: Config, ctx: base.HostContext,
            state: base.MethodState) -> base.MethodState:
  """Re-clusters every class of the current training embeddings (section
  3.2) and keeps the cached losses and the σ² running average."""
  index = build_cluster_index(ctx.embed("embedding"), ctx.train.labels,
                              ctx.train.num_classes, cfg.K, seed=ctx.seed,
                              niter=cfg.kmeans_iters)
  cache = jax.tree_util.tree_map(np.asarray, state.device)
  cache = cache.replace(assignments=np.asarray(index.assignments, np.int32))
  index = sync(cfg, index, cache)
  ctx.log(f"magnet refresh (epoch {ctx.epoch}): {int(np.sum(index.valid))} "
          f"clusters, sigma2 index={float(index.index_sigma2):.4g} "
          f"running={running_sigma2(cache, index):.4g}")
  return base.MethodState(device=cache, host=index)


def refresh_every(cfg: Config) -> int:
  return cfg.refresh_every


def loss(cfg: Config, params, outputs, batch, state: LossCache, rng):
  """Eq. 5 on the batch, its clusters looked up in the device cache."""
  del params, rng
  cluster_ids = jnp.asarray(state.assignments)[batch["index"]]
  return losses.magnet_loss(
      outputs["embedding"], batch["labels"], cluster_ids, alpha=cfg.alpha,
      variance_standardise=cfg.variance_standardise,
      leave_one_out_means=cfg.leave_one_out_means)


def update_state(cfg: Config, cache: LossCache, aux: dict,
                 batch: dict) -> LossCache:
  """Caches the batch's per-example losses (section 3.2) and its σ̂² into the
  running average of eq. 6, on the device."""
  rows = batch["index"]
  n = cache.example_loss.shape[0]
  total = jnp.zeros((n,), jnp.float32).at[rows].add(aux["per_example_loss"])
  count = jnp.zeros((n,), jnp.float32).at[rows].add(1.0)
  hit = count > 0
  m = cfg.sigma_momentum
  return cache.replace(
      example_loss=jnp.where(hit, total / jnp.maximum(count, 1.0),
                             cache.example_loss),
      example_seen=cache.example_seen | hit,
      sigma2_avg=m * cache.sigma2_avg + (1.0 - m) * aux["sigma2"],
      sigma2_weight=m * cache.sigma2_weight + (1.0 - m))


def sync(cfg: Config, index: ClusterIndex, cache: LossCache) -> ClusterIndex:
  """ℒ_I of every cluster from a host copy of the loss cache."""
  del cfg
  return index.replace(
      cluster_loss=cluster_mean_loss(np.asarray(index.assignments),
                                     np.asarray(cache.example_loss),
                                     np.asarray(cache.example_seen),
                                     np.asarray(index.valid)),
      loss_seen=np.asarray(bool(np.asarray(cache.example_seen).any())))


def sync_every(cfg: Config) -> int:
  return cfg.sync_every


def epoch_length(cfg: Config, config: Any, train) -> int:
  """⌈N / (M·D)⌉ neighbourhoods, or ``config.method.steps_per_epoch``."""
  del config
  return int(cfg.steps_per_epoch or -(-len(train) // (cfg.M * cfg.D)))


def samplers(cfg: Config, ctx: base.HostContext,
             state: base.MethodState) -> dict:
  """The neighbourhood sampler (after checking M−1 impostors exist)."""
  index = state.host
  valid = np.asarray(index.valid, bool)
  per_class = np.bincount(np.asarray(index.cluster_class)[valid],
                          minlength=ctx.train.num_classes)
  fewest = int(valid.sum() - per_class.max()) if valid.any() else 0
  if fewest < cfg.M - 1:
    raise ValueError(
        f"magnet: config.method.M={cfg.M} needs M-1={cfg.M - 1} impostor "
        f"clusters for every class, but some class has only {fewest} "
        f"({int(valid.sum())} valid clusters in all); lower M, or raise K if "
        "the classes have more than K examples (a class smaller than K has one "
        "cluster per example).")
  seed = base.host_seed(ctx.config.seed, 0)
  return {"train": NeighbourhoodSampler(
      len(ctx.train), cfg.M, cfg.D, seed=seed,
      steps_per_epoch=epoch_length(cfg, ctx.config, ctx.train))}


def evaluate_classifier(ctx: base.EvalContext) -> dict:
  """kNC (eq. 6) and soft kNN accuracy on a classification split (an
  evaluator). The index is rebuilt from the evaluated weights."""
  cfg = ctx.method_config
  train_embeddings = np.asarray(ctx.embed("embedding"), np.float32)
  index = build_cluster_index(train_embeddings, ctx.train.labels,
                              ctx.train.num_classes, cfg.K, seed=ctx.seed,
                              niter=cfg.kmeans_iters)
  sigma2 = running_sigma2(ctx.state.device, index)
  test_embeddings = ctx.test_features["embedding"]
  labels = np.asarray(ctx.test.labels)
  num_classes = ctx.train.num_classes
  knc = knc_predict(test_embeddings, index, sigma2, cfg.L, num_classes)
  knn = knn_predict(test_embeddings, train_embeddings, ctx.train.labels,
                    sigma2, cfg.knn_k or cfg.L, num_classes)
  return {"knc_accuracy": float(np.mean(knc == labels)),
          "knn_accuracy": float(np.mean(knn == labels))}


METHOD = base.Method(
    name="magnet", Config=Config, loss=loss, init_state=init_state,
    refresh=refresh, refresh_every=refresh_every, update_state=update_state,
    samplers=samplers, sync=sync, sync_every=sync_every,
    epoch_length=epoch_length, evaluators=("magnet_classifier",))
