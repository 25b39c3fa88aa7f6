"""Retrieval metrics: Recall@K, MAP@R and R-precision, with the per-batch
counts they (and ``metrics.evaluate_retrieval``) are summed from."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dmlx.eval.neighbours import _Retrieval, _check_ks, _match_batches
from dmlx.index import faiss_ops


def recall_at_k(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    *,
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    metric: faiss_ops.Metric = "l2",
    index_type: faiss_ops.IndexType = "flat",
    batch_size: int = 16384,
    use_gpu: faiss_ops.UseGpu = "auto",
) -> dict[int, float]:
  """Recall@K of image retrieval (Song et al., "Deep Metric Learning via Lifted
  Structured Feature Embedding", CVPR 2016, Sec. 5).

  .. math::
    \\mathrm{R@K} = \\frac{1}{Q} \\sum_q \\mathbb{1}[\\exists\\, j \\in
    \\mathrm{NN}_K(q) : y_j = y_q]

  A query counts as correct if any of its K nearest neighbours shares its
  label. Without a gallery every embedding is a query searched against all
  the others (itself excluded by id); with a gallery (the In-Shop
  query/gallery protocol) the queries are searched in the gallery only. All
  queries count, including those whose class has no other member.

  Args:
    embeddings: ``[Q, D]`` query embeddings.
    labels: ``[Q]`` integer class labels.
    ks: the K values.
    gallery_embeddings: optional ``[N, D]`` gallery.
    gallery_labels: ``[N]`` gallery labels, required with a gallery.
    metric: ``'l2'`` or ``'ip'``.
    index_type: ``'flat'`` (exact) or an approximate index.
    batch_size: queries per search call.
    use_gpu: ``'auto'``, ``True`` or ``False``.

  Returns:
    ``{K: recall}`` with values in ``[0, 1]``.
  """
  ks = _check_ks(ks)
  data = _Retrieval(embeddings, labels, gallery_embeddings, gallery_labels)
  hits = np.zeros(len(ks), np.int64)
  for _, matches in _match_batches(data, max(ks), metric=metric,
                                   index_type=index_type,
                                   batch_size=batch_size, use_gpu=use_gpu):
    hits += _recall_hits(matches, ks)
  return {k: float(h) / data.num_queries for k, h in zip(ks, hits)}


def map_at_r(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    max_r: int = 1024,
    metric: faiss_ops.Metric = "l2",
    index_type: faiss_ops.IndexType = "flat",
    batch_size: int = 16384,
    use_gpu: faiss_ops.UseGpu = "auto",
) -> float:
  """MAP@R (Musgrave, Belongie & Lim, "A Metric Learning Reality Check",
  ECCV 2020, Sec. 3.2).

  .. math::
    \\mathrm{MAP@R} = \\frac{1}{Q} \\sum_q \\frac{1}{R_q} \\sum_{i=1}^{R_q}
    P_q(i)\\,\\mathrm{rel}_q(i), \\qquad P_q(i) = \\frac{1}{i}
    \\sum_{j \\le i} \\mathrm{rel}_q(j)

  ``R_q`` is the number of *other* items of the query's class (gallery items
  of its class with a gallery) and ``rel_q(i)`` is 1 if the i-th neighbour
  has the query's label. Queries with ``R_q = 0`` are left out of the mean
  (their MAP@R is undefined), as in pytorch-metric-learning. A class with
  ``R_q > max_r`` is truncated: the search uses
  ``k = min(max_q R_q, max_r)`` and such queries use ``R_q := max_r`` in both
  sums (pytorch-metric-learning's behaviour when ``k < R``), which keeps
  memory O(batch_size * max_r).

  Args:
    embeddings: ``[Q, D]`` query embeddings.
    labels: ``[Q]`` integer labels.
    gallery_embeddings: optional ``[N, D]`` gallery.
    gallery_labels: ``[N]`` gallery labels.
    max_r: cap on R.
    metric: ``'l2'`` or ``'ip'``.
    index_type: ``'flat'`` or an approximate index.
    batch_size: queries per search call.
    use_gpu: ``'auto'``, ``True`` or ``False``.

  Returns:
    MAP@R in ``[0, 1]``.
  """
  return _map_r_only(embeddings, labels, gallery_embeddings, gallery_labels,
                     max_r, metric, index_type, batch_size, use_gpu)[0]


def r_precision(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    max_r: int = 1024,
    metric: faiss_ops.Metric = "l2",
    index_type: faiss_ops.IndexType = "flat",
    batch_size: int = 16384,
    use_gpu: faiss_ops.UseGpu = "auto",
) -> float:
  """R-precision (Musgrave et al., ECCV 2020, Sec. 3.2).

  .. math:: \\mathrm{RP} = \\frac{1}{Q} \\sum_q \\frac{1}{R_q}
    \\sum_{i=1}^{R_q} \\mathrm{rel}_q(i)

  The fraction of same-class items among each query's first ``R_q``
  neighbours; ``R_q``, the exclusion of ``R_q = 0`` queries and the ``max_r``
  cap are as in :func:`map_at_r`.

  Returns:
    R-precision in ``[0, 1]``.
  """
  return _map_r_only(embeddings, labels, gallery_embeddings, gallery_labels,
                     max_r, metric, index_type, batch_size, use_gpu)[1]


def _recall_hits(matches: np.ndarray, ks: Sequence[int]) -> np.ndarray:
  """Number of queries with a match in their first K, for each K."""
  first = np.where(matches.any(axis=1), matches.argmax(axis=1),
                   matches.shape[1])
  return np.array([(first < k).sum() for k in ks], np.int64)


def _relevant_counts(data: _Retrieval, max_r: int) -> np.ndarray:
  """``R_q``: same-class gallery items of each query (self excluded), capped."""
  if isinstance(max_r, bool) or not isinstance(max_r, (int, np.integer)) or \
      max_r < 1:
    raise ValueError(f"max_r must be a positive integer, got {max_r!r}.")
  classes, counts = np.unique(data.gallery_labels, return_counts=True)
  pos = np.searchsorted(classes, data.query_labels)
  pos = np.minimum(pos, len(classes) - 1)
  r = np.where(classes[pos] == data.query_labels, counts[pos], 0)
  if data.self_search:
    r = r - 1
  return np.minimum(r, max_r)


def _counted_queries(r: np.ndarray) -> int:
  counted = int((r > 0).sum())
  if counted == 0:
    raise ValueError("MAP@R is undefined: no query has another item of its "
                     "class (R = 0 for every query).")
  return counted


def _average_precisions(matches: np.ndarray,
                        r: np.ndarray) -> tuple[float, float]:
  """Sums over the batch of AP@R and R-precision (queries with R = 0 add 0)."""
  k = matches.shape[1]
  rank = np.arange(1, k + 1)
  rel = matches & (rank[None, :] <= r[:, None])
  hits = np.cumsum(rel, axis=1)
  safe_r = np.maximum(r, 1).astype(np.float64)
  ap = (rel * hits / rank).sum(axis=1) / safe_r
  rp = hits[:, -1] / safe_r
  counted = r > 0
  return float(ap[counted].sum()), float(rp[counted].sum())


def _map_r_only(embeddings, labels, gallery_embeddings, gallery_labels, max_r,
                metric, index_type, batch_size, use_gpu) -> tuple[float, float]:
  data = _Retrieval(embeddings, labels, gallery_embeddings, gallery_labels)
  r = _relevant_counts(data, max_r)
  counted = _counted_queries(r)
  ap_sum = rp_sum = 0.0
  for start, matches in _match_batches(data, max(1, int(r.max())),
                                       metric=metric, index_type=index_type,
                                       batch_size=batch_size, use_gpu=use_gpu):
    ap, rp = _average_precisions(matches, r[start:start + len(matches)])
    ap_sum += ap
    rp_sum += rp
  return ap_sum / counted, rp_sum / counted
