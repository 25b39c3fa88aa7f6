"""Clustering quality of embeddings: NMI of a k-means clustering with the
labels."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from dmlx.eval.neighbours import _as_labels
from dmlx.index import faiss_ops


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
