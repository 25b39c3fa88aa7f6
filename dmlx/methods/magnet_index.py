"""Magnet's cluster index and classifiers: the host half of Magnet.

Rippel, Paluri, Dollár & Bourdev, "Metric learning with adaptive density
discrimination", ICLR 2016. Section 3.2, component #2: each class's
representations are split into K clusters by K-means (k-means++ seeding,
FAISS), giving the :class:`ClusterIndex` that neighbourhood sampling reads
(:func:`seed_probabilities`, :func:`nearest_impostors`). Section 3.3: the
k-nearest-cluster classifier (eq. 6, :func:`knc_predict`) and the soft kNN
baseline (:func:`knn_predict`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import faiss
import flax
import numpy as np

from dmlx.index import faiss_ops


@flax.struct.dataclass
class ClusterIndex:
  """Magnet's per-class K-means index (section 3.2), padded to C·K clusters.

  Cluster ``c * K + k`` is the k-th cluster of class c. Host state: the
  jitted step reads only the assignments and the loss cache
  (:class:`dmlx.methods.magnet.LossCache`).

  Attributes:
    means: ``[C*K, D]`` cluster means μ_k^c (eq. 3); zero where not valid.
    cluster_class: ``[C*K]`` class of each cluster.
    valid: ``[C*K]`` bool, the cluster exists (has at least one example).
    assignments: ``[N]`` cluster of each training example.
    members: ``[N]`` training rows sorted by cluster; cluster j's examples are
      ``members[member_start[j]:member_start[j] + member_count[j]]``.
    member_start: ``[C*K]`` offset of each cluster in ``members``.
    member_count: ``[C*K]`` examples per cluster.
    cluster_loss: ``[C*K]`` mean cached loss ℒ_I of each cluster, as of the
      last synchronisation with the device's loss cache.
    loss_seen: ``[]`` bool, some example had a cached loss at that time.
    index_sigma2: σ² of eq. 4 over the whole training set at the last
      refresh.
  """
  means: Any
  cluster_class: Any
  valid: Any
  assignments: Any
  members: Any
  member_start: Any
  member_count: Any
  cluster_loss: Any
  loss_seen: Any
  index_sigma2: Any


def empty_index(num_train: int, num_classes: int, K: int,
                dim: int) -> ClusterIndex:
  """An all-zero index of the final shapes (a checkpoint template)."""
  c = num_classes * K
  return ClusterIndex(
      means=np.zeros((c, dim), np.float32),
      cluster_class=(np.arange(c) // K).astype(np.int32),
      valid=np.zeros((c,), bool), assignments=np.zeros((num_train,), np.int32),
      members=np.zeros((num_train,), np.int32),
      member_start=np.zeros((c,), np.int32),
      member_count=np.zeros((c,), np.int32),
      cluster_loss=np.zeros((c,), np.float32), loss_seen=np.asarray(False),
      index_sigma2=np.asarray(0.0, np.float32))


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
      cluster_loss=np.zeros(num_clusters, np.float32),
      loss_seen=np.asarray(False),
      index_sigma2=np.asarray(index_sigma2, np.float32))


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


def seed_probabilities(index: ClusterIndex) -> np.ndarray:
  """p_I(I) ∝ ℒ_I over valid clusters; uniform before any loss is cached or
  when every cached loss is zero."""
  valid = np.asarray(index.valid, bool)
  weights = np.where(valid, np.asarray(index.cluster_loss, np.float64), 0.0)
  if not bool(index.loss_seen) or weights.sum() <= 0:
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


