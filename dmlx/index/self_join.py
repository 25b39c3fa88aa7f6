"""All-pairs approximate k-NN of a set among itself, by cell blocks.

The NNGK centre-bank refresh (Meyer et al., ICIP 2018, Sec. 2.2-2.3) needs the
k = 100 nearest other centres of *every* centre: the queries are the
database. An inverted file (``IndexIVFFlat``) answers that one query at a
time, scanning each probed cell with vector instructions and a k-heap; on
these CPUs that is ~5 GFLOP/s. Here the same cells are searched as blocks:

1. FAISS k-means (on a sample of ``points_per_cell`` points per cell) splits
   the set into ``nlist`` cells; every point goes to its nearest centroid.
2. Each cell's candidates are the members of the ``nprobe`` cells whose
   centroids are nearest to *its centroid* (its own first).
3. Each cell's members are searched exactly among its candidates with
   ``faiss.knn`` -- one BLAS matrix product and FAISS's top-k per block.

The approximation is step 2: a point near the border of its cell can have a
neighbour in a cell that is not among its cell's ``nprobe`` nearest. Measure
the recall (:func:`dmlx.index.measure_recall`, ``benchmarks/nngk_refresh.py``).
"""
from __future__ import annotations

import faiss
import numpy as np

from dmlx.index.common import _as_matrix, _check_positive, drop_own


def _cells(x: np.ndarray, nlist: int, nprobe: int, points_per_cell: int,
           niter: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """K-means cells of ``x``: ``(order, starts, probed)`` -- the rows sorted
  by cell (cell c is ``order[starts[c]:starts[c + 1]]``) and each cell's
  ``nprobe`` nearest cells by centroid, its own first (so a smaller nprobe
  is a prefix of the columns)."""
  km = faiss.Kmeans(x.shape[1], int(nlist), niter=int(niter), seed=int(seed),
                    max_points_per_centroid=int(points_per_cell),
                    min_points_per_centroid=1, verbose=False)
  km.train(x)
  _, assign = km.index.search(x, 1)
  assign = assign[:, 0]
  _, probed = km.index.search(km.centroids, nprobe)
  order = np.argsort(assign, kind="stable")
  starts = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=nlist))])
  return order, starts, probed


def _join(x: np.ndarray, k: int, order: np.ndarray, starts: np.ndarray,
          probed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each cell's members searched exactly among its probed cells' members."""
  n = x.shape[0]
  dist = np.full((n, k), np.inf, np.float32)
  idx = np.full((n, k), -1, np.int64)
  for cell in range(len(starts) - 1):
    rows = order[starts[cell]:starts[cell + 1]]
    if not len(rows):
      continue
    cand = np.concatenate([order[starts[j]:starts[j + 1]]
                           for j in probed[cell] if j >= 0])
    kk = min(k + 1, len(cand))
    dd, ii = faiss.knn(x[rows], x[cand], kk)
    dd, found = drop_own(dd, cand[ii], rows)
    dist[rows, :kk - 1] = dd[:, :k]
    idx[rows, :kk - 1] = found[:, :k]
  return dist, idx


def _check_nlist(nlist: int | None, n: int) -> int:
  if nlist is None:
    nlist = max(1, int(round(np.sqrt(n))))
  _check_positive(nlist, "nlist")
  if nlist > n:
    raise ValueError(f"nlist={nlist} cells need at least as many rows, got "
                     f"N={n}.")
  return int(nlist)


def self_knn_cells(
    x: np.ndarray,
    k: int,
    *,
    nlist: int | None = None,
    nprobe: int = 4,
    points_per_cell: int = 64,
    niter: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Approximate k nearest *other* rows of every row of ``x`` (squared L2).

  Args:
    x: ``[N, D]`` float array; the queries and the database.
    k: neighbours per row (its own row excluded).
    nlist: cells (default ``round(sqrt(N))``, at least 1).
    nprobe: cells searched per cell (its own and the nearest others).
    points_per_cell: k-means training sample per cell.
    niter: k-means iterations.
    seed: k-means seed.

  Returns:
    ``(sq_distances [N, k] float32, indices [N, k] int64)``, nearest first;
    a row with fewer than k candidates is padded with index ``-1`` and
    distance ``+inf``.
  """
  x = _as_matrix(x, "x")
  _check_positive(k, "k")
  _check_positive(nprobe, "nprobe")
  _check_positive(points_per_cell, "points_per_cell")
  _check_positive(niter, "niter")
  nlist = _check_nlist(nlist, x.shape[0])
  cells = _cells(x, nlist, min(int(nprobe), nlist), points_per_cell, niter,
                 seed)
  return _join(x, int(k), *cells)


def self_knn_checked(
    x: np.ndarray,
    k: int,
    *,
    min_recall: float = 0.95,
    nprobes: tuple[int, ...] = (4, 8),
    sample: int = 256,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
  """:func:`self_knn_cells` with a measured recall, exact search otherwise.

  The exact k nearest others of ``sample`` random rows are found by brute
  force (``sample x N x D`` work, a small fraction of the join); the cells
  are made once and each ``nprobe`` of ``nprobes`` is tried in turn, the
  first whose recall on those rows reaches ``min_recall`` kept. When none
  does (embeddings without cluster structure: on Tiny ImageNet features the
  join reached 0.40 at nprobe 4), every row is searched exactly.

  Returns:
    ``(sq_distances, indices, info)`` as :func:`self_knn_cells`, ``info``
    naming the search kept and the recalls measured.
  """
  from dmlx.index import search  # pylint: disable=g-import-not-at-top
  x = _as_matrix(x, "x")
  n = x.shape[0]
  rng = np.random.default_rng(seed)
  rows = np.sort(rng.choice(n, min(int(sample), n), replace=False))
  dd, exact = faiss.knn(x[rows], x, min(k + 1, n))
  _, exact = drop_own(dd, exact, rows)
  nlist = _check_nlist(None, n)
  order, starts, probed = _cells(x, nlist, min(max(nprobes), nlist), 64, 10,
                                 seed)
  tried = {}
  for nprobe in nprobes:
    dist, idx = _join(x, int(k), order, starts, probed[:, :nprobe])
    recall = search.measure_recall(idx[rows], exact)
    tried[int(nprobe)] = round(float(recall), 4)
    if recall >= min_recall:
      return dist, idx, {"search": "ivf_join", "nprobe": int(nprobe),
                         "recall": tried[int(nprobe)], "tried": tried}
  dist, idx = search.knn(x, None, k, exclude_self=True, index_type="flat",
                         use_gpu="auto")
  return dist, idx, {"search": "flat", "recall": 1.0, "tried": tried}
