"""Trains a dmlx model from an ml_collections config.

  python launch/train.py --config=configs/default.py --workdir=/tmp/dmlx_run \\
      --config.train.epochs=3
  python launch/train.py --config=configs/real_data.py:dataset=omniglot,method=nngk

Rerunning the same command with the same ``--workdir`` resumes from the latest
checkpoint. SIGTERM (SLURM's and preemptible VMs' notice) checkpoints the
current step and exits with status 75 (``EX_TEMPFAIL``: requeue me). A config file that became a variant of another
(``configs/omniglot_nngk.py``) is still accepted: the launcher says what it
is now. Kept short on purpose: the work is in ``dmlx.train``.
"""
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
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and logs go "
                    "(default: workdirs/<config name>).")
distributed.define_flags()
host_memory.define_flag()
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  distributed.initialize_from_flags()   # before any device is touched
  host_memory.configure(FLAGS.host_memory)   # before the first step
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  workdir = FLAGS.workdir or os.path.join(
      "workdirs", os.path.splitext(os.path.basename(FLAGS["config"].config_filename))[0])
  result = loop.train_and_evaluate(FLAGS.config, workdir)
  if "preempted_at_step" in result:
    from dmlx.train import preemption  # pylint: disable=g-import-not-at-top
    sys.exit(preemption.EXIT_PREEMPTED)   # checkpointed; the same command resumes


if __name__ == "__main__":
  sys.argv = configs.translate_argv(sys.argv, ROOT)
  app.run(main)
