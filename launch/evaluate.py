"""Evaluates the latest checkpoint of a run exactly as the end of training
does: Recall@K, NMI and MAP@R per layer and the run's evaluators.

  python launch/evaluate.py --config=configs/default.py --workdir=/tmp/dmlx_run \\
      [--config.eval.layers=pooled,embedding] [--json]

On a finished run it prints the metrics of its ``final_metrics.json``.
Few-shot episodes on the test classes (``dmlx.eval.few_shot``), e.g. Omniglot's
20-way one-shot task, also within alphabets:

  python launch/evaluate.py --config=configs/default.py --workdir=workdirs/default \
      --config.eval.few_shot.ways=20 [--config.eval.few_shot.shots=5] \
      [--config.eval.few_shot.classifier=prototype] [--config.eval.few_shot.group=alphabet]
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
from ml_collections import config_flags

import configs  # pylint: disable=wrong-import-position
from dmlx.train import distributed  # pylint: disable=wrong-import-position
from dmlx import host_memory  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's work directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("json", False, "Print the metrics as JSON (the layout of "
                  "final_metrics.json) instead of a table.")
distributed.define_flags()
host_memory.define_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  distributed.initialize_from_flags()   # before any device is touched
  host_memory.configure(FLAGS.host_memory)   # before the first step
  from dmlx import train  # pylint: disable=g-import-not-at-top
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  metrics = train.evaluate_run(FLAGS.config, FLAGS.workdir, FLAGS.step)
  if FLAGS.json:
    print(json.dumps(metrics, indent=2))
  else:
    print(loop.report(metrics))


if __name__ == "__main__":
  sys.argv = configs.translate_argv(sys.argv, ROOT)
  app.run(main)
