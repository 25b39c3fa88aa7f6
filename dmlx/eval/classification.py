"""k-nearest-neighbour classification accuracy of embeddings."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dmlx.eval.neighbours import _Retrieval, _check_ks, _neighbour_batches
from dmlx.index import faiss_ops


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
