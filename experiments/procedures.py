"""The seed methods trained as their papers train them: validation sweeps,
then each method beside its paper's baseline and with each procedural fix
switched off (ablations), on Omniglot and Tiny ImageNet.

  python experiments/procedures.py --stage=sweeps      # choose on validation
  python experiments/procedures.py --stage=tables --seeds=3
  python experiments/procedures.py --stage=report      # tables from saved runs

Every run is ``experiments/real_data.py`` (so ``launch/train.py
--config=configs/real_data.py:dataset=...,method=...,protocol=...``): runs are
resumable and skipped when done, each pinned to its own core. Sweeps run on
the validation protocols only: ``val`` (a held-out training *alphabet* of
Omniglot; 10 held-out training classes of Tiny ImageNet) for retrieval
choices, ``cls_val`` (those classes as a classification task) for Magnet's K,
judged by its own kNC accuracy. The choices are recorded in
``configs/real_data.py:CHOSEN``. Tables: the ``test`` protocol (unseen
classes) and ``cls`` (the test classes as a classification task), written to
``docs/results_procedures.md`` by ``--stage=report``.
"""
from __future__ import annotations

import os
import subprocess
import sys

from absl import app
from absl import flags

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = common.ROOT

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", "report", ["sweeps", "tables", "report"], "What to do.")
flags.DEFINE_string("datasets", "omniglot,tinyimagenet", "Datasets.")
flags.DEFINE_integer("seeds", 3, "Seeds of the tables.")
flags.DEFINE_integer("sweep_seeds", 1, "Seeds of the validation sweeps.")
flags.DEFINE_integer("workers", 2, "Runs at once, each on its own core.")
flags.DEFINE_string("cores", "", "Cores to pin runs to (default: the first "
                    "--workers cores); run one process per dataset with "
                    "--workers=1 --cores=<k> to keep both cores busy.")
flags.DEFINE_string("workdir", "/work/dmlx_runs", "Where runs go.")
flags.DEFINE_string("out", os.path.join(ROOT, "docs", "results_procedures.md"),
                    "The report.")

# (protocol, method, [(tag, override), ...]): the untagged method runs with
# configs/real_data.py's values; each tag with one override.
SWEEPS = [
    ("val", "nngk", [("sigma0.5", "method.sigma=0.5"),
                     ("sigma2", "method.sigma=2.0")]),
    ("val", "mic", [("gamma0", "method.gamma=0.0"),
                    ("gamma60", "method.gamma=60.0"),
                    ("gamma1000", "method.gamma=1000.0"),
                    ("gamma4000", "method.gamma=4000.0")]),
    ("val", "dmlda_contrastive", [("lam1", "method.lam=1.0"),
                                  ("lam100", "method.lam=100.0")]),
    ("cls_val", "magnet", [("K2", "method.K=2"), ("K4", "method.K=4")]),
]
VAL_REFERENCES = {"val": ["triplet_semihard", "margin_per_class",
                          "dmlda_contrastive_base"],
                  "cls_val": ["softmax"]}

# The tables: each seed method, its paper's baseline(s) and its ablations.
STUDY = {
    "NNGK": dict(method="nngk", baselines=["triplet_semihard"],
                 ablations={"nngk_bank_inference_bn":
                            "centres embedded with BatchNorm's running "
                            "statistics (the old bank)"},
                 cls=["nngk", "nngk_bank_inference_bn", "softmax"]),
    "Magnet": dict(method="magnet", baselines=["triplet_semihard", "softmax"],
                   ablations={"magnet_K4": "K = 4 (chosen before on R@1 of "
                                            "validation characters)"},
                   cls=["magnet", "magnet_K4", "softmax", "triplet_semihard"]),
    "MIC": dict(method="mic", baselines=["margin_per_class", "margin"],
                ablations={"mic_joint_step": "one joint step on the class "
                                             "batch (the old schedule)",
                           "mic_half_aux": "E_β of half E_α's dimension",
                           "mic_pooled_clusters": "first clustering on the "
                                                  "final pooled features",
                           "mic_no_mi": "γ = 0 (surrogate task, no l_d)"}),
    "DML-DA": dict(method="dmlda_contrastive",
                   baselines=["dmlda_contrastive_base"],
                   ablations={"dmlda_contrastive_mean_scale":
                              "pair-mean base loss, λ = 0.1 (the old scale)",
                              "dmlda_contrastive_random_d0":
                              "D⁽⁰⁾ from the random network"}),
    "Vo & Hays": dict(method="smooth_triplet", baselines=["triplet_semihard"],
                      ablations={"smooth_triplet_fixed_scale":
                                 "feature scale fixed at 4 (the paper's text)"}),
}
RETRIEVAL = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")
CLASSIFY = common.CLASSIFY


def _real_data(dataset: str, protocol: str, methods: list[str], seeds: int,
               extra: tuple[str, ...] = ()) -> None:
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "real_data.py"),
         f"--dataset={dataset}", f"--protocol={protocol}",
         f"--methods={','.join(methods)}", "--pml=", f"--seeds={seeds}",
         f"--workers={FLAGS.workers}", f"--workdir={FLAGS.workdir}", *extra]
  if FLAGS.cores:
    cmd.append(f"--cores={FLAGS.cores}")
  subprocess.run(cmd, check=True)


def sweeps() -> None:
  for dataset in FLAGS.datasets.split(","):
    for protocol, refs in VAL_REFERENCES.items():
      methods = refs + [m for p, m, _ in SWEEPS if p == protocol]
      _real_data(dataset, protocol, methods, FLAGS.sweep_seeds)
    for protocol, method, grid in SWEEPS:
      for tag, override in grid:
        _real_data(dataset, protocol, [method], FLAGS.sweep_seeds,
                   (f"--set={override}", f"--tag={tag}"))


def aliases(dataset: str, protocol: str, methods: list[str]) -> dict[str, str]:
  """``{method: the first method of the list with the same config}``: an
  ablation whose configuration the validation choice made equal to the
  method's (Magnet's K = 4 where K = 4 was chosen) is not run twice."""
  import configs  # pylint: disable=g-import-not-at-top
  seen: dict[str, str] = {}
  out = {}
  for m in methods:
    key = configs.load(f"real_data.py:dataset={dataset},method={m},"
                       f"protocol={protocol}").to_json_best_effort()
    out[m] = seen.setdefault(key, m)
  return out


def tables() -> None:
  test = list(dict.fromkeys(m for s in STUDY.values() for m in
                            [s["method"], *s["baselines"], *s["ablations"]]))
  cls = list(dict.fromkeys(m for s in STUDY.values() for m in s.get("cls", [])))
  for seed in range(FLAGS.seeds):       # seed-major: every row gets seed 0 first
    for dataset in FLAGS.datasets.split(","):
      for protocol, methods in (("test", test), ("cls", cls)):
        unique = sorted(set(aliases(dataset, protocol, methods).values()),
                        key=methods.index)
        _real_data(dataset, protocol, unique, 1, (f"--first_seed={seed}",))


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def _runs(dataset: str, protocol: str, name: str) -> list[dict]:
  return [common.test_metrics(final) for _, final in common.finals(
      os.path.join(FLAGS.workdir, dataset, protocol, name))]


def _table(dataset: str, protocol: str, rows: list[tuple[str, str]],
           metrics) -> str:
  lines = ["| run | n | " + " | ".join(metrics) + " |",
           "|" + "---|" * (len(metrics) + 2)]
  same = aliases(dataset, protocol, [name for _, name in rows]) if (
      protocol in ("test", "cls")) else {}
  for label, name in rows:
    if same.get(name, name) != name:
      lines.append(f"| {label} | – | the configuration of {same[name]} (the "
                   "validation choice) |" + " |" * (len(metrics) - 1))
      continue
    runs = _runs(dataset, protocol, name)
    cells = [common.mean_std([r[m] for r in runs if m in r], 3) for m in metrics]
    lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep_tables() -> str:
  out = []
  for dataset in FLAGS.datasets.split(","):
    for protocol, method, grid in SWEEPS:
      metrics = (("knc_accuracy", "knn_accuracy", "1nn_accuracy", "recall@1")
                 if protocol == "cls_val" else ("recall@1", "map@r", "nmi"))
      rows = [(method + " (default)", method)] + [
          (f"{method} {override}", f"{method}_{tag}") for tag, override in grid]
      rows += [(r, r) for r in VAL_REFERENCES[protocol]]
      out.append(f"**{dataset}, {protocol}: {method}**\n\n" +
                 _table(dataset, protocol, rows, metrics))
  return "\n\n".join(out)


def study_tables() -> str:
  out = []
  for title, s in STUDY.items():
    for dataset in FLAGS.datasets.split(","):
      rows = [(f"**{s['method']}**", s["method"])]
      rows += [(f"baseline: {b}", b) for b in s["baselines"]]
      rows += [(f"ablation: {why}", name) for name, why in s["ablations"].items()]
      out.append(f"**{title}, {dataset}, unseen classes**\n\n" +
                 _table(dataset, "test", rows, RETRIEVAL))
      if s.get("cls"):
        out.append(f"**{title}, {dataset}, classification of the test "
                   "classes**\n\n" + _table(dataset, "cls",
                                            [(m, m) for m in s["cls"]],
                                            ("recall@1",) + CLASSIFY))
  return "\n\n".join(out)


def report() -> None:
  text = ("## Validation sweeps\n\n" + sweep_tables() +
          "\n\n## Each method, its baseline and its ablations\n\n" +
          study_tables() + "\n")
  print(text)
  with open(FLAGS.out + ".tables", "w") as f:
    f.write(text)


def main(argv) -> None:
  del argv
  {"sweeps": sweeps, "tables": tables, "report": report}[FLAGS.stage]()


if __name__ == "__main__":
  app.run(main)
