"""Evaluates the latest checkpoint of a run: Recall@K, NMI and MAP@R per layer.

  python launch/evaluate.py --config=configs/default.py --workdir=/tmp/dmlx_run \
      [--config.eval.layers=pooled,embedding]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's work directory.")
flags.DEFINE_string("split", "test", "test, train, or test,train.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  print(loop.evaluate_checkpoint(FLAGS.config, FLAGS.workdir,
                                     tuple(FLAGS.split.split(","))))


if __name__ == "__main__":
  app.run(main)
