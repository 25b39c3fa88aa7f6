"""Few-shot classification on Omniglot's unseen alphabets from the trained
runs of the real-data study: Lake et al.'s 20-way one-shot task (and 5-way),
over all test alphabets and within one alphabet, for every method's
finished runs (``experiments/real_data.py``'s layout), with the same 1,000
seeded episodes for every network (``dmlx.eval.few_shot``).

  python experiments/few_shot.py [--workdir=/work/dmlx_runs] [--protocols=test,test_pretrained]

Writes ``experiments/results/few_shot_omniglot.{json,md}``. Nothing is
trained; each run is read with ``dmlx.inference.Embedder`` from its work
directory, and the test alphabets are those of the run's own config.
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/work/dmlx_runs", "Where the real-data runs are.")
flags.DEFINE_string("protocols", "test,test_pretrained", "Protocols (folders) to read.")
flags.DEFINE_integer("episodes", 1000, "Episodes per task.")
flags.DEFINE_string("out", os.path.join(common.ROOT, "experiments", "results",
                                        "few_shot_omniglot"), "Output prefix.")

TASKS = ((20, 1), (5, 1))          # (ways, shots); one query per class
GROUP = "alphabet"


def _tasks(labels: np.ndarray, groups: np.ndarray) -> dict:
  from dmlx.eval import few_shot  # pylint: disable=g-import-not-at-top
  out = {}
  for ways, shots in TASKS:
    for name, g in (("all", None), ("within", groups)):
      out[f"{ways}w{shots}s_{name}"] = few_shot.make_episodes(
          labels, n_way=ways, k_shot=shots, n_query=1, episodes=FLAGS.episodes,
          seed=0, groups=g)
  return out


def evaluate_run(workdir: str, cache: dict) -> dict[str, float]:
  """The few-shot accuracies of one run on its own test split."""
  from dmlx import inference  # pylint: disable=g-import-not-at-top
  from dmlx.data import pipeline  # pylint: disable=g-import-not-at-top
  from dmlx.eval import few_shot  # pylint: disable=g-import-not-at-top
  embedder = inference.Embedder.from_workdir(workdir)
  key = embedder.data_config.to_json_best_effort(sort_keys=True)
  if key not in cache:
    test = pipeline.load_splits(embedder.data_config)["test"]
    cache[key] = (test, _tasks(test.labels, test.attributes[GROUP]))
  test, tasks = cache[key]
  feats = embedder.features(test.images)["embedding"]
  return {name: few_shot.few_shot_accuracy(feats, test.labels, eps,
                                           metric=embedder.metric).accuracy
          for name, eps in tasks.items()}


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  cache: dict = {}
  results: dict = {}
  for protocol in FLAGS.protocols.split(","):
    root = os.path.join(FLAGS.workdir, "omniglot", protocol)
    for method in sorted(os.listdir(root)) if os.path.isdir(root) else []:
      runs = [os.path.join(root, method, f"seed{seed}")
              for seed, _ in common.finals(os.path.join(root, method))]
      runs = [r for r in runs if os.path.exists(os.path.join(r, "checkpoints"))]
      if runs:                      # (PML's PyTorch runs keep no dmlx checkpoint)
        results.setdefault(protocol, {})[method] = [evaluate_run(r, cache) for r in runs]
        print(protocol, method, len(runs), "runs", flush=True)
  common.save_json(results, FLAGS.out + ".json")
  names = [f"{w}w{s}s_{g}" for w, s in TASKS for g in ("all", "within")]
  lines = ["# Few-shot accuracy on Omniglot's unseen alphabets", "",
           f"{FLAGS.episodes} seeded episodes per task (the same for every network), one "
           "query per class; `all`: classes drawn from every test alphabet, `within`: "
           "from one alphabet (Lake et al. 2015's harder setting); mean ± std over seeds.", ""]
  for protocol, methods in results.items():
    lines += [f"## {protocol}", "",
              "| method | seeds | " + " | ".join(
                  f"{w}-way {s}-shot, {g}" for w, s in TASKS for g in ("all", "within"))
              + " |",
              "|---" * (len(names) + 2) + "|"]
    for method, runs in methods.items():
      lines.append(f"| {method} | {len(runs)} | " + " | ".join(
          common.mean_std([r[n] for r in runs], 3) for n in names) + " |")
    lines.append("")
  with open(FLAGS.out + ".md", "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
