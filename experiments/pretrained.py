"""The papers' regime at small scale: pretrain a backbone as a classifier on
40 Tiny ImageNet classes, then fine-tune every method on classes it never saw.

  python experiments/pretrained.py --stage=pretrain     # configs/pretrain.py + export
  python experiments/pretrained.py --stage=lr           # fine-tuning rate on validation
  python experiments/pretrained.py --stage=tables --seeds=3
  python experiments/pretrained.py --stage=report       # docs/results_pretrained.md tables

``--stage=pretrain`` trains ``configs/pretrain.py`` (resumable) and exports its
backbone with ``launch/convert_weights.py --from_workdir`` to
``configs/real_data.py:PRETRAINED``. Every fine-tuning run is
``experiments/real_data.py --start=pretrained`` (``launch/train.py
--config=configs/real_data.py:...,start=pretrained``), resumable and pinned to
a core; pytorch-metric-learning's triplet and multi-similarity losses start
from the same weights (``experiments/pml_reference.py`` copies them).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = common.ROOT

from configs import real_data  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", "report", ["pretrain", "lr", "tables", "report"],
                  "What to do.")
flags.DEFINE_string("datasets", "tinyimagenet,omniglot", "Fine-tuning datasets.")
flags.DEFINE_integer("seeds", 3, "Seeds of the tables.")
flags.DEFINE_integer("workers", 2, "Runs at once, each on its own core.")
flags.DEFINE_string("cores", "", "Cores to pin runs to.")
flags.DEFINE_string("workdir", "/work/dmlx_runs", "Where runs go.")
flags.DEFINE_string("out", os.path.join(ROOT, "experiments", "results",
                                        "pretrained.json"), "Summary JSON.")

METHODS = ["triplet_semihard", "margin", "margin_per_class", "smooth_triplet",
           "nngk", "magnet", "mic", "dmlda_contrastive_base",
           "dmlda_contrastive"]
CLS = ["nngk", "magnet", "softmax"]
LR_GRID = (1e-4, 3e-4, 1e-3)
PAIRS = {  # claim: (method, its paper's baseline)
    "NNGK": ("nngk", "triplet_semihard"), "Magnet": ("magnet", "triplet_semihard"),
    "MIC": ("mic", "margin_per_class"),
    "DML-DA": ("dmlda_contrastive", "dmlda_contrastive_base"),
    "Vo & Hays": ("smooth_triplet", "triplet_semihard")}


def pretrain() -> None:
  workdir = os.path.join(FLAGS.workdir, "pretrain_tin40")
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'pretrain.py')}",
         f"--workdir={workdir}", "--config.train.progress=False",
         f"--config.data.cache_dir={os.path.join(FLAGS.workdir, 'cache')}"]
  if not os.path.exists(os.path.join(workdir, "final_metrics.json")):
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
  os.makedirs(os.path.dirname(real_data.PRETRAINED), exist_ok=True)
  subprocess.run([sys.executable, os.path.join(ROOT, "launch", "convert_weights.py"),
                  f"--from_workdir={workdir}", f"--dst={real_data.PRETRAINED}"],
                 check=True)


def _real_data(dataset, protocol, methods, seeds, extra=(), pml="") -> None:
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "real_data.py"),
         f"--dataset={dataset}", f"--protocol={protocol}", "--start=pretrained",
         f"--methods={','.join(methods)}", f"--pml={pml}", f"--seeds={seeds}",
         f"--workers={FLAGS.workers}", f"--workdir={FLAGS.workdir}", *extra]
  if FLAGS.cores:
    cmd.append(f"--cores={FLAGS.cores}")
  subprocess.run(cmd, check=True)


def lr() -> None:
  for dataset in FLAGS.datasets.split(","):
    for rate in LR_GRID:
      _real_data(dataset, "val", ["margin"], 1,
                 (f"--set=optim.lr={rate}", f"--tag=lr{rate:g}"))


def tables() -> None:
  for seed in range(FLAGS.seeds):
    for dataset in FLAGS.datasets.split(","):
      _real_data(dataset, "test", METHODS, 1, (f"--first_seed={seed}",),
                 pml="triplet_semihard,multi_similarity")
      if dataset == "tinyimagenet":
        _real_data(dataset, "cls", CLS, 1, (f"--first_seed={seed}",))


def _finals(dataset: str, protocol: str, name: str) -> list[dict]:
  return [final for _, final in common.finals(
      os.path.join(FLAGS.workdir, dataset, protocol, name))]


def report() -> None:
  """Per dataset: pixels, untrained, pretrained-only (pooled and a random
  head), each method from scratch and from the pretrained start."""
  summary, lines = {}, []
  for dataset in FLAGS.datasets.split(","):
    rows = {}
    pixels = os.path.join(FLAGS.workdir, dataset, "test_pretrained",
                          "raw_pixels.json")
    if os.path.exists(pixels):
      with open(pixels) as f:
        rows["raw pixels"] = [json.load(f)]
    pre = _finals(dataset, "test_pretrained", "triplet_semihard")
    rows["pretrained only, pooled features"] = [
        f["untrained"]["test"]["pooled"] for f in pre if f.get("untrained")]
    rows["pretrained only, random embedding head"] = [
        f["untrained"]["test"]["embedding"] for f in pre if f.get("untrained")]
    scratch = _finals(dataset, "test", "triplet_semihard")
    rows["untrained network"] = [f["untrained"]["test"]["embedding"]
                                 for f in scratch if f.get("untrained")]
    for m in METHODS + ["pml_triplet_semihard", "pml_multi_similarity"]:
      rows[f"{m}, from scratch"] = [f["trained"]["test"]["embedding"]
                                    for f in _finals(dataset, "test", m)]
      rows[f"{m}, pretrained"] = [
          {**f["trained"]["test"]["embedding"],
           **({"pooled recall@1": f["trained"]["test"]["pooled"]["recall@1"]}
              if "pooled" in f["trained"]["test"] else {})}
          for f in _finals(dataset, "test_pretrained", m)]
    summary[dataset] = {k: v for k, v in rows.items()}
    lines.append(f"\n**{dataset}, unseen classes**\n")
    lines.append("| run | n | R@1 | R@2 | R@4 | R@8 | MAP@R | NMI | R@1 of the "
                 "fine-tuned pooled features |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
      cells = [common.mean_std([r[m] for r in runs if m in r], 3)
               for m in ("recall@1", "recall@2", "recall@4", "recall@8",
                         "map@r", "nmi", "pooled recall@1")]
      lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    cls_rows = [(f"{m}, {start}", _finals(dataset, protocol, m))
                for m in CLS for start, protocol in
                (("from scratch", "cls"), ("pretrained", "cls_pretrained"))]
    if any(runs for _, runs in cls_rows):
      names = ("recall@1",) + common.CLASSIFY
      lines.append(f"\n**{dataset}, the test classes as a classification "
                   "task (own classifier: NNGK eq. 3, Magnet kNC, softmax)**\n")
      lines.append("| run | n | " + " | ".join(names) + " |")
      lines.append("|" + "---|" * (len(names) + 2))
      for name, runs in cls_rows:
        flat = [common.test_metrics(f) for f in runs]
        cells = [common.mean_std([r[m] for r in flat if m in r], 3)
                 for m in names]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
        summary[dataset][f"cls: {name}"] = flat
  text = "\n".join(lines)
  print(text)
  os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
  with open(FLAGS.out, "w") as f:
    json.dump(summary, f, indent=2)
  with open(FLAGS.out[:-5] + ".md", "w") as f:
    f.write(text + "\n")


def main(argv) -> None:
  del argv
  {"pretrain": pretrain, "lr": lr, "tables": tables, "report": report}[FLAGS.stage]()


if __name__ == "__main__":
  app.run(main)
