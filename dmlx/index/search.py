"""Batched k-nearest-neighbour search with FAISS: index building (flat, HNSW,
IVF), streamed query batches, whole-set k-NN and the recall of an
approximate search (conventions in ``dmlx.index.faiss_ops``)."""
from __future__ import annotations

import math
from typing import Iterator

import faiss
import numpy as np

from dmlx.index import self_join
from dmlx.index.common import (IndexType, Metric, UseGpu, _INDEX_TYPES,
                               _METRICS, _as_matrix, _check_choice,
                               _check_positive, _resolve_gpu, drop_own)


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
      distances, indices = drop_own(distances, indices,
                                    np.arange(start, start + len(batch)))
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
    index_type: ``'flat'`` (exact), ``'hnsw'`` or ``'ivf'`` (approximate), or
      ``'ivf_join'``: the queries among themselves by cell blocks
      (:func:`dmlx.index.self_join.self_knn_cells`; ``database=None``,
      ``exclude_self=True``, ``'l2'``; ``nlist`` default ``sqrt(N)``,
      ``nprobe`` default 4), the fastest here for a whole bank refresh.
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
  if index_type == "ivf_join":
    if database is not None or not exclude_self:
      raise ValueError("index_type='ivf_join' searches a set among itself: it "
                       "needs database=None and exclude_self=True.")
    if metric != "l2":
      raise ValueError(f"index_type='ivf_join' supports metric='l2', got "
                       f"{metric!r}.")
    return self_join.self_knn_cells(
        queries, k, nlist=nlist, nprobe=nprobe if nprobe is not None else 4,
        seed=seed)
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
