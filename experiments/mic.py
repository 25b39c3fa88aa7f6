"""MIC (Roth, Brattoli & Ommer, ICCV 2019) at small scale on the procedural data.

  python experiments/mic.py            # the full version (~10-15 min on 2 cores)
  python experiments/mic.py --quick    # a 2-3 minute smoke run: baseline
                                       # and full MIC only, 2 epochs
  python experiments/mic.py --seeds=3 --aux_dims= --tag=_seeds3   # seed noise
  python experiments/mic.py --gamma_sweep=0,15,50,150   # choose γ on
                                       # held-out *training* classes

The procedural dataset (``dmlx.data.procedural``) stores, for every image, four
latent attributes that are shared across classes (colour, orientation, scale,
background): exactly the "interclass characteristics" MIC's auxiliary encoder
E_β is meant to capture. On its zero-shot split (24 training classes, 24
unseen test classes, ``configs/mic.py:dataset=procedural``) the script measures:

1. Table 6 of the paper, the ablation: the margin-loss baseline; + E_β trained
   on clusters of the *unstandardised* features (γ = 0); + per-class
   standardisation before clustering (γ = 0); + the mutual-information loss
   l_d (γ > 0, full MIC). Recall@1/2/4/8 and NMI of E_α on the test classes
   (and of the concatenation [E_α, E_β] for the MIC rows).
2. Whether E_β captures the shared attributes: for every test image, the
   fraction of its k nearest neighbours that share its colour / orientation /
   scale / background (and class), in E_β vs E_α, next to chance level.
   Also NMI between the surrogate labels and each attribute: the first
   clustering (untrained network's pooled features, with and without
   standardisation, Sec. 3.3) and a clustering of the trained E_β.
3. Fig. 8 (and 7): the intra-class variance of E_α (mean pairwise distance
   within a class, averaged over classes, divided by the mean distance
   between class centres) and its Recall@1 as a function of E_β's dimension
   (0 = the baseline).

Prints tables, writes experiments/results/mic.json and PNG plots
(mic_ablation.png, mic_attributes.png, mic_fig8.png) there.
"""
from __future__ import annotations

import ast
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke run: fewer classes and epochs.")
flags.DEFINE_integer("epochs", 30, "Epochs per run (one epoch ~12 steps).")
flags.DEFINE_integer("seeds", 1, "Seeds per ablation row.")
flags.DEFINE_string("aux_dims", "8,64", "Extra E_β dimensions for Fig. 8 "
                    "(0 = baseline and the config's dimension always run).")
flags.DEFINE_string("gamma_sweep", "", "If set (comma-separated γ values): "
                    "only run full MIC with each γ on held-out training "
                    "classes (data.validation_classes) and print the table.")
flags.DEFINE_multi_string("set", [], "Config override key=value (a Python "
                          "literal), e.g. --set=model.backbone_kwargs.width=32.")
flags.DEFINE_integer("knn", 8, "k of the nearest-neighbour attribute agreement.")
flags.DEFINE_string("tag", "", "Suffix for the output files (mic<tag>.json).")
flags.DEFINE_string("workdir", "/tmp/dmlx_mic", "Where runs go (wiped first).")
flags.DEFINE_string("out_dir", os.path.join(common.ROOT, "experiments",
                                            "results"), "Outputs.")

ATTRIBUTES = ("colour", "orientation", "scale", "background")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi")


# ---------------------------------------------------------------------------
# Analyses (pure NumPy).
# ---------------------------------------------------------------------------


def _pairwise_sq(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  sq = np.sum(x * x, axis=1)
  return np.maximum(sq[:, None] + sq[None] - 2.0 * x @ x.T, 0.0)


def neighbour_agreement(embeddings: np.ndarray, values: np.ndarray,
                        k: int) -> float:
  """Mean over examples of the fraction of their ``k`` nearest neighbours
  (L2, the example itself excluded) whose ``values`` equal theirs."""
  values = np.asarray(values)
  n = len(values)
  if not 1 <= k < n:
    raise ValueError(f"k must lie in [1, {n - 1}], got {k}.")
  d = _pairwise_sq(embeddings)
  np.fill_diagonal(d, np.inf)
  nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
  return float(np.mean(values[nearest] == values[:, None]))


def chance_agreement(values: np.ndarray) -> float:
  """Expected :func:`neighbour_agreement` of random neighbours: the mean
  over examples of the share of *other* examples with the same value."""
  values = np.asarray(values)
  _, inverse, counts = np.unique(values, return_inverse=True,
                                 return_counts=True)
  return float(np.mean((counts[inverse] - 1) / (len(values) - 1)))


def intra_class_variance(embeddings: np.ndarray, labels: np.ndarray) -> dict:
  """MIC Sec. 5.1 / Fig. 8: "the mean pairwise distances per class, averaged
  over all classes [...] normalized by the average inter-class distance,
  approximated by the distance between two class centers".

  Returns ``{'intra', 'inter', 'ratio'}``: mean within-class pairwise L2
  distance, mean distance between distinct class centres, their ratio.
  """
  x = np.asarray(embeddings, np.float64)
  labels = np.asarray(labels)
  classes = np.unique(labels)
  if len(classes) < 2:
    raise ValueError("intra_class_variance needs at least two classes.")
  intra, centres = [], []
  for c in classes:
    members = x[labels == c]
    centres.append(members.mean(axis=0))
    if len(members) > 1:
      d = np.sqrt(_pairwise_sq(members))
      intra.append(d[np.triu_indices(len(members), 1)].mean())
  dc = np.sqrt(_pairwise_sq(np.stack(centres)))
  inter = float(dc[np.triu_indices(len(classes), 1)].mean())
  mean_intra = float(np.mean(intra))
  return {"intra": mean_intra, "inter": inter, "ratio": mean_intra / inter}


def nmi(a: np.ndarray, b: np.ndarray) -> float:
  from sklearn.metrics import normalized_mutual_info_score  # pylint: disable=g-import-not-at-top
  return float(normalized_mutual_info_score(a, b))


# ---------------------------------------------------------------------------
# Runs.
# ---------------------------------------------------------------------------


def base_config(epochs: int, quick: bool):
  config = common.load_config("configs/mic.py", "dataset=procedural")
  updates = {"train.epochs": epochs, "train.tensorboard": False,
             "eval.untrained_baseline": False, "eval.metrics": ("recall", "nmi")}
  if quick:
    updates.update({"data.options.num_classes": 32,
                    "data.options.per_class": 20,
                    "method.num_clusters": 6, "eval.train_subset": 240})
  for item in FLAGS.set:
    key, _, value = item.partition("=")
    updates[key.strip()] = ast.literal_eval(value.strip())
  return common.override(config, updates)


def variant(config, updates: dict, seed: int):
  updates = dict(updates, seed=seed)
  if updates.get("method.name") == "loss":
    updates.setdefault("model.aux_embedding_dim", 0)
    updates.setdefault("eval.layers", "embedding")
  return common.override(config, updates)


def trained_features(config, workdir: str) -> dict:
  """Restores the run in ``workdir`` and embeds its train and test splits:
  ``{'train'|'test': {'embedding', 'aux_embedding'?: [N, D]}, 'data': ...}``."""
  from dmlx import train  # pylint: disable=g-import-not-at-top
  restored = train.restore(config, workdir)
  run = restored.run
  layers = ("embedding",) + (("aux_embedding",)
                             if config.model.aux_embedding_dim else ())
  feats = {split: restored.embed(ds, layers)
           for split, ds in (("train", run.train), ("test", run.test))}
  feats["data"] = {"train": run.train, "test": run.test}
  restored.close()
  return feats


def analyse(feats: dict, k: int) -> dict:
  """Attribute agreement and intra-class variance of one trained run."""
  out = {}
  test = feats["data"]["test"]
  for layer, x in feats["test"].items():
    agree = {a: neighbour_agreement(x, test.attributes[a], k)
             for a in ATTRIBUTES}
    agree["class"] = neighbour_agreement(x, test.labels, k)
    out[f"agreement/{layer}"] = agree
  out["intra_class/test"] = intra_class_variance(feats["test"]["embedding"],
                                                 test.labels)
  out["intra_class/train"] = intra_class_variance(
      feats["train"]["embedding"], feats["data"]["train"].labels)
  return out


def surrogate_nmi(config, workdir: str) -> dict:
  """NMI(first surrogate labels, class / attribute) on the untrained network's
  pooled training features, for each standardisation mode (Sec. 3.3)."""
  from dmlx.methods import mic  # pylint: disable=g-import-not-at-top
  from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
  shutil.rmtree(workdir, ignore_errors=True)
  run = run_lib.build(config, workdir, quiet=True)
  state, _ = run_lib.fresh_state(run)
  ctx = run_lib.host_context(run, state, 0)
  pooled, train = ctx.embed("pooled"), run.train
  rows = {}
  for mode in ("none", "mean", "mean_std"):
    labels = mic.compute_surrogate_labels(
        pooled, train.labels, config.method.num_clusters, standardise=mode,
        seed=config.seed)
    rows[f"first clustering, standardise={mode}"] = _nmi_row(labels, train)
  run.checkpointer.close()
  run.writer.close()
  return rows


def _nmi_row(labels: np.ndarray, ds) -> dict:
  row = {"class": nmi(labels, ds.labels)}
  row.update({a: nmi(labels, ds.attributes[a]) for a in ATTRIBUTES})
  return row


def train_and_analyse(name: str, config, knn: int) -> dict:
  workdir = os.path.join(FLAGS.workdir, name.replace(" ", "_").replace(
      "/", "_").replace("+", "plus_").replace("=", ""))
  shutil.rmtree(workdir, ignore_errors=True)
  final = common.train(config, workdir)
  result = {"test": final["trained"]["test"], "train": final["trained"]["train"],
            "concat": final.get("method") or {}, "seconds": final["seconds"]}
  feats = trained_features(config, workdir)
  result.update(analyse(feats, knn))
  if config.model.aux_embedding_dim:
    from dmlx.methods import mic  # pylint: disable=g-import-not-at-top
    train = feats["data"]["train"]
    labels = mic.compute_surrogate_labels(
        feats["train"]["aux_embedding"], train.labels,
        config.method.num_clusters, standardise="none", seed=config.seed)
    result["surrogate_nmi/trained_aux"] = _nmi_row(labels, train)
  print(f"{name}: test " + " ".join(
      f"{m}={result['test']['embedding'][m]:.3f}" for m in METRICS)
        + f" ({result['seconds']:.0f}s)", flush=True)
  return result


# ---------------------------------------------------------------------------
# Tables and plots.
# ---------------------------------------------------------------------------


def _mean(values):
  return float(np.mean(values))


def ablation_table(runs: dict) -> tuple[dict, dict]:
  rows, concat = {}, {}
  for name, seeds in runs.items():
    rows[name] = {m: _mean([r["test"]["embedding"][m] for r in seeds])
                  for m in METRICS}
    if len(seeds) > 1:
      r1 = [r["test"]["embedding"]["recall@1"] for r in seeds]
      rows[name]["std_recall@1"] = float(np.std(r1))
      rows[name].update({f"R@1 seed {i}": v for i, v in enumerate(r1)})
    if seeds[0]["concat"]:
      concat[name] = {m: _mean([r["concat"][f"concat/{m}"] for r in seeds])
                      for m in METRICS}
  return rows, concat


def attribute_table(runs: dict, chance: dict) -> dict:
  rows = {"chance": chance}
  for name, seeds in runs.items():
    for layer in ("embedding", "aux_embedding"):
      key = f"agreement/{layer}"
      if key in seeds[0]:
        label = "E_alpha" if layer == "embedding" else "E_beta"
        rows[f"{name} [{label}]"] = {
            a: _mean([r[key][a] for r in seeds])
            for a in ATTRIBUTES + ("class",)}
  return rows


def plot_all(out_dir: str, ablation: dict, attributes: dict, sweep: dict,
             suffix: str = "") -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []

  fig, ax = plt.subplots(figsize=(7, 3.5))
  names = list(ablation)
  for i, m in enumerate(("recall@1", "recall@2", "nmi")):
    ax.bar(np.arange(len(names)) + 0.25 * (i - 1),
           [ablation[n][m] for n in names], 0.25, label=m)
  ax.set_xticks(np.arange(len(names)), names, rotation=12, fontsize=8)
  ax.set_ylabel("E_alpha on unseen classes")
  ax.set_title("MIC ablation (Table 6), procedural zero-shot")
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, f"mic_ablation{suffix}.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 3.5))
  rows = list(attributes)
  cols = ATTRIBUTES + ("class",)
  for i, r in enumerate(rows):
    ax.bar(np.arange(len(cols)) + (i - (len(rows) - 1) / 2) * 0.8 / len(rows),
           [attributes[r][c] for c in cols], 0.8 / len(rows), label=r)
  ax.set_xticks(np.arange(len(cols)), cols)
  ax.set_ylabel(f"share of {FLAGS.knn} nearest neighbours agreeing")
  ax.set_title("Shared attributes in E_alpha vs E_beta (test classes)")
  ax.legend(fontsize=6)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, f"mic_attributes{suffix}.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  dims = sorted(sweep)
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  axes[0].plot(dims, [sweep[d]["ratio_test"] for d in dims], "o-",
               label="test classes")
  axes[0].plot(dims, [sweep[d]["ratio_train"] for d in dims], "s--",
               label="training classes")
  axes[0].set_xlabel("E_beta dimension")
  axes[0].set_ylabel("intra / inter-class distance of E_alpha")
  axes[0].set_title("Fig. 8")
  axes[0].legend(fontsize=8)
  axes[1].plot(dims, [sweep[d]["recall@1"] for d in dims], "o-")
  axes[1].set_xlabel("E_beta dimension")
  axes[1].set_ylabel("E_alpha Recall@1 (test)")
  axes[1].set_title("Fig. 7")
  fig.tight_layout()
  paths.append(os.path.join(out_dir, f"mic_fig8{suffix}.png"))
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------


def run_gamma_sweep(config, gammas: list[float]) -> None:
  """Full MIC for each γ, evaluated on 8 held-out *training* classes."""
  rows = {}
  for gamma in gammas:
    cfg = common.override(config, {"method.gamma": gamma,
                                   "data.validation_classes": 8})
    final = common.train(cfg, os.path.join(FLAGS.workdir, f"gamma_{gamma:g}"))
    rows[f"gamma={gamma:g}"] = {m: final["trained"]["test"]["embedding"][m]
                                for m in METRICS}
    print(common.table(rows), flush=True)
  common.save_json(rows, os.path.join(FLAGS.out_dir, "mic_gamma_sweep.json"))


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  epochs = 2 if FLAGS.quick else FLAGS.epochs
  config = base_config(epochs, FLAGS.quick)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if FLAGS.gamma_sweep:
    run_gamma_sweep(config, [float(g) for g in FLAGS.gamma_sweep.split(",")])
    return
  gamma = float(config.method.gamma)
  main_dim = int(config.model.aux_embedding_dim)
  variants = {
      "margin baseline": {"method.name": "loss"},
      "+clust (no stand.)": {"method.standardise": "none",
                             "method.gamma": 0.0},
      "+clust +stand": {"method.standardise": "mean", "method.gamma": 0.0},
      f"+clust +stand +MI (MIC, gamma={gamma:g})": {
          "method.standardise": "mean"},
  }
  if FLAGS.quick:   # the smoke run trains only the first and last rows
    variants = {k: v for i, (k, v) in enumerate(variants.items())
                if i in (0, len(variants) - 1)}
  runs = {}
  for name, updates in variants.items():
    runs[name] = [train_and_analyse(f"{name} s{s}", variant(config, updates, s),
                                    FLAGS.knn) for s in range(FLAGS.seeds)]
  mic_name = list(variants)[-1]

  extra_dims = [] if FLAGS.quick else [
      int(d) for d in FLAGS.aux_dims.split(",") if d.strip()]
  sweep_runs = {0: runs["margin baseline"][0], main_dim: runs[mic_name][0]}
  for dim in extra_dims:
    if dim not in sweep_runs:
      sweep_runs[dim] = train_and_analyse(
          f"MIC aux_dim={dim}",
          variant(config, {"model.aux_embedding_dim": dim}, 0), FLAGS.knn)
  sweep = {d: {"ratio_test": r["intra_class/test"]["ratio"],
               "ratio_train": r["intra_class/train"]["ratio"],
               "intra_test": r["intra_class/test"]["intra"],
               "inter_test": r["intra_class/test"]["inter"],
               "recall@1": r["test"]["embedding"]["recall@1"],
               "nmi": r["test"]["embedding"]["nmi"]}
           for d, r in sorted(sweep_runs.items())}

  untrained_nmi = surrogate_nmi(variant(config, {}, 0),
                                os.path.join(FLAGS.workdir, "untrained"))
  surrogate = dict(untrained_nmi)
  surrogate["trained MIC E_beta, re-clustered"] = (
      runs[mic_name][0]["surrogate_nmi/trained_aux"])

  ablation, concat = ablation_table(runs)
  from dmlx.data import pipeline  # pylint: disable=g-import-not-at-top
  test = pipeline.load_splits(config.data)["test"]
  chance = {a: chance_agreement(test.attributes[a]) for a in ATTRIBUTES}
  chance["class"] = chance_agreement(test.labels)
  attributes = attribute_table(runs, chance)

  print(f"\nTable 6 (E_alpha, {config.data.options.num_classes // 2} unseen "
        f"classes, {epochs} epochs, {FLAGS.seeds} seed(s)):")
  print(common.table(ablation))
  print("\n[E_alpha, E_beta] concatenated:")
  print(common.table(concat))
  print(f"\nNearest-neighbour agreement (k={FLAGS.knn}) on the test classes:")
  print(common.table(attributes))
  print("\nNMI(surrogate labels, class / attribute) on the training set:")
  print(common.table(surrogate))
  print("\nFig. 8: E_alpha intra-class variance vs E_beta dimension:")
  print(common.table({f"dim {d}": v for d, v in sweep.items()}))

  os.makedirs(FLAGS.out_dir, exist_ok=True)
  suffix = ("_quick" if FLAGS.quick else "") + FLAGS.tag
  plots = plot_all(FLAGS.out_dir, ablation, attributes, sweep, suffix)
  common.save_json({
      "settings": {"epochs": epochs, "seeds": FLAGS.seeds, "gamma": gamma,
                   "aux_dim": main_dim, "knn": FLAGS.knn,
                   "num_clusters": int(config.method.num_clusters),
                   "quick": FLAGS.quick},
      "ablation": ablation, "concat": concat, "attributes": attributes,
      "surrogate_nmi": surrogate,
      "fig8": {str(d): v for d, v in sweep.items()},
      "runs": runs, "sweep_runs": {str(d): r for d, r in sweep_runs.items()},
      "plots": plots,
  }, os.path.join(FLAGS.out_dir, f"mic{suffix}.json"))


if __name__ == "__main__":
  app.run(main)
