"""k-means on host embeddings: k-means++ seeding and Lloyd's iterations with
``faiss.Kmeans`` (CPU or GPU), the final assignment by batched search."""
from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

from dmlx.index.common import (UseGpu, _as_matrix, _check_choice,
                               _check_positive, _resolve_gpu)
from dmlx.index.search import knn


def kmeans_plus_plus(x: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
  """k-means++ seeding (Arthur & Vassilvitskii, 2007).

  The first centre is a uniformly drawn point; each next centre is drawn with
  probability ``D(x)^2 / sum_x D(x)^2``, ``D(x)`` the distance of x to its
  nearest chosen centre. ``D^2`` is kept as one ``[N]`` vector and updated
  with one matrix-vector product per new centre, ``||x||^2 - 2 x.c +
  ||c||^2``: O(N k D) time, O(N + k D) memory, never N x N. When every
  remaining ``D^2`` is zero (duplicate points) the centre is drawn uniformly
  among points not yet chosen.

  Args:
    x: ``[N, D]`` float array.
    k: number of centres, ``1 <= k <= N``.
    seed: numpy random seed.

  Returns:
    ``[k, D]`` float32 initial centroids (rows of ``x``).
  """
  x = _as_matrix(x, "x")
  n = x.shape[0]
  _check_positive(k, "k")
  if k > n:
    raise ValueError(f"k-means++ needs k <= N, got k={k} for N={n} points.")
  rng = np.random.default_rng(seed)
  sq_norms = np.einsum("nd,nd->n", x, x, dtype=np.float64)
  chosen = np.zeros(n, bool)
  ids = np.empty(k, np.int64)
  d2 = np.full(n, np.inf)
  next_id = int(rng.integers(n))
  for j in range(k):
    ids[j] = next_id
    chosen[next_id] = True
    c = x[next_id]
    dist = sq_norms - 2.0 * (x @ c).astype(np.float64) + sq_norms[next_id]
    np.minimum(d2, np.maximum(dist, 0.0), out=d2)
    d2[chosen] = 0.0
    if j + 1 == k:
      break
    total = d2.sum()
    if total > 0:
      cumulative = np.cumsum(d2)
      next_id = int(np.searchsorted(cumulative, rng.random() * cumulative[-1],
                                    side="right"))
      next_id = min(next_id, n - 1)
      if chosen[next_id]:  # float round-off landed on a zero-mass point
        next_id = int(np.flatnonzero(d2 > 0)[-1])
    else:
      next_id = int(rng.choice(np.flatnonzero(~chosen)))
  return x[ids].copy()


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    nredo: int = 1,
    spherical: bool = False,
    init: Literal["kmeans++", "random"] = "kmeans++",
    use_gpu: UseGpu = "auto",
    batch_size: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
  """Lloyd's k-means with ``faiss.Kmeans`` on all N points.

  Minimises ``sum_i ||x_i - mu_{a_i}||^2`` (spherical: centroids renormalised
  to unit length and points assigned by inner product). ``init='kmeans++'``
  seeds with :func:`kmeans_plus_plus` and passes the seeds to faiss as
  ``init_centroids``; ``'random'`` is faiss's own seeding (k distinct random
  points). ``nredo`` runs are made with seeds ``seed, seed + 1, ...`` and the
  one with the best final objective is kept. ``k == N`` returns the points
  themselves (every point its own cluster, objective 0).

  Args:
    x: ``[N, D]`` float array.
    k: number of clusters, ``1 <= k <= N``.
    niter: Lloyd iterations.
    seed: random seed.
    nredo: restarts; the best objective is kept.
    spherical: unit-norm centroids, inner-product assignment.
    init: ``'kmeans++'`` or ``'random'``.
    use_gpu: ``'auto'``, ``True`` or ``False``.
    batch_size: queries per batch of the final assignment search.

  Returns:
    ``(centroids [k, D] float32, assignments [N] int64)``.
  """
  x = _as_matrix(x, "x")
  n, d = x.shape
  _check_positive(k, "k")
  _check_positive(niter, "niter")
  _check_positive(nredo, "nredo")
  _check_choice(init, ("kmeans++", "random"), "init")
  if k > n:
    raise ValueError(f"kmeans needs k <= N, got k={k} clusters for N={n} "
                     "points.")
  gpu = _resolve_gpu(use_gpu)
  if k == n:
    centroids = x.copy()
    if spherical:
      centroids /= np.maximum(
          np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids, np.arange(n, dtype=np.int64)
  best_obj, best_centroids = None, None
  for redo in range(nredo):
    km = faiss.Kmeans(
        d, int(k), niter=int(niter), nredo=1, seed=int(seed + redo),
        spherical=bool(spherical), verbose=False, gpu=bool(gpu),
        min_points_per_centroid=1, max_points_per_centroid=max(1, n // k + 1))
    init_centroids = (kmeans_plus_plus(x, k, seed=seed + redo)
                      if init == "kmeans++" else None)
    km.train(x, init_centroids=init_centroids)
    obj = float(km.obj[-1])
    better = (best_obj is None or
              (obj > best_obj if spherical else obj < best_obj))
    if better:
      best_obj, best_centroids = obj, np.array(km.centroids, np.float32)
  _, assignments = knn(x, best_centroids, 1,
                       metric="ip" if spherical else "l2",
                       batch_size=batch_size, use_gpu=use_gpu)
  return best_centroids, assignments[:, 0]
