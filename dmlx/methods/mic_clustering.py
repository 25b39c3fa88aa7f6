"""MIC's surrogate labels: class-standardised clustering (Sec. 3.3).

Roth, Brattoli & Ommer, "MIC: Mining Interclass Characteristics for Improved
Metric Learning", ICCV 2019. The auxiliary encoder E_β is trained on
surrogate labels ``Y_β = Cluster(Stand(features), C)``: the training set's
features with each class's mean (and optionally standard deviation) removed,
so the clusters group characteristics shared *across* classes, clustered by
FAISS k-means.
"""
from __future__ import annotations

import numpy as np

STANDARDISE_MODES = ("none", "mean", "mean_std")
_STD_EPS = 1e-8


def standardise_per_class(features: np.ndarray, labels: np.ndarray,
                          mode: str = "mean") -> np.ndarray:
  """Per-class standardisation of MIC Sec. 3.3, ``z_i = (f(x_i) - μ_y) / σ_y``.

  μ_y and σ_y (population std, per dimension) are computed over the examples
  of class y. ``mode='mean'`` only subtracts μ_y (the authors' default),
  ``'mean_std'`` also divides by σ_y, ``'none'`` returns the features as
  float32. A class with one example becomes all zeros; a dimension with zero
  (or < 1e-8) variance in a class is divided by 1 instead of σ.

  Args:
    features: ``[N, D]`` features f(x).
    labels: ``[N]`` integer class labels (any ids).
    mode: ``'none'``, ``'mean'`` or ``'mean_std'``.

  Returns:
    ``[N, D]`` float32 standardised features Z.
  """
  if mode not in STANDARDISE_MODES:
    raise ValueError(
        f"standardise must be one of {STANDARDISE_MODES}, got {mode!r}.")
  features = np.asarray(features, np.float32)
  labels = np.asarray(labels)
  if features.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {features.shape}.")
  if labels.shape != (features.shape[0],):
    raise ValueError(f"labels must be [N] = [{features.shape[0]}], got shape "
                     f"{labels.shape}.")
  if mode == "none" or features.shape[0] == 0:
    return features.copy()
  # Sort once so every class is a contiguous block, standardise the blocks in
  # place (one [N, D] copy plus the output), then undo the sort.
  order = np.argsort(labels, kind="stable")
  _, starts = np.unique(labels[order], return_index=True)
  ends = np.append(starts[1:], len(order))
  z = features[order]
  for start, end in zip(starts, ends):
    block = z[start:end]
    block -= block.mean(axis=0, dtype=np.float64).astype(np.float32)
    if mode == "mean_std":
      std = np.sqrt(np.mean(np.square(block, dtype=np.float64), axis=0))
      block /= np.where(std < _STD_EPS, 1.0, std).astype(np.float32)
  out = np.empty_like(z)
  out[order] = z
  return out


def compute_surrogate_labels(features: np.ndarray, labels: np.ndarray,
                             num_clusters: int, *, standardise: str = "mean",
                             seed: int = 0, niter: int = 20,
                             nredo: int = 1) -> np.ndarray:
  """Surrogate labels Y_β = Cluster(Stand(features), C) of MIC Algorithm 1.

  Standardises per class (:func:`standardise_per_class`) and runs FAISS k-means
  (:func:`dmlx.index.kmeans`, k-means++ seeding) into ``num_clusters`` clusters.

  Args:
    features: ``[N, D]`` training-set features (pooled backbone features for
      the first clustering, E_β's embedding afterwards).
    labels: ``[N]`` class labels, used only for the standardisation.
    num_clusters: C, ``1 <= C <= N``.
    standardise: ``'none'``, ``'mean'`` or ``'mean_std'``.
    seed: k-means seed.
    niter: Lloyd iterations.
    nredo: k-means restarts (seeds ``seed, seed + 1, ...``); the run with the
      lowest objective is kept.

  Returns:
    ``[N] int32`` cluster ids in ``[0, C)``.
  """
  from dmlx import index  # FAISS is host-only; imported where it is used.
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {features.shape}.")
  num_clusters = int(num_clusters)
  if not 1 <= num_clusters <= features.shape[0]:
    raise ValueError(
        f"num_clusters must lie in [1, N={features.shape[0]}], got "
        f"{num_clusters}: cannot split {features.shape[0]} examples into "
        f"{num_clusters} surrogate clusters; set config.method.num_clusters "
        f"to at most {features.shape[0]} (or cluster more examples).")
  if not np.all(np.isfinite(features)):
    raise ValueError("features for clustering contain NaN or inf.")
  z = standardise_per_class(features, labels, standardise)
  _, assignments = index.kmeans(z, num_clusters, niter=niter, seed=int(seed),
                                nredo=nredo)
  return np.asarray(assignments, np.int32)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
  """NMI of two labelings (logged: surrogate vs class labels)."""
  from sklearn.metrics import normalized_mutual_info_score  # pylint: disable=g-import-not-at-top
  return float(normalized_mutual_info_score(a, b))
