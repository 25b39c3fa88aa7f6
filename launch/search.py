"""Searches a gallery with a trained run's network and draws the result.

  # the gallery searched with its own images (each query's own entry left out)
  python launch/search.py --workdir=workdirs/default --gallery=/tmp/gallery.npz \\
      --k=5 --out=/tmp/search.png
  # other queries; the index saved for later (--gallery=/tmp/index loads it)
  python launch/search.py --workdir=workdirs/default --gallery=<folder|zip|.npz> \\
      --queries=<folder|zip|.npz> --save_index=/tmp/index --out=/tmp/search.png

``--gallery`` and ``--queries`` are embeddings files (``launch/embed.py``),
saved index folders, or images (then embedded with ``--workdir``). The PNG
shows ``--num_queries`` queries (a seeded choice), each with its ``k``
nearest gallery images, outlined green / red where labels are known (right /
wrong class). Prints Precision@k when both sides have labels; ``--json``
writes every query's neighbours.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's work directory (needed when "
                    "--gallery or --queries are images).")
flags.DEFINE_string("gallery", None, "Embeddings .npz, a saved index folder, "
                    "or images (folder / zip).")
flags.DEFINE_string("queries", None, "Embeddings .npz or images; default: the "
                    "gallery itself, each query's own entry left out.")
flags.DEFINE_integer("k", 5, "Neighbours per query.")
flags.DEFINE_string("out", "search.png", "The PNG grid.")
flags.DEFINE_integer("num_queries", 8, "Queries drawn in the grid.")
flags.DEFINE_integer("seed", 0, "Seed of the queries drawn.")
flags.DEFINE_string("index_type", "auto", "flat, hnsw, ivf or auto (by size).")
flags.DEFINE_string("save_index", "", "Save the gallery index to this folder.")
flags.DEFINE_string("json", "", "Write every query's neighbours to this file.")
flags.DEFINE_string("layer", "embedding", "Layer embedded for image inputs.")
flags.DEFINE_integer("display_size", 64, "Side of each image in the grid.")
flags.mark_flags_as_required(["gallery"])


def _embeddings(spec: str, embedder_box: list):
  from dmlx import inference  # pylint: disable=g-import-not-at-top
  if spec.endswith(".npz"):
    return inference.Embeddings.load(spec)
  if not FLAGS.workdir:
    raise app.UsageError(f"{spec!r} is images: pass --workdir to embed them.")
  if not embedder_box:
    embedder_box.append(inference.Embedder.from_workdir(FLAGS.workdir))
  return embedder_box[0].embed(spec, FLAGS.layer)


def _display(e, rows: np.ndarray):
  """The images of rows of embeddings ``e``, for the grid (RGB, square)."""
  from dmlx.inference import inputs  # pylint: disable=g-import-not-at-top
  opts = inputs.DecodeOptions(image_size=FLAGS.display_size, channels=3,
                              resize="shorter_crop")
  names = [e.names[int(i)] for i in rows]
  if any(n.startswith("#") for n in names):
    return None
  return inputs.read_named(e.source, names, opts)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from dmlx import inference  # pylint: disable=g-import-not-at-top
  from dmlx import report  # pylint: disable=g-import-not-at-top
  box: list = []
  if os.path.isdir(FLAGS.gallery) and os.path.exists(
      os.path.join(FLAGS.gallery, "index.json")):
    index = inference.GalleryIndex.load(FLAGS.gallery)
  else:
    index = inference.GalleryIndex.build(_embeddings(FLAGS.gallery, box),
                                         index_type=FLAGS.index_type)
  gallery = index.gallery
  if FLAGS.save_index:
    index.save(FLAGS.save_index)
    print(f"saved the {index.index_type} index of {len(index)} vectors to "
          f"{FLAGS.save_index}")
  same = not FLAGS.queries
  queries = gallery if same else _embeddings(FLAGS.queries, box)
  hits = index.search(queries, FLAGS.k, exclude_self=same)
  labelled = queries.labels is not None and hits.labels is not None
  if labelled:
    # Labels compare by class name: the two sides may number classes apart.
    qnames = np.array(queries.class_names, dtype=object)[queries.labels]
    gnames = np.array(gallery.class_names + ("",), dtype=object)[hits.labels]
    correct = gnames == qnames[:, None]
    print(f"Precision@{FLAGS.k} over {len(queries)} queries: {correct.mean():.3f}; "
          f"Recall@1 {correct[:, 0].mean():.3f}")
  else:
    correct = None
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump([dict(query=q, neighbours=list(n), distances=d.tolist())
                 for q, n, d in zip(queries.names, hits.names, hits.distances)],
                f, indent=1)
  rows = np.sort(np.random.default_rng(FLAGS.seed).choice(
      len(queries), min(FLAGS.num_queries, len(queries)), replace=False))
  qimg = _display(queries, rows)
  if qimg is None or not gallery.source and not os.path.isabs(gallery.names[0]):
    print("no grid: the embeddings were made from in-memory arrays.")
    return
  nimg = np.stack([_display(gallery, hits.ids[r][hits.ids[r] >= 0]) for r in rows]) \
      if (hits.ids[rows] >= 0).all() else None
  if nimg is None:
    print("no grid: fewer gallery entries than k.")
    return
  path = report.retrieval_grid(
      qimg, nimg, FLAGS.out, correct=None if correct is None else correct[rows],
      query_titles=[os.path.basename(os.path.dirname(queries.names[r])) or queries.names[r]
                    for r in rows], distances=hits.distances[rows])
  print(f"wrote {path}: {len(rows)} queries x {FLAGS.k} neighbours")


if __name__ == "__main__":
  app.run(main)
