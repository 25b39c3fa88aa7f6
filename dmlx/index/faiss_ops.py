"""Host-side FAISS helpers: k-nearest-neighbour search and k-means.

These run between epochs on numpy float32 arrays (embeddings gathered from
the devices) and build the immutable method state of NNGK, Magnet and MIC and
the evaluation metrics of ``dmlx.eval``. Every search is done in query
batches, so memory stays O(batch_size * k) besides the index itself: no
function here ever builds an N x N distance matrix.

The same code path runs on GPU when faiss reports GPUs
(``faiss.get_num_gpus() > 0``, a ``faiss-gpu`` build): flat and IVF indexes
are moved with ``faiss.index_cpu_to_all_gpus`` and k-means uses
``faiss.Kmeans(gpu=True)``. HNSW has no GPU implementation and stays on CPU.

Conventions:
  * ``metric='l2'`` returns *squared* Euclidean distances (smaller is nearer);
    ``metric='ip'`` returns inner products (larger is nearer).
  * A neighbour that does not exist (k larger than the database, or an
    approximate index that found fewer than k) is returned with index ``-1``
    and the worst possible score: ``+inf`` distance for ``'l2'`` (``-inf``
    similarity for ``'ip'``).
"""
from __future__ import annotations

import math
from typing import Iterator, Literal

import faiss
import numpy as np

IndexType = Literal["flat", "hnsw", "ivf"]
Metric = Literal["l2", "ip"]
UseGpu = bool | Literal["auto"]

_INDEX_TYPES = ("flat", "hnsw", "ivf")
_METRICS = ("l2", "ip")


# ----------------------------------------------------------------------------
# k-nearest neighbours
# ----------------------------------------------------------------------------


def build_index(
    database: np.ndarray,
    *,
    index_type: IndexType = "flat",
    metric: Metric = "l2",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 128,
    use_gpu: UseGpu = "auto",
    seed: int = 0,
) -> faiss.Index:
  """Builds a FAISS index holding ``database``.

  ``'flat'`` is exact (``IndexFlatL2`` / ``IndexFlatIP``). ``'hnsw'`` is the
  hierarchical navigable small-world graph (Malkov & Yashunin, 2018) with
  ``hnsw_m`` links per node. ``'ivf'`` is an inverted file over ``nlist``
  k-means cells (default ``round(4 * sqrt(N))``), its coarse quantiser trained
  on a random sample of at most ``64 * nlist`` database vectors, searched in
  ``nprobe`` cells (default ``max(1, nlist // 8)``: enough for clustered
  embeddings; unstructured data needs more, e.g. ``nlist // 4`` for recall
  0.9 on Gaussian noise -- measure it with :func:`measure_recall`).

  Args:
    database: ``[N, D]`` float array.
    index_type: ``'flat'``, ``'hnsw'`` or ``'ivf'``.
    metric: ``'l2'`` (squared Euclidean) or ``'ip'`` (inner product).
    nlist: IVF cells.
    nprobe: IVF cells visited per query.
    hnsw_m: HNSW links per node.
    ef_search: HNSW search beam width (raise it for large k).
    use_gpu: ``'auto'`` (GPU when faiss sees one), ``True`` or ``False``.
    seed: seed of the IVF training sample and quantiser k-means.

  Returns:
    A faiss index with ``ntotal == N``.
  """
  database = _as_matrix(database, "database")
  _check_choice(index_type, _INDEX_TYPES, "index_type")
  _check_choice(metric, _METRICS, "metric")
  gpu = _resolve_gpu(use_gpu)
  n, d = database.shape
  faiss_metric = (faiss.METRIC_L2 if metric == "l2" else
                  faiss.METRIC_INNER_PRODUCT)
  if index_type == "flat":
    index = faiss.IndexFlat(d, faiss_metric)
    if gpu:
      index = faiss.index_cpu_to_all_gpus(index)
  elif index_type == "hnsw":
    _check_positive(hnsw_m, "hnsw_m")
    _check_positive(ef_search, "ef_search")
    index = faiss.IndexHNSWFlat(d, hnsw_m, faiss_metric)
    index.hnsw.efSearch = int(ef_search)
  else:  # ivf
    if nlist is None:
      nlist = max(1, min(n, int(round(4 * math.sqrt(n)))))
    _check_positive(nlist, "nlist")
    if nlist > n:
      raise ValueError(f"nlist={nlist} IVF cells need at least as many "
                       f"database vectors, got N={n}.")
    if nprobe is None:
      nprobe = max(1, nlist // 8)
    _check_positive(nprobe, "nprobe")
    quantizer = faiss.IndexFlat(d, faiss_metric)
    index = faiss.IndexIVFFlat(quantizer, d, int(nlist), faiss_metric)
    index.cp.seed = int(seed)
    index.cp.min_points_per_centroid = 1  # silence the small-sample warning
    index.nprobe = int(min(nprobe, nlist))
    if gpu:
      index = faiss.index_cpu_to_all_gpus(index)
      faiss.GpuParameterSpace().set_index_parameter(
          index, "nprobe", int(min(nprobe, nlist)))
    rng = np.random.default_rng(seed)
    sample = min(n, 64 * int(nlist))
    train = database if sample == n else database[
        np.sort(rng.choice(n, sample, replace=False))]
    index.train(train)
  index.add(database)
  return index


def search_batches(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    batch_size: int = 16384,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """Streams the k nearest neighbours of ``queries`` one batch at a time.

  Yields ``(start, distances [b, k], indices [b, k])`` for query rows
  ``start:start + b``. With ``exclude_self`` the queries must be the indexed
  database itself (row i is database id i): k + 1 neighbours are searched and
  each query's own id is dropped; when its own id is not among them (more
  than k exact duplicates, or an approximate index that missed it) the
  (k+1)-th neighbour is dropped instead. Missing neighbours come back as
  index ``-1`` with distance ``+inf`` (``'l2'``) or ``-inf`` (``'ip'``).

  Args:
    index: a faiss index, e.g. from :func:`build_index`.
    queries: ``[Q, D]`` float array.
    k: neighbours per query.
    exclude_self: drop each query's own database entry.
    batch_size: queries per faiss call; peak memory O(batch_size * k).

  Yields:
    ``(start, distances, indices)`` with float32 ``[b, k]`` and int64
    ``[b, k]`` arrays.
  """
  queries = _as_matrix(queries, "queries")
  _check_positive(k, "k")
  _check_positive(batch_size, "batch_size")
  if queries.shape[1] != index.d:
    raise ValueError(f"queries have dimension {queries.shape[1]}, the index "
                     f"holds dimension {index.d}.")
  if exclude_self and queries.shape[0] != index.ntotal:
    raise ValueError(
        f"exclude_self needs the queries to be the indexed database, got "
        f"{queries.shape[0]} queries for {index.ntotal} database vectors.")
  is_l2 = index.metric_type == faiss.METRIC_L2
  worst = np.float32(np.inf if is_l2 else -np.inf)
  k_search = int(k) + 1 if exclude_self else int(k)
  for start in range(0, queries.shape[0], batch_size):
    batch = queries[start:start + batch_size]
    distances, indices = index.search(batch, k_search)
    if exclude_self:
      own = np.arange(start, start + len(batch))[:, None]
      drop = indices == own
      drop[~drop.any(axis=1), -1] = True
      keep = ~drop
      distances = distances[keep].reshape(len(batch), k)
      indices = indices[keep].reshape(len(batch), k)
    distances[indices < 0] = worst
    yield start, distances, indices


def knn(
    queries: np.ndarray,
    database: np.ndarray | None = None,
    k: int = 1,
    *,
    exclude_self: bool = False,
    index_type: IndexType = "flat",
    metric: Metric = "l2",
    batch_size: int = 16384,
    nprobe: int | None = None,
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_search: int | None = None,
    use_gpu: UseGpu = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """k nearest neighbours of each query in ``database`` (batched FAISS search).

  Args:
    queries: ``[Q, D]`` float array.
    database: ``[N, D]`` float array; ``None`` searches the queries among
      themselves.
    k: neighbours per query.
    exclude_self: only with ``database=None``: drop each query's own entry
      by id (see :func:`search_batches` for duplicates).
    index_type: ``'flat'`` (exact), ``'hnsw'`` or ``'ivf'`` (approximate).
    metric: ``'l2'`` (squared Euclidean distances) or ``'ip'`` (inner
      products, larger is nearer).
    batch_size: queries per faiss call; memory O(batch_size * k).
    nprobe: IVF cells visited (default ``nlist // 8``).
    nlist: IVF cells (default ``4 * sqrt(N)``).
    hnsw_m: HNSW links per node.
    ef_search: HNSW beam width, default ``max(128, 2 * k)``.
    use_gpu: ``'auto'``, ``True`` or ``False``.
    seed: IVF training seed.

  Returns:
    ``(distances [Q, k] float32, indices [Q, k] int64)``, nearest first.
    Missing neighbours are index ``-1`` with distance ``+inf`` (``-inf``
    inner product for ``'ip'``).
  """
  if exclude_self and database is not None:
    raise ValueError("exclude_self=True needs database=None (the queries are "
                     "searched among themselves).")
  queries = _as_matrix(queries, "queries")
  database = queries if database is None else _as_matrix(database, "database")
  _check_positive(k, "k")
  index = build_index(
      database, index_type=index_type, metric=metric, nlist=nlist,
      nprobe=nprobe, hnsw_m=hnsw_m,
      ef_search=ef_search if ef_search is not None else max(128, 2 * (k + 1)),
      use_gpu=use_gpu, seed=seed)
  q = queries.shape[0]
  distances = np.empty((q, k), np.float32)
  indices = np.empty((q, k), np.int64)
  for start, dist, idx in search_batches(
      index, queries, k, exclude_self=exclude_self, batch_size=batch_size):
    distances[start:start + len(idx)] = dist
    indices[start:start + len(idx)] = idx
  return distances, indices


def measure_recall(approx_indices: np.ndarray,
                   exact_indices: np.ndarray) -> float:
  """Neighbour recall of an approximate search against exact search.

  The mean over queries of ``|A_q ∩ E_q| / |E_q|``, where ``E_q`` are the
  exact neighbour ids of query q (``-1`` entries ignored) and ``A_q`` the
  approximate ones; the usual "k-recall@k" of ANN benchmarks when both have
  k columns.

  Args:
    approx_indices: ``[Q, ka]`` int array.
    exact_indices: ``[Q, ke]`` int array.

  Returns:
    Recall in ``[0, 1]``.
  """
  approx = np.asarray(approx_indices)
  exact = np.asarray(exact_indices)
  if approx.ndim != 2 or exact.ndim != 2 or approx.shape[0] != exact.shape[0]:
    raise ValueError(f"approx_indices {approx.shape} and exact_indices "
                     f"{exact.shape} must be [Q, k] arrays with the same Q.")
  if approx.shape[0] == 0:
    raise ValueError("measure_recall got zero queries.")
  found = 0
  total = 0
  rows = max(1, 2**22 // max(1, approx.shape[1] * exact.shape[1]))
  for s in range(0, exact.shape[0], rows):
    a, e = approx[s:s + rows], exact[s:s + rows]
    valid = e >= 0
    hit = (e[:, :, None] == a[:, None, :]).any(axis=2) & valid
    found += int(hit.sum())
    total += int(valid.sum())
  if total == 0:
    raise ValueError("exact_indices holds no valid (>= 0) neighbour.")
  return found / total


# ----------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
  """Contiguous finite float32 ``[N, D]`` copy-free view where possible."""
  x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a [N, D] array, got shape {x.shape}.")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} must be non-empty, got shape {x.shape}.")
  if not np.isfinite(x).all():
    bad = int((~np.isfinite(x)).any(axis=1).sum())
    raise ValueError(f"{name} has {bad} rows with NaN or inf values.")
  return x


def _check_positive(value: int, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
      value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def _resolve_gpu(use_gpu: UseGpu) -> bool:
  """``'auto'`` -> whether faiss sees a GPU; ``True`` requires one."""
  has_gpu = (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 and
             hasattr(faiss, "index_cpu_to_all_gpus"))
  if use_gpu == "auto":
    return has_gpu
  if use_gpu is True:
    if not has_gpu:
      raise ValueError("use_gpu=True but faiss sees no GPU (install faiss-gpu "
                       "or pass use_gpu='auto').")
    return True
  if use_gpu is False:
    return False
  raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}.")
