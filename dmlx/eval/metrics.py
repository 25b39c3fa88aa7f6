"""Retrieval and clustering metrics of deep metric learning, memory-bounded.

Recall@K, NMI, MAP@R / R-precision and k-NN classification accuracy, computed
on host numpy embeddings with the batched FAISS search of ``dmlx.index``:
queries are processed ``batch_size`` at a time, so memory is
O(batch_size * k) on top of the embeddings and the index, never a Q x N
distance matrix. At Stanford Online Products scale (60,502 test images) a
full matrix would be 14.6 GB of float32.

Distances are Euclidean by default (``metric='l2'``); pass ``metric='ip'``
for cosine similarity of L2-normalised embeddings (same ranking as 'l2' on
the unit sphere).
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from dmlx.index import faiss_ops

_METRIC_NAMES = ("recall", "nmi", "map_r")


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


def nmi(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    num_clusters: int | None = None,
    seed: int = 0,
    niter: int = 20,
    init: str = "random",
    use_gpu: faiss_ops.UseGpu = "auto",
) -> float:
  """Normalised mutual information of a k-means clustering with the labels
  (Manning et al., "Introduction to Information Retrieval", 2008, Sec. 16.3;
  used for DML by Song et al., CVPR 2016).

  .. math:: \\mathrm{NMI}(\\Omega, C) = \\frac{2\\, I(\\Omega; C)}
    {H(\\Omega) + H(C)}

  ``Omega`` is a FAISS k-means clustering of the embeddings into as many
  clusters as there are classes (or ``num_clusters``), ``C`` the classes;
  computed by ``sklearn.metrics.normalized_mutual_info_score`` (arithmetic
  normalisation, the formula above). ``init='random'`` (faiss's own seeding,
  the common DML evaluation practice) is the default because k-means++
  seeding is sequential in the number of clusters (11,316 on SOP);
  ``'kmeans++'`` is available.

  Args:
    embeddings: ``[N, D]`` embeddings.
    labels: ``[N]`` integer labels.
    num_clusters: clusters; default the number of distinct labels.
    seed: k-means seed.
    niter: Lloyd iterations.
    init: ``'random'`` or ``'kmeans++'``.
    use_gpu: ``'auto'``, ``True`` or ``False``.

  Returns:
    NMI in ``[0, 1]``.
  """
  embeddings = faiss_ops._as_matrix(embeddings, "embeddings")
  labels = _as_labels(labels, embeddings.shape[0], "labels")
  if num_clusters is None:
    num_clusters = int(np.unique(labels).size)
  _, assignments = faiss_ops.kmeans(embeddings, num_clusters, niter=niter,
                                    seed=seed, init=init, use_gpu=use_gpu)
  return float(normalized_mutual_info_score(labels, assignments))


def knn_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    k: int | Sequence[int] = 1,
    *,
    metric: faiss_ops.Metric = "l2",
    index_type: faiss_ops.IndexType = "flat",
    batch_size: int = 16384,
    use_gpu: faiss_ops.UseGpu = "auto",
) -> float | dict[int, float]:
  """k-nearest-neighbour classification accuracy (Cover & Hart, 1967).

  Each test embedding takes the majority label of its k nearest training
  embeddings; a tie between labels goes to the tied label whose nearest
  occurrence ranks first (so k=2 with two labels is the 1-NN label).

  Args:
    train_embeddings: ``[N, D]`` labelled reference set.
    train_labels: ``[N]`` integer labels.
    test_embeddings: ``[Q, D]`` embeddings to classify.
    test_labels: ``[Q]`` true labels.
    k: one k, or a sequence of k values searched once with ``max(k)``.
    metric: ``'l2'`` or ``'ip'``.
    index_type: ``'flat'`` or an approximate index.
    batch_size: queries per search call.
    use_gpu: ``'auto'``, ``True`` or ``False``.

  Returns:
    The accuracy for an integer ``k``, ``{k: accuracy}`` for a sequence.
  """
  single = isinstance(k, (int, np.integer)) and not isinstance(k, bool)
  ks = _check_ks([k] if single else k)
  data = _Retrieval(test_embeddings, test_labels, train_embeddings,
                    train_labels, gallery_name="train")
  correct = np.zeros(len(ks), np.int64)
  kmax = max(ks)
  # The [b, k, k] vote table is bounded to ~2**24 entries per batch.
  batch_size = max(1, min(batch_size, 2**24 // (kmax * kmax)))
  for start, idx in _neighbour_batches(data, kmax, metric=metric,
                                       index_type=index_type,
                                       batch_size=batch_size,
                                       use_gpu=use_gpu):
    truth = data.query_labels[start:start + len(idx)]
    valid = idx >= 0
    nn_labels = np.where(valid, data.gallery_labels[np.maximum(idx, 0)], -1)
    same = (nn_labels[:, :, None] == nn_labels[:, None, :]) & valid[:, None, :]
    for j, kk in enumerate(ks):
      votes = same[:, :kk, :kk].sum(axis=2)
      votes[~valid[:, :kk]] = -1
      winner = np.argmax(votes, axis=1)  # first max = nearest tied label
      pred = nn_labels[np.arange(len(idx)), winner]
      correct[j] += int((pred == truth).sum())
  acc = {kk: float(c) / data.num_queries for kk, c in zip(ks, correct)}
  return acc[ks[0]] if single else acc


def evaluate_retrieval(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 2, 4, 8),
    metrics: Sequence[str] = _METRIC_NAMES,
    *,
    max_r: int = 1024,
    metric: faiss_ops.Metric = "l2",
    index_type: faiss_ops.IndexType = "flat",
    batch_size: int = 16384,
    nmi_seed: int = 0,
    nmi_niter: int = 20,
    use_gpu: faiss_ops.UseGpu = "auto",
) -> dict[str, float]:
  """The standard zero-shot retrieval report of a test split.

  Recall@K and MAP@R / R-precision share one batched search with
  ``k = max(max(ks), min(max_q R_q, max_r))``; NMI runs k-means with one
  cluster per class (see :func:`recall_at_k`, :func:`map_at_r`,
  :func:`nmi`).

  Args:
    embeddings: ``[N, D]`` embeddings of the test split.
    labels: ``[N]`` integer labels.
    ks: Recall@K values.
    metrics: any of ``'recall'``, ``'nmi'``, ``'map_r'``.
    max_r: MAP@R cap on R.
    metric: ``'l2'`` or ``'ip'``.
    index_type: ``'flat'`` or an approximate index for the search.
    batch_size: queries per search call.
    nmi_seed: k-means seed.
    nmi_niter: k-means iterations.
    use_gpu: ``'auto'``, ``True`` or ``False``.

  Returns:
    ``{'recall@1': ..., 'recall@2': ..., 'nmi': ..., 'map@r': ...,
    'r_precision': ...}`` (the keys of the metrics asked for).
  """
  metrics = tuple(metrics)
  for name in metrics:
    if name not in _METRIC_NAMES:
      raise ValueError(f"Unknown metric {name!r}; choose from {_METRIC_NAMES}.")
  ks = _check_ks(ks)
  data = _Retrieval(embeddings, labels, None, None)
  out: dict[str, float] = {}
  want_recall, want_map = "recall" in metrics, "map_r" in metrics
  if want_recall or want_map:
    r = _relevant_counts(data, max_r)
    counted = _counted_queries(r) if want_map else 0
    k = max(max(ks) if want_recall else 1, int(r.max()) if want_map else 1, 1)
    hits = np.zeros(len(ks), np.int64)
    ap_sum = rp_sum = 0.0
    for start, matches in _match_batches(data, k, metric=metric,
                                         index_type=index_type,
                                         batch_size=batch_size,
                                         use_gpu=use_gpu):
      if want_recall:
        hits += _recall_hits(matches, ks)
      if want_map:
        ap, rp = _average_precisions(matches, r[start:start + len(matches)])
        ap_sum += ap
        rp_sum += rp
    if want_recall:
      out.update({f"recall@{kk}": float(h) / data.num_queries
                  for kk, h in zip(ks, hits)})
    if want_map:
      out["map@r"] = ap_sum / counted
      out["r_precision"] = rp_sum / counted
  if "nmi" in metrics:
    out["nmi"] = nmi(data.queries, data.query_labels, seed=nmi_seed,
                     niter=nmi_niter, use_gpu=use_gpu)
  return out


def format_table(rows: Mapping[str, Mapping[str, float]],
                 columns: Sequence[str] | None = None,
                 *, fmt: str = "{:.4f}") -> str:
  """A plain-text table: one row per model, one column per metric.

  Args:
    rows: ``{model_name: {metric_name: value}}``.
    columns: metric names in order; default every name in first-seen order.
    fmt: format of a value; missing values print ``-``.

  Returns:
    The table as a string with a header line and a rule.
  """
  if columns is None:
    columns = list(dict.fromkeys(c for r in rows.values() for c in r))
  cells = [["model", *columns]]
  for name, values in rows.items():
    cells.append([str(name)] + [
        fmt.format(values[c]) if c in values else "-" for c in columns])
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths)))
           for row in cells]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


class _Retrieval:
  """Validated queries and gallery (the queries themselves when None)."""

  def __init__(self, queries, query_labels, gallery, gallery_labels,
               gallery_name: str = "gallery"):
    query_name = ("embeddings" if gallery_name == "gallery" else
                  "test_embeddings")
    self.queries = faiss_ops._as_matrix(queries, query_name)
    self.query_labels = _as_labels(query_labels, self.queries.shape[0],
                                   "labels" if gallery_name == "gallery"
                                   else "test_labels")
    self.self_search = gallery is None
    if gallery is None:
      if gallery_labels is not None:
        raise ValueError("gallery_labels given without gallery_embeddings.")
      self.gallery, self.gallery_labels = self.queries, self.query_labels
    else:
      if gallery_labels is None:
        raise ValueError(f"{gallery_name}_labels are required with "
                         f"{gallery_name}_embeddings.")
      self.gallery = faiss_ops._as_matrix(gallery, f"{gallery_name}_embeddings")
      self.gallery_labels = _as_labels(gallery_labels, self.gallery.shape[0],
                                       f"{gallery_name}_labels")
      if self.gallery.shape[1] != self.queries.shape[1]:
        raise ValueError(
            f"{gallery_name} dimension {self.gallery.shape[1]} differs from "
            f"query dimension {self.queries.shape[1]}.")
    self.num_queries = self.queries.shape[0]


def _neighbour_batches(data: _Retrieval, k: int, *, metric, index_type,
                       batch_size, use_gpu) -> Iterator[tuple[int, np.ndarray]]:
  """Yields ``(start, neighbour ids [b, k])``, self excluded when no gallery."""
  index = faiss_ops.build_index(
      data.gallery, index_type=index_type, metric=metric, use_gpu=use_gpu,
      ef_search=max(128, 2 * (k + 1)))
  for start, _, idx in faiss_ops.search_batches(
      index, data.queries, k, exclude_self=data.self_search,
      batch_size=batch_size):
    yield start, idx


def _match_batches(data: _Retrieval, k: int, **search) -> Iterator[
    tuple[int, np.ndarray]]:
  """Yields ``(start, matches [b, k] bool)``: neighbour shares query's label."""
  for start, idx in _neighbour_batches(data, k, **search):
    truth = data.query_labels[start:start + len(idx), None]
    nn_labels = data.gallery_labels[np.maximum(idx, 0)]
    yield start, (idx >= 0) & (nn_labels == truth)


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


def _check_ks(ks) -> tuple[int, ...]:
  ks = tuple(ks)
  if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer))
                   or k < 1 for k in ks):
    raise ValueError(f"ks must be a non-empty sequence of positive integers, "
                     f"got {ks!r}.")
  return tuple(int(k) for k in ks)


def _as_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},), got {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {labels.dtype}.")
  return labels.astype(np.int64)
