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

The metrics live in ``retrieval`` (Recall@K, MAP@R, R-precision),
``clustering`` (NMI) and ``classification`` (k-NN accuracy), on the batched
search of ``neighbours``; this module holds the combined report
(:func:`evaluate_retrieval`, :func:`format_table`) and gathers them all under
their one import path.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# pylint: disable=unused-import
from dmlx.eval.classification import knn_accuracy
from dmlx.eval.clustering import nmi
from dmlx.eval.neighbours import _Retrieval
from dmlx.eval.neighbours import _as_labels
from dmlx.eval.neighbours import _check_ks
from dmlx.eval.neighbours import _match_batches
from dmlx.eval.neighbours import _neighbour_batches
from dmlx.eval.retrieval import _average_precisions
from dmlx.eval.retrieval import _counted_queries
from dmlx.eval.retrieval import _map_r_only
from dmlx.eval.retrieval import _recall_hits
from dmlx.eval.retrieval import _relevant_counts
from dmlx.eval.retrieval import map_at_r
from dmlx.eval.retrieval import r_precision
from dmlx.eval.retrieval import recall_at_k
# pylint: enable=unused-import
from dmlx.index import faiss_ops

_METRIC_NAMES = ("recall", "nmi", "map_r")


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
