"""Host-side FAISS helpers: k-nearest-neighbour search and k-means.

These run between epochs on numpy float32 arrays (embeddings gathered from
the devices) and build the immutable method state of NNGK, Magnet and MIC and
the evaluation metrics of ``dmlx.eval``. Every search is done in query
batches, so memory stays O(batch_size * k) besides the index itself: no
function here ever builds an N x N distance matrix.

The same code path runs on GPU when faiss reports GPUs
(``faiss.get_num_gpus() > 0``, a ``faiss-gpu`` build): flat and IVF indexes
are moved with ``faiss.index_cpu_to_all_gpus`` and k-means uses
``faiss.Kmeans(gpu=True)``. HNSW has no GPU implementation and stays on CPU.

Conventions:
  * ``metric='l2'`` returns *squared* Euclidean distances (smaller is nearer);
    ``metric='ip'`` returns inner products (larger is nearer).
  * A neighbour that does not exist (k larger than the database, or an
    approximate index that found fewer than k) is returned with index ``-1``
    and the worst possible score: ``+inf`` distance for ``'l2'`` (``-inf``
    similarity for ``'ip'``).

The search lives in ``dmlx.index.search``, k-means in
``dmlx.index.clustering`` and the shared checks in ``dmlx.index.common``;
this module gathers them under their one import path.
"""
# pylint: disable=unused-import
from dmlx.index.clustering import kmeans
from dmlx.index.clustering import kmeans_plus_plus
from dmlx.index.common import IndexType
from dmlx.index.common import Metric
from dmlx.index.common import UseGpu
from dmlx.index.common import _INDEX_TYPES
from dmlx.index.common import _METRICS
from dmlx.index.common import _as_matrix
from dmlx.index.common import _check_choice
from dmlx.index.common import _check_positive
from dmlx.index.common import _resolve_gpu
from dmlx.index.search import build_index
from dmlx.index.search import knn
from dmlx.index.search import measure_recall
from dmlx.index.search import search_batches
