"""Run by test_multi_process.py, as one process of a ``launch/cluster/local.py``
job or alone: trains a tiny config of a method for a few steps, bank / cluster
refreshes included, and prints this process's view of the final metrics.

  python tests/mp_train_check.py <method> <workdir> [<stop_after_epochs> [<epochs>]]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from dmlx.train import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position

distributed.initialize("auto")      # from the launcher's environment

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import tiny_configs  # pylint: disable=wrong-import-position
from dmlx.train import loop  # pylint: disable=wrong-import-position


def main(name: str, workdir: str, stop_after: int = 0, epochs: int = 3) -> None:
  c = tiny_configs.method_config(name, steps=3, epochs=epochs)
  c.eval.metrics = ("recall", "map_r")
  c.sampler.batch_size = 16
  c.train.checkpoint_every_steps = 2
  c.train.stop_after_epochs = stop_after
  final = loop.train_and_evaluate(c, workdir)
  evaluated = None
  if "trained" in final:     # launch/evaluate.py's path: restore, evaluate
    evaluated = loop.evaluate_run(c, workdir)["trained"]["test"]["embedding"]
  print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                    "devices": jax.device_count(),
                    "stopped": final.get("stopped_at_step"),
                    "preempted": final.get("preempted_at_step"),
                    "test": (final.get("trained") or {}).get("test", {}).get("embedding"),
                    "evaluated": evaluated,
                    "method": final.get("method") or {}}), flush=True)
  if "preempted_at_step" in final:
    sys.exit(75)       # as launch/train.py


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:5]))
