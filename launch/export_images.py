"""Writes a split of a config's dataset as a folder of PNG files, one folder
per class, decoded back by ``launch/embed.py`` to exactly the arrays the run
trained and was evaluated on (a gallery to try the inference commands on).

  python launch/export_images.py --config=configs/default.py --split=test \\
      --out=workdirs/default/test_images
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from ml_collections import config_flags

import configs  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A run's config file.", lock_config=True)
flags.DEFINE_enum("split", "test", ["train", "test"], "Which split to write.")
flags.DEFINE_string("out", None, "The folder to write <class>/<i>.png into.")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  del argv
  from dmlx.data import pipeline  # pylint: disable=g-import-not-at-top
  from dmlx.inference import inputs  # pylint: disable=g-import-not-at-top
  from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
  data = run_lib.data_config(FLAGS.config)
  ds = pipeline.load_splits(data)[FLAGS.split]
  opts = inputs.DecodeOptions.from_data_config(data, ds.images.shape[-1])
  names = inputs.write_images(ds.images, ds.labels, ds.class_names, FLAGS.out, opts)
  print(f"wrote {len(names)} images of {ds.num_classes} classes ({FLAGS.split} "
        f"split of {data.name}) to {FLAGS.out}")


if __name__ == "__main__":
  sys.argv = configs.translate_argv(sys.argv, ROOT)
  app.run(main)
