"""NNGK's classifier (eq. 3 at test time): the class with the largest
weighted kernel mass among a query's nearest training centres.

Meyer, Harwood & Drummond, "Deep metric learning and image classification
with nearest neighbour Gaussian kernels", ICIP 2018, Section 3.2.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from dmlx import index as dmlx_index


def class_log_probs(queries: np.ndarray, centres: np.ndarray,
                    centre_labels: np.ndarray,
                    weights: Optional[np.ndarray] = None, *, sigma: float,
                    num_classes: Optional[int] = None,
                    num_neighbours: int = 100, index_type: str = "flat",
                    min_weight: float = 1e-4, **knn_kwargs) -> np.ndarray:
  """Log class probabilities of eq. 3 for query embeddings.

  The k nearest training centres of each query are found with FAISS; their
  weighted kernel values are summed per class and normalised. Computed in the
  log domain (shifted by each query's largest logit), so far queries do not
  underflow. Classes with no centre among the neighbours get ``-inf``.

  Args:
    queries: ``[Q, D]`` query embeddings (e.g. test images).
    centres: ``[N, D]`` training centres.
    centre_labels: ``[N]`` their int classes.
    weights: ``[N]`` centre weights w_i, or None for 1.
    sigma: kernel width σ.
    num_classes: C (default ``max(centre_labels) + 1``).
    num_neighbours: k.
    index_type: ``'flat'``, ``'hnsw'`` or ``'ivf'``.
    min_weight: floor on w_i (as in the loss).
    **knn_kwargs: further :func:`dmlx.index.knn` options.

  Returns:
    ``[Q, C]`` float64 log Pr(x ∈ class).
  """
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma!r}.")
  centre_labels = np.asarray(centre_labels).astype(np.int64)
  if num_classes is None:
    num_classes = int(centre_labels.max()) + 1
  if weights is None:
    weights = np.ones(len(centre_labels), np.float64)
  weights = np.asarray(weights, np.float64)
  if weights.shape != centre_labels.shape:
    raise ValueError(f"weights shape {weights.shape} != centre_labels shape "
                     f"{centre_labels.shape}.")
  k = min(int(num_neighbours), len(centre_labels))
  sq_dist, nbrs = dmlx_index.knn(queries, centres, k, index_type=index_type,
                                 metric="l2", **knn_kwargs)
  valid = nbrs >= 0
  safe = np.where(valid, nbrs, 0)
  d2 = np.maximum(sq_dist.astype(np.float64), 0.0)
  logits = (np.log(np.maximum(weights[safe], min_weight))
            - d2 / (2.0 * float(sigma)**2))
  logits = np.where(valid, logits, -np.inf)
  peak = logits.max(axis=1, keepdims=True)
  mass = np.where(valid, np.exp(logits - peak), 0.0)         # [Q, k]
  q = len(logits)
  flat = (np.arange(q)[:, None] * num_classes + centre_labels[safe]).ravel()
  per_class = np.bincount(flat, weights=mass.ravel(),
                          minlength=q * num_classes).reshape(q, num_classes)
  with np.errstate(divide="ignore"):
    return np.log(per_class) - np.log(per_class.sum(axis=1, keepdims=True))


def predict(queries: np.ndarray, centres: np.ndarray,
            centre_labels: np.ndarray, weights: Optional[np.ndarray] = None,
            *, sigma: float, num_neighbours: int = 100,
            index_type: str = "flat", min_weight: float = 1e-4,
            **knn_kwargs) -> np.ndarray:
  """NNGK classifier (eq. 3): the class with the largest weighted kernel
  mass among each query's k nearest training centres.

  Args: as :func:`class_log_probs`.

  Returns:
    ``[Q]`` int predicted classes.
  """
  log_p = class_log_probs(queries, centres, centre_labels, weights,
                          sigma=sigma, num_neighbours=num_neighbours,
                          index_type=index_type, min_weight=min_weight,
                          **knn_kwargs)
  return np.argmax(log_p, axis=1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of correct predictions (the paper's test accuracy, Table 3-4)."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if predictions.shape != labels.shape or predictions.ndim != 1:
    raise ValueError(f"predictions {predictions.shape} and labels "
                     f"{labels.shape} must be equal-length 1-d arrays.")
  if labels.size == 0:
    raise ValueError("accuracy of an empty set.")
  return float(np.mean(predictions == labels))
