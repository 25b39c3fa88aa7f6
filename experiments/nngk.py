"""NNGK's claims at small scale, on the procedural dataset (Meyer, Harwood &
Drummond, "Deep metric learning and image classification with nearest
neighbour Gaussian kernels", ICIP 2018).

  python experiments/nngk.py            # full version (~200 CPU-s, 10 min)
  python experiments/nngk.py --seeds=3  # 3 seeds (3x as long)
  python experiments/nngk.py --first_seed=1 --seeds=2 --out=/tmp/s12
  python experiments/nngk.py \\
      --merge=experiments/results/nngk.json,/tmp/s12/nngk.json  # pool seeds
  python experiments/nngk.py --quick    # smoke version (~75 CPU-s)

Every run uses the network, data and budget of ``configs/nngk.py:dataset=procedural``
(a 3-block small CNN, 64-d embedding, batches of 20, the same epochs); only
the loss and what it needs (sampler, normalisation) differ:

(a) Classification split (all classes, half of each class's images train,
    the rest test), Section 3.2 / Tables 3-4, claim "NNGK ≥ softmax": NNGK's
    accuracy with its own classifier (eq. 3 over the 100 nearest training
    centres, ``Method.evaluate``) against a softmax cross-entropy network's
    accuracy with its own linear classifier head (restored from the
    checkpoint with ``dmlx.train.restore``). Both are also scored by 1-NN
    on their embeddings, a classifier that favours neither loss.
(b) Zero-shot split (first half of the classes train, the unseen half test),
    Section 3.1 / Tables 1-2, claim "NNGK beats triplet semi-hard": Recall@K,
    NMI and MAP@R of NNGK and of the triplet loss with semi-hard mining
    (FaceNet; L2-normalised embeddings, margin 0.2, 5 classes x 4 images).
(c) Ablation (supplementary Table 5): learned centre weights w_i against
    fixed w_i = 1, on both splits.

Each configuration runs ``--seeds`` times (default 1; the seed sets the
network initialisation and batch order, the data are fixed); with several
seeds the tables give mean ± std. The script prints the tables and writes
``experiments/results/nngk.json`` and ``nngk.png`` (``nngk_quick.*`` with
``--quick``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke version: 3 epochs, fewer classes, "
                  "one seed.")
flags.DEFINE_integer("seeds", 1, "Seeds per configuration (full version; "
                     "each seed is 6 more runs, ~4 CPU-minutes).")
flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed, first_seed + 1, "
                     "...")
flags.DEFINE_integer("epochs", 0, "Epochs per run (0: the config's).")
flags.DEFINE_string("workdir", "/tmp/dmlx_nngk_experiment", "Where runs go.")
flags.DEFINE_string("out", os.path.join(common.ROOT, "experiments", "results"),
                    "Folder for nngk.json and nngk.png.")
flags.DEFINE_list("merge", [], "Train nothing: pool the runs of these result "
                  "JSON files (e.g. runs with different --first_seed) into "
                  "one table, written as nngk_merged.json / .png.")

# Baselines: what changes from the NNGK config (same network and budget).
SOFTMAX = {"method.name": "loss", "loss.name": "softmax", "loss.kwargs": {},
           "model.normalise": False}
TRIPLET = {"method.name": "loss", "loss.name": "triplet_semihard",
           "loss.kwargs": {"margin": 0.2}, "model.normalise": True,
           "sampler.name": "pk", "sampler.classes_per_batch": 5,
           "sampler.images_per_class": 4}
FIXED = {"method.learn_weights": False}

# (split, name) -> overrides of configs/nngk.py:dataset=procedural[,cls].
RUNS = {
    ("cls", "nngk"): {},
    ("cls", "nngk_fixed_w"): FIXED,
    ("cls", "softmax"): SOFTMAX,
    ("zsl", "nngk"): {},
    ("zsl", "nngk_fixed_w"): FIXED,
    ("zsl", "triplet_semihard"): TRIPLET,
}


def _config(split: str, overrides: dict, seed: int):
  config = common.load_config("configs/nngk.py",
                              "dataset=procedural,cls" if split == "cls"
                              else "dataset=procedural")
  updates = {"seed": seed, "train.tensorboard": False, **overrides}
  if FLAGS.quick:
    updates.update({"train.epochs": 3, "data.options.num_classes": 24,
                    "data.options.per_class": 20})
  elif FLAGS.epochs:
    updates["train.epochs"] = FLAGS.epochs
  return common.override(config, updates)


def classifier_accuracies(config, workdir: str) -> dict[str, float]:
  """Restores the trained run and scores its test embeddings: 1-NN among the
  training embeddings and, for a softmax run, its own linear head."""
  from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top
  from dmlx import train  # pylint: disable=g-import-not-at-top
  restored = train.restore(config, workdir)
  try:
    run = restored.run
    ctx = restored.context()
    train_x, test_x = ctx.embed(), ctx.embed(dataset=run.test)
    out = {"1nn_accuracy": dmlx_eval.knn_accuracy(
        train_x, run.train.labels, test_x, run.test.labels, 1)}
    head = restored.state.params["method"]
    if "kernel" in head:   # softmax: logits = x W + b (dmlx.losses softmax)
      logits = test_x @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
      out["head_accuracy"] = float(np.mean(np.argmax(logits, 1) ==
                                           run.test.labels))
  finally:
    restored.close()
  return out


def _refresh_seconds(workdir: str) -> float:
  """Mean host refresh time logged by the trainer (0 for plain losses)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    values = [json.loads(line).get("refresh_seconds") for line in f]
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else 0.0


def run_one(split: str, name: str, seed: int) -> dict:
  """Trains one configuration and returns its measurements."""
  config = _config(split, RUNS[(split, name)], seed)
  workdir = os.path.join(FLAGS.workdir, f"{split}_{name}_s{seed}")
  shutil.rmtree(workdir, ignore_errors=True)     # never resume an old run
  final = common.train(config, workdir)
  result = {"seconds": final["seconds"], "steps": final["steps"],
            "refresh_seconds": _refresh_seconds(workdir),
            "test": final["trained"]["test"]["embedding"],
            "untrained": (final["untrained"] or {}).get("test", {}).get(
                "embedding", {})}
  if split == "cls":
    result.update(classifier_accuracies(config, workdir))
    # The NNGK runs' own eq. 3 classifier (other runs' evaluators report
    # other keys, or none).
    if "nngk_accuracy" in (final.get("method") or {}):
      result["nngk_accuracy"] = final["method"]["nngk_accuracy"]
  return result


def _summary(values) -> str:
  v = np.asarray(values, np.float64)
  return f"{v.mean():.4f}" + (f" ± {v.std():.4f}" if len(v) > 1 else "")


def tables(results: dict) -> str:
  """The three tables (mean ± std over seeds) as text."""
  def col(split, name, key):
    return [r[key] for r in results[split][name]]

  lines = []
  cls = results["cls"]
  rows = []
  for name in cls:
    acc = (col("cls", name, "nngk_accuracy") if "nngk_accuracy" in cls[name][0]
           else col("cls", name, "head_accuracy"))
    own = "eq. 3 (k=100)" if name.startswith("nngk") else "linear head"
    rows.append((name, own, _summary(acc),
                 _summary(col("cls", name, "1nn_accuracy")),
                 _summary(col("cls", name, "seconds"))))
  lines.append("(a) classification split: test accuracy")
  lines.append(_format(("run", "own classifier", "accuracy", "1-NN accuracy",
                        "seconds"), rows))
  zsl = results["zsl"]
  metrics = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")
  rows = [("untrained network",) + tuple(
      _summary([r["untrained"][m] for r in zsl["nngk"]]) for m in metrics)]
  for name in zsl:
    rows.append((name,) + tuple(
        _summary([r["test"][m] for r in zsl[name]]) for m in metrics))
  lines.append("\n(b) zero-shot split: retrieval on the unseen test classes")
  lines.append(_format(("run",) + metrics, rows))
  rows = [("learned w_i", _summary(col("cls", "nngk", "nngk_accuracy")),
           _summary([r["test"]["recall@1"] for r in zsl["nngk"]])),
          ("fixed w_i = 1",
           _summary(col("cls", "nngk_fixed_w", "nngk_accuracy")),
           _summary([r["test"]["recall@1"] for r in zsl["nngk_fixed_w"]]))]
  lines.append("\n(c) ablation: NNGK centre weights")
  lines.append(_format(("weights", "cls accuracy (eq. 3)", "zero-shot R@1"),
                       rows))
  refresh = [r["refresh_seconds"] for s in results.values()
             for n, rs in s.items() if n.startswith("nngk") for r in rs]
  lines.append(f"\nmean NNGK bank refresh (embed + FAISS): "
               f"{np.mean(refresh):.2f} s")
  return "\n".join(lines)


def _format(header, rows) -> str:
  cells = [tuple(header)] + [tuple(r) for r in rows]
  widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
  text = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths))
          for row in cells]
  text.insert(1, "-+-".join("-" * w for w in widths))
  return "\n".join(text)


def plot(results: dict, path: str) -> None:
  """Bar charts of (a), Recall@K curves of (b), bars of (c)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  cls, zsl = results["cls"], results["zsl"]
  names = list(cls)
  own = [[r.get("nngk_accuracy", r.get("head_accuracy")) for r in cls[n]]
         for n in names]
  nn1 = [[r["1nn_accuracy"] for r in cls[n]] for n in names]
  x = np.arange(len(names))
  axes[0].bar(x - 0.2, [np.mean(v) for v in own], 0.4,
              yerr=[np.std(v) for v in own], label="own classifier")
  axes[0].bar(x + 0.2, [np.mean(v) for v in nn1], 0.4,
              yerr=[np.std(v) for v in nn1], label="1-NN")
  axes[0].set_xticks(x, names)
  axes[0].set_ylabel("test accuracy")
  axes[0].set_title("(a) classification split")
  axes[0].legend()
  ks = (1, 2, 4, 8)
  curves = {"untrained": [[r["untrained"][f"recall@{k}"] for k in ks]
                          for r in zsl["nngk"]]}
  curves.update({n: [[r["test"][f"recall@{k}"] for k in ks] for r in rs]
                 for n, rs in zsl.items()})
  for n, c in curves.items():
    c = np.asarray(c)
    axes[1].errorbar(ks, c.mean(0), yerr=c.std(0), marker="o", label=n,
                     capsize=3)
  axes[1].set_xscale("log", base=2)
  axes[1].set_xlabel("K")
  axes[1].set_ylabel("Recall@K")
  axes[1].set_title("(b) zero-shot split, unseen classes")
  axes[1].legend()
  groups = [("cls accuracy", "cls", "nngk_accuracy"),
            ("zero-shot R@1", "zsl", "recall@1")]
  for i, (label, split, key) in enumerate(groups):
    for j, name in enumerate(("nngk", "nngk_fixed_w")):
      vals = [r[key] if key in r else r["test"][key]
              for r in results[split][name]]
      axes[2].bar(i + (j - 0.5) * 0.4, np.mean(vals), 0.4,
                  yerr=np.std(vals), color=f"C{j}",
                  label=("learned w_i", "fixed w_i = 1")[j] if i == 0 else None)
  axes[2].set_xticks([0, 1], [g[0] for g in groups])
  axes[2].set_title("(c) ablation: centre weights")
  axes[2].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def merge(paths) -> None:
  """Pools the seeds of earlier result files into one set of tables."""
  results: dict = {"cls": {}, "zsl": {}}
  for path in paths:
    with open(path) as f:
      for split, runs in json.load(f)["results"].items():
        for name, rs in runs.items():
          results[split].setdefault(name, []).extend(rs)
  text = tables(results)
  seeds = len(results["zsl"]["nngk"])
  print(f"{seeds} seeds pooled from {', '.join(paths)}\n\n{text}", flush=True)
  common.save_json({"results": results, "tables": text, "seeds": seeds,
                    "merged_from": list(paths)},
                   os.path.join(FLAGS.out, "nngk_merged.json"))
  plot(results, os.path.join(FLAGS.out, "nngk_merged.png"))


def main(argv):
  del argv
  if FLAGS.merge:
    merge(FLAGS.merge)
    return
  seeds = range(FLAGS.first_seed,
                FLAGS.first_seed + (1 if FLAGS.quick else FLAGS.seeds))
  results: dict = {"cls": {}, "zsl": {}}
  t0 = time.time()
  for seed in seeds:
    for split, name in RUNS:
      r = run_one(split, name, seed)
      results[split].setdefault(name, []).append(r)
      print(f"[{time.time() - t0:6.0f}s] {split}/{name} seed {seed}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in r.items()
                        if isinstance(v, float)), flush=True)
  text = tables(results)
  print("\n" + text, flush=True)
  print(f"\ntotal wall time {time.time() - t0:.0f} s", flush=True)
  suffix = "_quick" if FLAGS.quick else ""
  os.makedirs(FLAGS.out, exist_ok=True)
  common.save_json({"results": results, "tables": text,
                    "seeds": len(seeds), "first_seed": FLAGS.first_seed,
                    "quick": FLAGS.quick,
                    "wall_seconds": time.time() - t0},
                   os.path.join(FLAGS.out, f"nngk{suffix}.json"))
  plot(results, os.path.join(FLAGS.out, f"nngk{suffix}.png"))


if __name__ == "__main__":
  app.run(main)
