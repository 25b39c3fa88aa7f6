"""Validated query / gallery sets and the batched neighbour search shared by
the metrics of ``dmlx.eval``.

:class:`_Retrieval` checks the embeddings and labels (the queries are their
own gallery when none is given); :func:`_neighbour_batches` and
:func:`_match_batches` stream the k nearest gallery items of each query batch
through ``dmlx.index.faiss_ops``, so memory stays O(batch_size * k).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from dmlx.index import faiss_ops


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
