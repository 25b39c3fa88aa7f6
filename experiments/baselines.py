"""Every baseline loss on the procedural dataset's zero-shot split, one budget.

  python experiments/baselines.py            # full table (all losses)
  python experiments/baselines.py --quick    # 1 epoch each, a smoke test
  python experiments/baselines.py --losses=margin,proxy_nca --epochs=4

Prints Recall@1/2/4/8, NMI and MAP@R on the 60 unseen classes for each loss
next to the untrained network, and writes experiments/results/baselines.json.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("losses", "", "Comma-separated losses (default: all).")
flags.DEFINE_integer("epochs", 8, "Epochs per loss.")
flags.DEFINE_bool("quick", False, "One epoch per loss on fewer classes.")
flags.DEFINE_string("workdir", "/tmp/dmlx_baselines", "Where runs go.")
flags.DEFINE_string("out", os.path.join(common.ROOT, "experiments", "results",
                                        "baselines.json"), "JSON output.")


def main(argv):
  del argv
  from configs import common as config_common  # pylint: disable=g-import-not-at-top
  names = (FLAGS.losses.split(",") if FLAGS.losses else
           [n for n in config_common.BASELINES if n != "smooth_triplet"])
  rows, results = {}, {}
  for name in names:
    config = common.load_config("configs/baselines.py", f"loss={name}")
    updates = {"train.epochs": 1 if FLAGS.quick else FLAGS.epochs,
               "train.tensorboard": False, "eval.train_subset": 1000}
    if FLAGS.quick:
      updates.update({"data.options.num_classes": 40, "data.options.per_class": 20})
    config = common.override(config, updates)
    final = common.train(config, os.path.join(FLAGS.workdir, name))
    if not rows and final["untrained"]:
      rows["untrained network"] = final["untrained"]["test"]["embedding"]
    rows[name] = dict(final["trained"]["test"]["embedding"], seconds=final["seconds"])
    results[name] = final
    print(common.table(rows), flush=True)
  common.save_json(results, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
