"""A searchable FAISS index over a gallery of :class:`Embeddings`."""
from __future__ import annotations

import dataclasses
import json
import os

import faiss
import numpy as np

from dmlx.index import search as search_lib
from dmlx.index.common import _resolve_gpu
from dmlx.inference.embeddings import Embeddings

# ``index_type='auto'``: exact search up to this many gallery vectors, then
# HNSW (graph, CPU) -- or IVF on a GPU, where faiss has no HNSW -- and IVF
# past HNSW_MAX, where the graph's memory (~hnsw_m * 8 bytes a vector) and
# build time grow too large.
FLAT_MAX = 50_000
HNSW_MAX = 2_000_000
_FILES = ("index.faiss", "gallery.npz", "index.json")


def choose_index_type(n: int, gpu: bool = False) -> str:
  """``'flat'``, ``'hnsw'`` or ``'ivf'`` for a gallery of ``n`` vectors."""
  if n <= FLAT_MAX:
    return "flat"
  if n <= HNSW_MAX and not gpu:
    return "hnsw"
  return "ivf"


@dataclasses.dataclass(frozen=True)
class Neighbours:
  """The ``k`` nearest gallery entries of each query, nearest first:
  ``ids`` ``[Q, k]`` gallery rows (``-1`` where fewer exist), ``distances``
  (squared Euclidean for ``'l2'``, ``1 - cos`` for ``'cosine'``), the
  neighbours' ``labels`` (``-1`` unknown; None without gallery labels) and
  ``names``."""
  ids: np.ndarray
  distances: np.ndarray
  labels: np.ndarray | None
  names: tuple[tuple[str, ...], ...]

  def correct(self, query_labels: np.ndarray) -> np.ndarray:
    """``[Q, k]`` bool: whether each neighbour has its query's class name."""
    if self.labels is None:
      raise ValueError("The gallery has no labels.")
    return self.labels == np.asarray(query_labels)[:, None]


class GalleryIndex:
  """``GalleryIndex.build(gallery)`` then ``search(queries, k)``;
  ``save(directory)`` / ``GalleryIndex.load(directory)``.

  ``'cosine'`` galleries are L2-normalised and searched by inner product.
  A GPU is used when faiss sees one (``use_gpu='auto'``); a saved index is
  always the CPU form."""

  def __init__(self, index: faiss.Index, gallery: Embeddings, index_type: str):
    self.index = index
    self.gallery = gallery
    self.index_type = index_type

  @property
  def metric(self) -> str:
    return self.gallery.metric

  def __len__(self) -> int:
    return int(self.index.ntotal)

  @classmethod
  def build(cls, gallery: Embeddings, *, index_type: str = "auto",
            metric: str | None = None, use_gpu="auto", **options) -> "GalleryIndex":
    """Indexes ``gallery`` (``metric`` defaults to the gallery's own;
    ``options`` go to :func:`dmlx.index.build_index`: ``nlist``,
    ``nprobe``, ``hnsw_m``, ``ef_search``, ``seed``)."""
    if metric is not None and metric != gallery.metric:
      gallery = dataclasses.replace(gallery, metric=metric)
    if not len(gallery):
      raise ValueError("The gallery is empty.")
    gpu = _resolve_gpu(use_gpu)
    if index_type == "auto":
      index_type = choose_index_type(len(gallery), gpu)
    vectors = _prepare(gallery.vectors, gallery.metric)
    index = search_lib.build_index(
        vectors, index_type=index_type, use_gpu=gpu,
        metric="ip" if gallery.metric == "cosine" else "l2", **options)
    return cls(index, gallery, index_type)

  def search(self, queries: Embeddings | np.ndarray, k: int = 5, *,
             exclude_self: bool = False) -> Neighbours:
    """The ``k`` nearest gallery entries of each query; ``exclude_self``
    when the queries are the gallery itself (each query's own row dropped)."""
    vectors = queries.vectors if isinstance(queries, Embeddings) else np.asarray(queries)
    if vectors.ndim != 2 or vectors.shape[1] != self.index.d:
      raise ValueError(f"Queries of shape {vectors.shape}; the index holds "
                       f"{self.index.d}-d vectors.")
    k = int(k)
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}.")
    k_avail = min(k, len(self) - (1 if exclude_self else 0))
    ids = np.full((len(vectors), k), -1, np.int64)
    dist = np.full((len(vectors), k), np.inf, np.float32)
    if k_avail > 0 and len(vectors):
      for start, d, i in search_lib.search_batches(
          self.index, _prepare(vectors, self.metric), k_avail, exclude_self=exclude_self):
        ids[start:start + len(i), :k_avail] = i
        dist[start:start + len(i), :k_avail] = (1.0 - d if self.metric == "cosine" else d)
    dist[ids < 0] = np.inf
    labels = None
    if self.gallery.labels is not None:
      labels = np.where(ids >= 0, np.asarray(self.gallery.labels)[np.maximum(ids, 0)], -1)
    names = tuple(tuple(self.gallery.names[j] if j >= 0 else "" for j in row) for row in ids)
    return Neighbours(ids=ids, distances=dist, labels=labels, names=names)

  def save(self, directory: str) -> str:
    """Writes ``index.faiss``, ``gallery.npz`` and ``index.json`` into
    ``directory`` (each atomically); returns it."""
    os.makedirs(directory, exist_ok=True)
    index = self.index
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
      index = faiss.index_gpu_to_cpu(index)
    tmp = os.path.join(directory, "index.faiss.tmp")
    faiss.write_index(index, tmp)
    os.replace(tmp, os.path.join(directory, "index.faiss"))
    self.gallery.save(os.path.join(directory, "gallery.npz"))
    meta = dict(index_type=self.index_type, metric=self.metric, size=len(self),
                dim=int(self.index.d), layer=self.gallery.layer, model=self.gallery.model)
    with open(os.path.join(directory, "index.json.tmp"), "w") as f:
      json.dump(meta, f, indent=2)
    os.replace(os.path.join(directory, "index.json.tmp"),
               os.path.join(directory, "index.json"))
    return directory

  @classmethod
  def load(cls, directory: str, *, use_gpu="auto") -> "GalleryIndex":
    """An index written by :meth:`save` (moved to the GPU when one is seen)."""
    missing = [f for f in _FILES if not os.path.exists(os.path.join(directory, f))]
    if missing:
      raise FileNotFoundError(f"{directory!r} is not a saved GalleryIndex "
                              f"(missing {', '.join(missing)}).")
    with open(os.path.join(directory, "index.json")) as f:
      meta = json.load(f)
    index = faiss.read_index(os.path.join(directory, "index.faiss"))
    gallery = Embeddings.load(os.path.join(directory, "gallery.npz"))
    if index.ntotal != len(gallery):
      raise ValueError(f"{directory!r}: the index holds {index.ntotal} vectors, "
                       f"the gallery {len(gallery)}.")
    if _resolve_gpu(use_gpu) and meta["index_type"] != "hnsw":
      index = faiss.index_cpu_to_all_gpus(index)
    return cls(index, gallery, meta["index_type"])


def _prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
  v = np.ascontiguousarray(vectors, np.float32)
  if metric == "cosine":
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  return v
