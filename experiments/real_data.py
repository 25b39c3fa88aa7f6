"""Every method and baseline on real images, side by side with
pytorch-metric-learning: zero-shot retrieval on Omniglot and Tiny ImageNet,
and classification on Tiny ImageNet.

  # the tables of the README (3 seeds; runs are resumable and skipped when
  # their final_metrics.json exists; --workers runs each on its own core)
  python experiments/real_data.py --dataset=omniglot --seeds=3
  python experiments/real_data.py --dataset=tinyimagenet --seeds=3
  python experiments/real_data.py --dataset=tinyimagenet --protocol=cls \\
      --methods=softmax,normalized_softmax,nngk,magnet --pml= --seeds=3
  # hyper-parameter choice on validation classes (never the test classes)
  python experiments/real_data.py --dataset=omniglot --protocol=val \\
      --methods=dmlda_contrastive --set=method.lam=0.1 --tag=lam0.1
  # print the tables again from the saved runs
  python experiments/real_data.py --dataset=omniglot --report_only

Every dmlx run is ``launch/train.py --config=configs/real_data.py:dataset=<d>,
method=<m>,protocol=<p> --config.seed=<seed>`` (the settings, and what was tuned
on validation classes, are in ``configs/real_data.py``); every
pytorch-metric-learning run is ``experiments/pml_reference.py`` with the
same network, split, P×K batches, augmentation, optimiser and steps. Beside
them: the untrained network (the same seeds) and raw pixels (the centre crop,
normalised, as a vector). Runs go to ``--workdir/<dataset>/<protocol>/
<method>[_<tag>]/seed<k>``; the summary (every run's metrics and the
mean ± std table) goes to ``experiments/results/real_data_<dataset>_
<protocol>.json`` and a Markdown table beside it.
"""
from __future__ import annotations

import ast
import concurrent.futures
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "omniglot", "omniglot | tinyimagenet.")
flags.DEFINE_string("protocol", "test", "test (unseen classes) | val "
                    "(a held-out training alphabet / held-out training "
                    "classes) | cls / cls_val (the test / validation classes "
                    "as a classification task).")
flags.DEFINE_string("methods", "triplet_semihard,contrastive,margin,"
                    "proxy_nca,normalized_softmax,smooth_triplet,nngk,magnet,"
                    "mic,dmlda_contrastive_base,dmlda_contrastive",
                    "Comma-separated methods of configs/real_data.py.")
flags.DEFINE_string("pml", "triplet_semihard,multi_similarity",
                    "pytorch-metric-learning losses trained alongside ('' = "
                    "none).")
flags.DEFINE_enum("start", "scratch", ["scratch", "pretrained"], "Random "
                  "initial weights, or the backbone of configs/pretrain.py "
                  "(runs go to <protocol>_pretrained/).")
flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 per method.")
flags.DEFINE_integer("first_seed", 0, "First seed.")
flags.DEFINE_multi_string("set", [], "Config override key=value (a Python "
                          "literal) for the dmlx runs, e.g. "
                          "--set=method.lam=0.1; use with --tag.")
flags.DEFINE_string("tag", "", "Suffix of the run folders of --set runs.")
flags.DEFINE_string("data_dir", "", "Overrides config.data.data_dir.")
flags.DEFINE_integer("workers", 2, "Runs at once, each pinned to one core.")
flags.DEFINE_string("cores", "", "Comma-separated cores to pin runs to "
                    "(default: the first --workers cores this process may "
                    "use).")
flags.DEFINE_bool("report_only", False, "Only print the tables of the saved "
                  "runs.")
flags.DEFINE_string("workdir", "/tmp/dmlx_real_data", "Where runs go.")
flags.DEFINE_string("out_dir", os.path.join(common.ROOT, "experiments",
                                            "results"), "Summary outputs.")

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r",
           "train recall@1")
CLS_METRICS = ("classifier_accuracy", "nngk_accuracy", "knc_accuracy",
               "knn_accuracy", "1nn_accuracy")


# ---------------------------------------------------------------------------
# Runs.
# ---------------------------------------------------------------------------


def protocol_dir() -> str:
  """``<workdir>/<dataset>/<protocol>[_pretrained]``."""
  suffix = "_pretrained" if FLAGS.start == "pretrained" else ""
  return os.path.join(FLAGS.workdir, FLAGS.dataset, FLAGS.protocol + suffix)


def run_dir(method: str, seed: int, tag: str = "") -> str:
  name = method + (f"_{tag}" if tag else "")
  return os.path.join(protocol_dir(), name, f"seed{seed}")


def config_arg(method: str) -> str:
  start = ",start=pretrained" if FLAGS.start == "pretrained" else ""
  return (f"dataset={FLAGS.dataset},method={method},protocol={FLAGS.protocol}"
          + start)


def dmlx_command(method: str, seed: int, workdir: str) -> list[str]:
  arg = config_arg(method)
  cmd = [sys.executable, os.path.join(common.ROOT, "launch", "train.py"),
         f"--config={os.path.join(common.ROOT, 'configs', 'real_data.py')}:{arg}",
         f"--workdir={workdir}", f"--config.seed={seed}",
         "--config.train.progress=False",
         f"--config.data.cache_dir={os.path.join(FLAGS.workdir, 'cache')}"]
  if FLAGS.data_dir:
    cmd.append(f"--config.data.data_dir={FLAGS.data_dir}")
  for item in FLAGS.set:
    key, _, value = item.partition("=")
    ast.literal_eval(value)            # a bad literal fails here, not later
    cmd.append(f"--config.{key}={value}")
  return cmd


def pml_command(loss: str, seed: int, workdir: str) -> list[str]:
  cmd = [sys.executable, os.path.join(common.ROOT, "experiments",
                                      "pml_reference.py"),
         f"--config_arg={config_arg('triplet_semihard')}",
         f"--loss={loss}", f"--workdir={workdir}", f"--seed={seed}",
         "--threads=1", f"--cache_dir={os.path.join(FLAGS.workdir, 'cache')}"]
  if FLAGS.data_dir:
    cmd.append(f"--data_dir={FLAGS.data_dir}")
  return cmd


def run_all(jobs: list[tuple[str, list[str], str]], workers: int) -> None:
  """Runs ``(name, command, workdir)`` jobs whose ``final_metrics.json`` is
  missing, ``workers`` at a time, each pinned to its own core."""
  todo = [j for j in jobs
          if not os.path.exists(os.path.join(j[2], "final_metrics.json"))]
  print(f"{len(jobs) - len(todo)} runs done, {len(todo)} to run", flush=True)
  if FLAGS.cores:
    free = [int(c) for c in FLAGS.cores.split(",")]
  else:
    free = list(sorted(os.sched_getaffinity(0)))[:max(workers, 1)]
  workers = min(workers, len(free))

  def work(job):
    name, cmd, workdir = job
    core = free.pop()
    try:
      os.makedirs(workdir, exist_ok=True)
      t0 = time.time()
      with open(os.path.join(workdir, "stdout.txt"), "w") as out:
        rc = subprocess.call(["taskset", "-c", str(core), *cmd], stdout=out,
                             stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
      print(f"  {name}: {'ok' if rc == 0 else f'FAILED rc={rc}'} in "
            f"{time.time() - t0:.0f} s ({workdir})", flush=True)
    finally:
      free.append(core)

  with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
    list(pool.map(work, todo))


# ---------------------------------------------------------------------------
# Raw pixels and tables.
# ---------------------------------------------------------------------------


def raw_pixels() -> dict:
  """Retrieval metrics of the normalised centre-cropped test images."""
  from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top
  from dmlx.data import augment  # pylint: disable=g-import-not-at-top
  from dmlx.data import pipeline  # pylint: disable=g-import-not-at-top
  config = common.load_config("configs/real_data.py",
                              config_arg("triplet_semihard"))
  if FLAGS.data_dir:
    config.data.data_dir = FLAGS.data_dir
  data = pipeline.load_splits(config.data)
  cfg = config.data

  def vectors(ds):                   # the network's test-time input view
    x = augment.preprocess(ds.images, None, crop_size=cfg.crop_size,
                           flip=False, mean=cfg.mean, std=cfg.std,
                           train=False, bgr=cfg.bgr)
    return np.asarray(x).reshape(len(ds), -1)

  test = data["test"]
  out = dmlx_eval.evaluate_retrieval(vectors(test), test.labels,
                                     ks=tuple(config.eval.ks),
                                     metrics=tuple(config.eval.metrics))
  train = data["train"]
  if tuple(test.class_names) == tuple(train.class_names):
    out["1nn_accuracy"] = float(dmlx_eval.knn_accuracy(
        vectors(train), train.labels, vectors(test), test.labels, k=1))
  return out


def saved_rows() -> list[str]:
  """Every run folder saved for ``--dataset`` / ``--protocol``, in the order
  of ``configs/real_data.py``'s METHODS (tagged variants after their method),
  then the pytorch-metric-learning runs."""
  root = protocol_dir()
  found = sorted(d for d in os.listdir(root)
                 if os.path.isdir(os.path.join(root, d))) if os.path.isdir(
                     root) else []
  methods = _method_names()
  order = {m: i for i, m in enumerate(methods)}

  def key(name):
    if name.startswith("pml_"):
      return (len(methods), name)
    base = max((m for m in methods if name == m or name.startswith(m + "_")),
               key=len, default=name)
    return (order.get(base, len(methods) - 1), name)
  return sorted((d for d in found if d != "cache"), key=key)


def _method_names() -> list[str]:
  from configs import real_data  # pylint: disable=g-import-not-at-top
  return list(real_data.METHODS)


def collect(names: list[str]) -> dict:
  """``{row: {'runs': [metrics per seed], 'seconds': [...], 'seeds': [...]}}``
  of the saved runs (every ``seed<k>`` folder with a final_metrics.json)."""
  rows = {}
  untrained = []
  root = protocol_dir()
  # The untrained network of each seed, from one method's runs (triplet
  # semi-hard's when there are any; dmlx runs only, PML copies their init).
  dmlx_names = [n for n in names if not n.startswith("pml_")]
  untrained_from = ("triplet_semihard" if "triplet_semihard" in dmlx_names
                    else (dmlx_names or [None])[0])
  for name in names:
    runs, seconds, seeds = [], [], []
    for seed, final in common.finals(os.path.join(root, name)):
      metrics = common.test_metrics(final)
      if "train" in final["trained"]:
        metrics["train recall@1"] = final["trained"]["train"]["embedding"][
            "recall@1"]
      runs.append(metrics)
      seeds.append(seed)
      seconds.append(final.get("train_seconds", float("nan")))
      if final.get("untrained") and name == untrained_from:
        untrained.append(final["untrained"]["test"]["embedding"])
    if runs:
      rows[name] = {"runs": runs, "seconds": seconds, "seeds": seeds}
  if untrained:
    rows = {"untrained network": {"runs": untrained, "seconds": [],
                                  "seeds": []}, **rows}
  return rows


def summarise(rows: dict, metrics) -> dict:
  out = {}
  for name, row in rows.items():
    cells = {}
    for m in metrics:
      values = [r[m] for r in row["runs"] if m in r]
      if values:
        cells[m] = (float(np.mean(values)), float(np.std(values)), len(values))
    if row["seconds"] and np.all(np.isfinite(row["seconds"])):
      cells["seconds"] = (float(np.mean(row["seconds"])),
                          float(np.std(row["seconds"])), len(row["seconds"]))
    out[name] = cells
  return out


def markdown(summary: dict, metrics) -> str:
  cols = [m for m in metrics if any(m in c for c in summary.values())]
  has_time = any("seconds" in c for c in summary.values())
  head = ["method", "n", *cols] + (["train s"] if has_time else [])
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for name, cells in summary.items():
    row = [name, str(max((c[2] for c in cells.values()), default=0))]
    for m in cols:
      if m in cells:
        mean, std, n = cells[m]
        row.append(f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}")
      else:
        row.append("–")
    if has_time:
      row.append(f"{cells['seconds'][0]:.0f}" if "seconds" in cells else "–")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  methods = [m for m in FLAGS.methods.split(",") if m]
  pml = [l for l in FLAGS.pml.split(",") if l]
  seeds = list(range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds))
  if FLAGS.set and not FLAGS.tag:
    raise ValueError("--set needs --tag so its runs do not mix with the "
                     "default runs.")
  if not FLAGS.report_only:
    jobs = []
    for seed in seeds:                  # seed-major: every method gets seed 0
      for m in methods:                 # before any gets seed 1
        d = run_dir(m, seed, FLAGS.tag)
        jobs.append((f"{m} seed {seed}", dmlx_command(m, seed, d), d))
      for l in pml:
        d = run_dir(f"pml_{l}", seed)
        jobs.append((f"pml {l} seed {seed}", pml_command(l, seed, d), d))
    run_all(jobs, FLAGS.workers)
  rows = collect(saved_rows())
  metrics = METRICS + (CLS_METRICS if FLAGS.protocol.startswith("cls") else ())
  summary = summarise(rows, metrics)
  pixels_path = os.path.join(protocol_dir(), "raw_pixels.json")
  if not os.path.exists(pixels_path):
    common.save_json(raw_pixels(), pixels_path)
  with open(pixels_path) as f:
    pixels = json.load(f)
  summary["raw pixels"] = {m: (v, 0.0, 1) for m, v in pixels.items()
                           if m in metrics}
  text = markdown(summary, metrics)
  print(f"\n{FLAGS.dataset}, protocol {FLAGS.protocol} (mean ± std over "
        f"the saved seeds; n = seeds per row):\n{text}")
  suffix = f"{FLAGS.dataset}_{FLAGS.protocol}" + (
      "_pretrained" if FLAGS.start == "pretrained" else "")
  common.save_json({"dataset": FLAGS.dataset, "protocol": FLAGS.protocol,
                    "runs": {n: r for n, r in rows.items()},
                    "summary": summary},
                   os.path.join(FLAGS.out_dir, f"real_data_{suffix}.json"))
  with open(os.path.join(FLAGS.out_dir, f"real_data_{suffix}.md"), "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
