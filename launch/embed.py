"""Embeds images with a trained run's network and saves the embeddings.

  python launch/embed.py --workdir=workdirs/default --images=<folder|zip|file> \\
      --out=/tmp/gallery.npz [--layer=embedding] [--step=N]

The run's work directory is enough (its ``config.json`` and latest
checkpoint; a run still training works too). Files are decoded as the run's
dataset decodes its own (size, grey / RGB, resize rule); images in class
folders (``<root>/<class>/<image>``) keep their labels. The ``.npz`` holds
the vectors, file names, labels, layer and metric (``dmlx.inference.Embeddings``).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging

from dmlx import host_memory  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's work directory.")
flags.DEFINE_string("images", None, "A folder (searched recursively), a zip or "
                    "an image file.")
flags.DEFINE_string("out", None, "The embeddings file (.npz).")
flags.DEFINE_string("layer", "embedding", "Which named output to save "
                    "(embedding, pooled, block3, 'block2@4', ...).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_integer("batch_size", None, "Images per batch (default: the "
                     "run's eval.batch_size).")
flags.mark_flags_as_required(["workdir", "images", "out"])
host_memory.define_flag()


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  host_memory.configure(FLAGS.host_memory)
  from dmlx import inference  # pylint: disable=g-import-not-at-top
  embedder = inference.Embedder.from_workdir(FLAGS.workdir, step=FLAGS.step,
                                             batch_size=FLAGS.batch_size)
  embeddings = embedder.embed(FLAGS.images, FLAGS.layer)
  path = embeddings.save(FLAGS.out)
  labels = (f", {len(embeddings.class_names)} classes from the folders"
            if embeddings.labels is not None else "")
  print(f"embedded {len(embeddings)} images{labels} with {FLAGS.workdir} at step "
        f"{embedder.step}: {FLAGS.layer} [{embeddings.vectors.shape[1]}-d, "
        f"{embeddings.metric}] -> {path}")


if __name__ == "__main__":
  app.run(main)
