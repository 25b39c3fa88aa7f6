"""Using a trained dmlx model: embed images, index a gallery, search it.

  from dmlx import inference
  embedder = inference.Embedder.from_workdir("/tmp/run")
  gallery = embedder.embed("/data/gallery")          # folder, zip, files, arrays, PIL images
  index = inference.GalleryIndex.build(gallery)      # FAISS: flat, HNSW or IVF by size
  hits = index.search(embedder.embed("/data/queries"), k=5)
  hits.ids, hits.distances, hits.labels, hits.names

The same commands: ``launch/embed.py``, ``launch/search.py`` and, for
few-shot episodes, ``launch/evaluate.py --config.eval.few_shot.ways=20``.
"""
from dmlx.inference.embedder import Embedder
from dmlx.inference.embeddings import Embeddings
from dmlx.inference.index import GalleryIndex
from dmlx.inference.index import Neighbours
from dmlx.inference.inputs import DecodeOptions
from dmlx.inference.inputs import ImageSet
from dmlx.inference.inputs import read_images
from dmlx.inference.workdir import read_workdir

__all__ = ["DecodeOptions", "Embedder", "Embeddings", "GalleryIndex",
           "ImageSet", "Neighbours", "read_images", "read_workdir"]
