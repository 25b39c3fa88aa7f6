"""Magnet loss as a dmlx method (Rippel et al., 2016): cluster index, sampler,
kNC evaluation.

Host side, between epochs, the whole training set is embedded with the current
weights and each class is split into K clusters by K-means (k-means++ seeding,
FAISS): the :class:`ClusterIndex` (section 3.2, component #2). Each training
step draws a *neighbourhood* (section 3.2, component #1): a seed cluster with
probability proportional to its cached mean loss, its M−1 nearest impostor
clusters, D examples of each. The jitted loss is eq. 5
(:func:`dmlx.losses._magnet.magnet_loss`); after each step the per-example
losses are cached back into the index. Evaluation is the k-nearest-cluster
classifier of eq. 6 with σ² the running average of the batch estimates σ̂².

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
  average, bias-corrected), ``kmeans_iters=20``, ``knn_k=None`` (neighbours of
  the soft kNN evaluation, default L), ``steps_per_epoch=None`` (default
  ⌈N / (M·D)⌉); for these two, 0 also means the default (config files use 0,
  so the field keeps an int type that ``--config.method.knn_k=...`` accepts).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Optional

import faiss
import flax
import jax.numpy as jnp
import numpy as np

from dmlx.index import faiss_ops
from dmlx.losses._magnet import magnet_loss
from dmlx.methods.base import HostContext, Method


@flax.struct.dataclass
class ClusterIndex:
  """Magnet's per-class K-means index (section 3.2), padded to C·K clusters.

  Cluster ``c * K + k`` is the k-th cluster of class c.

  Attributes:
    means: ``[C*K, D]`` cluster means μ_k^c (eq. 3); zero where not valid.
    cluster_class: ``[C*K]`` class of each cluster.
    valid: ``[C*K]`` bool, the cluster exists (has at least one example).
    assignments: ``[N]`` cluster of each training example.
    members: ``[N]`` training rows sorted by cluster; cluster j's examples are
      ``members[member_start[j]:member_start[j] + member_count[j]]``.
    member_start: ``[C*K]`` offset of each cluster in ``members``.
    member_count: ``[C*K]`` examples per cluster.
    example_loss: ``[N]`` last cached loss of each example.
    example_seen: ``[N]`` bool, the example has a cached loss.
    cluster_loss: ``[C*K]`` mean cached loss ℒ_I of each cluster.
    sigma2_avg: running (EMA) sum of the batch estimates σ̂², not yet divided
      by ``sigma2_weight`` (bias correction).
    sigma2_weight: total EMA weight; 0 before the first step.
    index_sigma2: σ² of eq. 4 over the whole training set at the last refresh.
  """
  means: Any
  cluster_class: Any
  valid: Any
  assignments: Any
  members: Any
  member_start: Any
  member_count: Any
  example_loss: Any
  example_seen: Any
  cluster_loss: Any
  sigma2_avg: Any
  sigma2_weight: Any
  index_sigma2: Any


@dataclasses.dataclass(frozen=True)
class MagnetOptions:
  """``config.method`` settings (see the module docstring)."""
  M: int = 12
  D: int = 4
  K: int = 8
  alpha: float = 1.0
  refresh_every: int = 1
  L: int = 128
  variance_standardise: bool = True
  leave_one_out_means: bool = False
  sigma_momentum: float = 0.99
  kmeans_iters: int = 20
  knn_k: Optional[int] = None
  steps_per_epoch: Optional[int] = None

  def __post_init__(self):
    for name in ("M", "D", "K", "refresh_every", "L", "kmeans_iters"):
      value = getattr(self, name)
      if int(value) != value or value < 1:
        raise ValueError(f"magnet: config.method.{name} must be a positive "
                         f"integer, got {value!r}.")
    if self.M < 2:
      raise ValueError(f"magnet: config.method.M must be >= 2 (a seed "
                       f"cluster and at least one impostor), got {self.M}.")
    if not 0.0 <= self.sigma_momentum < 1.0:
      raise ValueError(f"magnet: config.method.sigma_momentum must be in "
                       f"[0, 1), got {self.sigma_momentum!r}.")
    for name in ("knn_k", "steps_per_epoch"):
      value = getattr(self, name)
      if value is not None and (int(value) != value or value < 0):
        raise ValueError(f"magnet: config.method.{name} must be a positive "
                         f"integer, or 0 / None for the default, got "
                         f"{value!r}.")

  @classmethod
  def from_config(cls, config: Any) -> "MagnetOptions":
    """Reads the fields of ``config.method`` that this class names."""
    method = config.get("method", None) if hasattr(config, "get") else None
    method = method if method is not None else {}
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: method[n] for n in names if n in method})


# ----------------------------------------------------------------------------
# Cluster index (section 3.2, component #2)
# ----------------------------------------------------------------------------


def build_cluster_index(embeddings: np.ndarray, labels: np.ndarray,
                        num_classes: int, K: int, *, seed: int = 0,
                        niter: int = 20) -> ClusterIndex:
  """K-means (eq. 2–3) of each class's representations into at most K clusters.

  Classes with n_c ≤ K examples get one cluster per example; clusters that
  end up empty are marked not valid. Means are recomputed from the final
  assignments (eq. 3). Losses are empty and σ² statistics reset; use
  :func:`carry_over` to keep them across a refresh.
  """
  embeddings = np.asarray(embeddings, np.float32)
  labels = np.asarray(labels)
  n, dim = embeddings.shape
  if labels.shape != (n,):
    raise ValueError(f"build_cluster_index: labels shape {labels.shape} does "
                     f"not match {n} embeddings.")
  if n and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"build_cluster_index: label {int(labels.max())} out of "
                     f"range for num_classes={num_classes}.")
  assignments = np.zeros(n, np.int64)
  with _single_thread_faiss():
    for c in range(num_classes):
      rows = np.flatnonzero(labels == c)
      k = min(K, len(rows))
      if k == 0:
        continue
      if k == len(rows):
        local = np.arange(k)
      elif k == 1:
        local = np.zeros(len(rows), np.int64)
      else:
        _, local = faiss_ops.kmeans(embeddings[rows], k, niter=niter,
                                    seed=seed + c, init="kmeans++")
      assignments[rows] = c * K + local
  num_clusters = num_classes * K
  counts = np.bincount(assignments, minlength=num_clusters)
  sums = np.zeros((num_clusters, dim), np.float64)
  np.add.at(sums, assignments, embeddings)
  means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
  residual = embeddings - means[assignments]
  index_sigma2 = float(np.sum(residual.astype(np.float64) ** 2)) / max(n - 1, 1)
  members = np.argsort(assignments, kind="stable").astype(np.int32)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return ClusterIndex(
      means=means,
      cluster_class=(np.arange(num_clusters) // K).astype(np.int32),
      valid=counts > 0,
      assignments=assignments.astype(np.int32),
      members=members,
      member_start=starts.astype(np.int32),
      member_count=counts.astype(np.int32),
      example_loss=np.zeros(n, np.float32),
      example_seen=np.zeros(n, bool),
      cluster_loss=np.zeros(num_clusters, np.float32),
      sigma2_avg=np.float32(0.0),
      sigma2_weight=np.float32(0.0),
      index_sigma2=np.float32(index_sigma2))


@contextlib.contextmanager
def _single_thread_faiss() -> Iterator[None]:
  """Runs FAISS on one OpenMP thread inside the block.

  One class's K-means is tiny (tens to hundreds of points), and on a busy
  machine OpenMP's spin-waiting threads made the C per-class calls of a
  refresh ~40× slower (8.6 s vs 0.2 s for 30 classes × 45 points on 2 shared
  cores; ``OMP_WAIT_POLICY=PASSIVE`` removes it as well).
  """
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  try:
    yield
  finally:
    faiss.omp_set_num_threads(threads)


def cluster_mean_loss(assignments: np.ndarray, example_loss: np.ndarray,
                      example_seen: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Mean cached loss ℒ_I of each cluster (section 3.2, p_I(I) ∝ ℒ_I).

  Only examples with a cached loss count. A valid cluster none of whose
  examples has been seen gets the mean cached loss of all seen examples (a
  dmlx choice: the paper leaves it open), so it can still be drawn.
  """
  seen = np.asarray(example_seen, bool)
  num_clusters = len(valid)
  losses = np.where(seen, example_loss, 0.0).astype(np.float64)
  sums = np.bincount(assignments, weights=losses, minlength=num_clusters)
  counts = np.bincount(assignments, weights=seen, minlength=num_clusters)
  fill = losses[seen].mean() if seen.any() else 0.0
  mean = np.where(counts > 0, sums / np.maximum(counts, 1), fill)
  return np.where(valid, mean, 0.0).astype(np.float32)


def carry_over(new: ClusterIndex, old: Optional[ClusterIndex]) -> ClusterIndex:
  """Keeps ``old``'s cached losses and σ² running average in a refreshed index."""
  if old is None:
    return new
  loss = np.asarray(old.example_loss, np.float32)
  seen = np.asarray(old.example_seen, bool)
  return new.replace(
      example_loss=loss, example_seen=seen,
      cluster_loss=cluster_mean_loss(np.asarray(new.assignments), loss, seen,
                                     np.asarray(new.valid)),
      sigma2_avg=np.float32(old.sigma2_avg),
      sigma2_weight=np.float32(old.sigma2_weight))


def cache_losses(index: ClusterIndex, rows: np.ndarray, losses: np.ndarray,
                 sigma2: float, momentum: float = 0.99) -> ClusterIndex:
  """Caches a step's per-example losses and its σ̂² into the index (section 3.2).

  Args:
    index: the current cluster index.
    rows: ``[B]`` training rows of the batch (repeats allowed).
    losses: ``[B]`` their per-example losses.
    sigma2: the batch's variance estimate σ̂².
    momentum: EMA momentum of the σ² running average (eq. 6).

  Returns:
    A new index with updated ``example_loss``, ``example_seen``,
    ``cluster_loss`` and σ² running average; all shapes unchanged.
  """
  rows = np.asarray(rows).reshape(-1)
  losses = np.asarray(losses, np.float32).reshape(-1)
  if rows.shape != losses.shape:
    raise ValueError(f"cache_losses: {rows.shape[0]} rows but "
                     f"{losses.shape[0]} losses.")
  example_loss = np.array(index.example_loss, np.float32)
  example_seen = np.array(index.example_seen, bool)
  example_loss[rows] = losses
  example_seen[rows] = True
  cluster_loss = cluster_mean_loss(np.asarray(index.assignments), example_loss,
                                   example_seen, np.asarray(index.valid))
  return index.replace(
      example_loss=example_loss, example_seen=example_seen,
      cluster_loss=cluster_loss,
      sigma2_avg=np.float32(momentum * float(index.sigma2_avg) +
                            (1.0 - momentum) * float(sigma2)),
      sigma2_weight=np.float32(momentum * float(index.sigma2_weight) +
                               (1.0 - momentum)))


def running_sigma2(index: ClusterIndex) -> float:
  """σ² of eq. 6: the bias-corrected running average of the batch σ̂²,
  or eq. 4's whole-set variance before any step was taken."""
  weight = float(index.sigma2_weight)
  if weight > 0:
    return float(index.sigma2_avg) / weight
  return float(index.index_sigma2)


# ----------------------------------------------------------------------------
# Neighbourhood sampling (section 3.2, component #1)
# ----------------------------------------------------------------------------


def seed_probabilities(index: ClusterIndex) -> np.ndarray:
  """p_I(I) ∝ ℒ_I over valid clusters; uniform before any loss is cached or
  when every cached loss is zero."""
  valid = np.asarray(index.valid, bool)
  weights = np.where(valid, np.asarray(index.cluster_loss, np.float64), 0.0)
  if not np.asarray(index.example_seen).any() or weights.sum() <= 0:
    weights = valid.astype(np.float64)
  return weights / weights.sum()


def nearest_impostors(index: ClusterIndex, seed_cluster: int,
                      num: int) -> np.ndarray:
  """The ``num`` valid clusters of other classes whose means are nearest to
  the seed cluster's mean (exact search: C·K is small)."""
  means = np.asarray(index.means, np.float32)
  classes = np.asarray(index.cluster_class)
  candidates = np.flatnonzero(np.asarray(index.valid, bool) &
                              (classes != classes[seed_cluster]))
  if len(candidates) < num:
    raise ValueError(f"magnet: cluster {seed_cluster} has only "
                     f"{len(candidates)} impostor clusters, M-1={num} needed.")
  diff = means[candidates] - means[seed_cluster]
  dist = np.einsum("kd,kd->k", diff, diff)
  order = np.argsort(dist, kind="stable")[:num]
  return candidates[order]


class NeighbourhoodSampler:
  """Magnet batches: M clusters (a seed and its M−1 nearest impostors) × D.

  ``batch(epoch, step, state)`` is a pure function of ``(seed, epoch, step,
  state)``; ``state`` is the current :class:`ClusterIndex`.
  """

  def __init__(self, num_examples: int, M: int, D: int, seed: int = 0,
               steps_per_epoch: Optional[int] = None):
    if num_examples < 1 or M < 2 or D < 1:
      raise ValueError(f"NeighbourhoodSampler needs data, M >= 2 and D >= 1; "
                       f"got num_examples={num_examples}, M={M}, D={D}.")
    self.M, self.D, self.seed = M, D, int(seed)
    self.batch_size = M * D
    self.steps_per_epoch = int(steps_per_epoch or
                               -(-num_examples // self.batch_size))

  def clusters(self, epoch: int, step: int, state: ClusterIndex,
               rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The M cluster ids of a batch: the seed first, then its impostors."""
    rng = rng or np.random.default_rng([self.seed, epoch, step])
    p = seed_probabilities(state)
    seed_cluster = int(rng.choice(len(p), p=p))
    return np.concatenate([[seed_cluster],
                           nearest_impostors(state, seed_cluster, self.M - 1)])

  def batch(self, epoch: int, step: int, state: ClusterIndex) -> np.ndarray:
    """Training rows ``[M*D]``: D uniform draws from each cluster, cluster by
    cluster (with replacement only for clusters of fewer than D examples)."""
    rng = np.random.default_rng([self.seed, epoch, step])
    members = np.asarray(state.members)
    starts = np.asarray(state.member_start)
    counts = np.asarray(state.member_count)
    rows = []
    for cluster in self.clusters(epoch, step, state, rng):
      count = int(counts[cluster])
      pick = rng.choice(count, self.D, replace=count < self.D)
      rows.append(members[starts[cluster] + pick])
    return np.concatenate(rows).astype(np.int32)


# ----------------------------------------------------------------------------
# Evaluation (section 3.3)
# ----------------------------------------------------------------------------


def soft_vote(distances: np.ndarray, neighbour_classes: np.ndarray,
              sigma2: float, num_classes: int) -> np.ndarray:
  """Eq. 6's class choice: argmax_c Σ_{l: C(μ_l)=c} exp(−‖r−μ_l‖²/2σ²).

  Args:
    distances: ``[Q, L]`` squared distances to the L nearest clusters
      (or examples); ``+inf`` for missing neighbours.
    neighbour_classes: ``[Q, L]`` their classes (``-1`` for missing).
    sigma2: the variance σ².
    num_classes: C.

  Returns:
    ``[Q]`` predicted classes. The normaliser of eq. 6 is the same for every
    class and is dropped; distances are shifted by each row's minimum.
  """
  distances = np.asarray(distances, np.float64)
  present = (neighbour_classes >= 0) & np.isfinite(distances)
  nearest = np.min(np.where(present, distances, np.inf), axis=1, keepdims=True)
  nearest = np.where(np.isfinite(nearest), nearest, 0.0)
  shifted = np.where(present, distances - nearest, 0.0)
  weights = np.where(present, np.exp(-shifted / (2.0 * max(sigma2, 1e-12))),
                     0.0)
  num_queries = len(distances)
  flat = (np.arange(num_queries)[:, None] * num_classes +
          np.where(present, neighbour_classes, 0))
  scores = np.bincount(flat.ravel(), weights=weights.ravel(),
                       minlength=num_queries * num_classes)
  return np.argmax(scores.reshape(num_queries, num_classes), axis=1)


def knc_predict(queries: np.ndarray, index: ClusterIndex, sigma2: float, L: int,
                num_classes: int) -> np.ndarray:
  """k-nearest-cluster classification (eq. 6) with the L nearest valid clusters."""
  valid = np.flatnonzero(np.asarray(index.valid, bool))
  means = np.asarray(index.means, np.float32)[valid]
  classes = np.asarray(index.cluster_class)[valid]
  dist, idx = faiss_ops.knn(np.asarray(queries, np.float32), means,
                            min(L, len(valid)))
  neighbour_classes = np.where(idx >= 0, classes[np.maximum(idx, 0)], -1)
  return soft_vote(dist, neighbour_classes, sigma2, num_classes)


def knn_predict(queries: np.ndarray, train_embeddings: np.ndarray,
                train_labels: np.ndarray, sigma2: float, k: int,
                num_classes: int) -> np.ndarray:
  """Soft kNN (the paper's kNN baseline, Fig. 4e): eq. 6 over the k nearest
  training examples instead of clusters."""
  dist, idx = faiss_ops.knn(np.asarray(queries, np.float32),
                            np.asarray(train_embeddings, np.float32),
                            min(k, len(train_embeddings)))
  labels = np.asarray(train_labels)
  neighbour_classes = np.where(idx >= 0, labels[np.maximum(idx, 0)], -1)
  return soft_vote(dist, neighbour_classes, sigma2, num_classes)


# ----------------------------------------------------------------------------
# The Method
# ----------------------------------------------------------------------------


def make(config: Any) -> Method:
  """Magnet loss (Rippel et al., 2016) as a :class:`~dmlx.methods.base.Method`."""
  opts = MagnetOptions.from_config(config)

  def _index(ctx: HostContext) -> ClusterIndex:
    return build_cluster_index(
        ctx.embed("embedding"), ctx.train.labels, ctx.train.num_classes,
        opts.K, seed=ctx.seed, niter=opts.kmeans_iters)

  def init_state(ctx: HostContext) -> ClusterIndex:
    index = _index(ctx)
    ctx.log(f"magnet: {int(np.sum(index.valid))} clusters, "
            f"sigma2={float(index.index_sigma2):.4g}")
    return index

  def refresh(ctx: HostContext, state: ClusterIndex) -> ClusterIndex:
    index = carry_over(_index(ctx), state)
    ctx.log(f"magnet refresh: sigma2 index={float(index.index_sigma2):.4g} "
            f"running={running_sigma2(index):.4g}")
    return index

  def loss(params, outputs, batch, state: ClusterIndex, rng):
    del params, rng
    cluster_ids = jnp.asarray(state.assignments)[batch["index"]]
    value, aux = magnet_loss(
        outputs["embedding"], batch["labels"], cluster_ids, alpha=opts.alpha,
        variance_standardise=opts.variance_standardise,
        leave_one_out_means=opts.leave_one_out_means)
    # The trainer logs scalar aux entries and hands only the array entries to
    # after_step, so σ̂² also travels as a [1] array for eq. 6's running mean.
    return value, {**aux, "sigma2_batch": jnp.reshape(aux["sigma2"], (1,))}

  def after_step(state: ClusterIndex, aux: dict, batch: dict) -> ClusterIndex:
    sigma2 = aux["sigma2_batch"] if "sigma2_batch" in aux else aux["sigma2"]
    return cache_losses(state, np.asarray(batch["index"]),
                        np.asarray(aux["per_example_loss"]),
                        float(np.reshape(np.asarray(sigma2), -1)[0]),
                        opts.sigma_momentum)

  def make_sampler(ctx: HostContext, state: ClusterIndex) -> NeighbourhoodSampler:
    valid = np.asarray(state.valid, bool)
    per_class = np.bincount(np.asarray(state.cluster_class)[valid],
                            minlength=ctx.train.num_classes)
    fewest = int(valid.sum() - per_class.max()) if valid.any() else 0
    if fewest < opts.M - 1:
      raise ValueError(
          f"magnet: config.method.M={opts.M} needs M-1={opts.M - 1} impostor "
          f"clusters for every class, but some class has only {fewest}; "
          "lower M or raise K.")
    return NeighbourhoodSampler(len(ctx.train), opts.M, opts.D, seed=ctx.seed,
                                steps_per_epoch=opts.steps_per_epoch)

  def evaluate(ctx: HostContext, state: ClusterIndex, test_dataset,
               test_embeddings: np.ndarray) -> dict:
    """kNC (eq. 6) and soft kNN accuracy on a classification split; {} on a
    zero-shot split. The index is rebuilt from the final weights."""
    if tuple(test_dataset.class_names) != tuple(ctx.train.class_names):
      return {}
    train_embeddings = np.asarray(ctx.embed("embedding"), np.float32)
    index = build_cluster_index(train_embeddings, ctx.train.labels,
                                ctx.train.num_classes, opts.K, seed=ctx.seed,
                                niter=opts.kmeans_iters)
    sigma2 = running_sigma2(state)
    labels = np.asarray(test_dataset.labels)
    num_classes = ctx.train.num_classes
    knc = knc_predict(test_embeddings, index, sigma2, opts.L, num_classes)
    knn = knn_predict(test_embeddings, train_embeddings, ctx.train.labels,
                      sigma2, opts.knn_k or opts.L, num_classes)
    return {"knc_accuracy": float(np.mean(knc == labels)),
            "knn_accuracy": float(np.mean(knn == labels))}

  return Method(name="magnet", loss=loss, init_state=init_state,
                refresh=refresh, refresh_every=opts.refresh_every,
                after_step=after_step, make_sampler=make_sampler,
                evaluate=evaluate)
