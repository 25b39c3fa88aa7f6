"""Run in a subprocess (see test_data_parallel.py): trains a tiny config of a
method for a few steps, bank / cluster / surrogate refreshes included, on
every visible device (8 simulated ones, or 1) and prints its final metrics."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

import tiny_configs  # pylint: disable=wrong-import-position
from dmlx.train import loop  # pylint: disable=wrong-import-position


def main(name: str, workdir: str) -> None:
  c = tiny_configs.method_config(name, steps=3, epochs=2)
  c.eval.metrics = ("recall", "map_r")
  c.sampler.batch_size = 16        # random batches (NNGK): divisible by 8 devices
  final = loop.train_and_evaluate(c, workdir)
  print(json.dumps({"devices": jax.device_count(),
                    "test": final["trained"]["test"]["embedding"],
                    "method": final.get("method") or {}}))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
