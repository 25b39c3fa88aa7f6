"""Host-side nearest-neighbour search and clustering (FAISS, CPU or GPU)."""
from dmlx.index.faiss_ops import build_index
from dmlx.index.faiss_ops import kmeans
from dmlx.index.faiss_ops import kmeans_plus_plus
from dmlx.index.faiss_ops import knn
from dmlx.index.faiss_ops import measure_recall
from dmlx.index.faiss_ops import search_batches

__all__ = [
    "build_index",
    "kmeans",
    "kmeans_plus_plus",
    "knn",
    "measure_recall",
    "search_batches",
]
