"""Magnet loss (Rippel et al., ICLR 2016) at small scale: the paper's section 4
experiments on the procedural object dataset.

  python experiments/magnet.py            # the full version (≤ 15 min here)
  python experiments/magnet.py --quick    # a 1–2 minute smoke version

One backbone (``small_cnn``), one batch size (48 = M·D) and one budget of
steps for every objective: Magnet (``configs/magnet.py:dataset=procedural``), softmax
(``method.name='loss'``, ``loss.name='softmax'``) and semi-hard triplet.

1. Classification (section 4.1, Fig. 4e): test error of every final
   embedding under the soft kNN and the k-nearest-cluster (kNC, eq. 6)
   classifiers — for all three objectives, with K-means clusters and
   σ² (eq. 4) of that embedding's training set — plus softmax's own
   classifier (argmax of its trained linear layer) and Magnet's own
   ``Method.evaluate`` (σ² = running average of the batch estimates).
2. Training efficiency (Fig. 5): every epoch's checkpoint is kept and
   re-evaluated; the table gives the steps Magnet needs to reach triplet's
   final error.
3. Attribute concentration (section 4.2, Fig. 6d): mean fraction of each test
   example's n nearest test neighbours sharing its colour / orientation /
   scale / background, for n = 1 … 64 (attributes are never used in training).
4. Hierarchy recovery (section 4.3, Fig. 4f): random pairs of classes are
   collapsed into one label, each objective trains on the coarse labels, and
   we measure how well the original (fine) classes can be recovered from the
   test embeddings: fine-class kNN accuracy against the training set, the
   within-pair 1-NN accuracy (chance 0.5) and the NMI of a K-means clustering
   of the test set with the fine classes.

Writes ``experiments/results/magnet.json`` and ``magnet_*.png`` (with
``--quick``: ``magnet_quick.json`` and ``magnet_*_quick.png``).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time

# FAISS's OpenMP threads spin-wait; on a busy machine that made small k-means
# and searches tens of times slower. Must be set before faiss is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import jax
import numpy as np

import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from magnet_report import ATTRIBUTES, NEIGHBOURHOODS, print_tables, save_plots  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx.data import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx.data.base import Dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx.data.procedural import load_procedural  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx.index import faiss_ops  # pylint: disable=g-import-not-at-top,wrong-import-position
from dmlx.methods import magnet  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke version: fewer classes and steps.")
flags.DEFINE_integer("epochs", 0, "Epochs per run (0 = the preset).")
flags.DEFINE_string("parts", "classification,attributes,hierarchy",
                    "Which experiments to run.")
flags.DEFINE_string("workdir", "/tmp/dmlx_magnet", "Where runs go (wiped).")
flags.DEFINE_string("out", os.path.join(common.ROOT, "experiments", "results"),
                    "Folder for magnet.json and the plots.")

METHODS = ("magnet", "softmax", "triplet")
BATCH = 48  # M·D = 12·4; the baselines use P·K = 12·4.


# ----------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------


def preset(quick: bool, epochs: int = 0) -> dict:
  """Data size and budget shared by every run."""
  p = dict(num_classes=30, per_class=60, epochs=10, width=16, lr=3e-3,
           hierarchy_K=8)
  if quick:
    p.update(num_classes=24, per_class=24, epochs=2, width=8)
  if epochs:
    p["epochs"] = epochs
  train = p["num_classes"] * round(p["per_class"] * 0.75)
  p["steps_per_epoch"] = -(-train // BATCH)
  return p


def make_config(method: str, p: dict, dataset: str = "procedural_cached"):
  """The run config of ``method`` (magnet | softmax | triplet) on the shared
  data, backbone, batch size and step budget."""
  config = common.load_config("configs/magnet.py", "dataset=procedural")
  updates = {
      "data.name": dataset,
      "data.options.num_classes": p["num_classes"],
      "data.options.per_class": p["per_class"],
      "model.backbone_kwargs.width": p["width"],
      "optim.lr": p["lr"],
      "train.epochs": p["epochs"],
      "train.steps_per_epoch": p["steps_per_epoch"],
      "train.max_checkpoints": p["epochs"] + 1,  # keep every epoch (Fig. 5)
      "train.tensorboard": False,
      "eval.train_subset": 300,
      "eval.untrained_baseline": False,
  }
  if method != "magnet":
    updates.update({"method.name": "loss", "sampler.name": "pk",
                    "sampler.classes_per_batch": 12,
                    "sampler.images_per_class": 4})
  if method == "softmax":
    updates.update({"loss.name": "softmax", "loss.kwargs": {}})
  elif method == "triplet":
    updates.update({"loss.name": "triplet_semihard",
                    "loss.kwargs": {"margin": 0.2}, "model.normalise": True})
  elif method != "magnet":
    raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
  return common.override(config, updates)


# ----------------------------------------------------------------------------
# Hierarchy recovery data (section 4.3)
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def load_procedural_cached(num_classes: int = 60, per_class: int = 40,
                           image_size: int = 32, seed: int = 0) -> Dataset:
  """:func:`dmlx.data.procedural.load_procedural`, memoised: every run (and
  every re-embedding) of this script uses the same images, generated once."""
  return load_procedural(num_classes, per_class, image_size, seed)


def load_procedural_pairs(num_classes: int = 60, per_class: int = 40,
                          image_size: int = 32, seed: int = 0,
                          pair_seed: int = 1) -> Dataset:
  """The procedural dataset with random pairs of classes collapsed into one
  label (Rippel et al., 2016, section 4.3); the original class is kept in
  the attribute ``'fine_class'``."""
  if num_classes % 2:
    raise ValueError(f"load_procedural_pairs: num_classes={num_classes} must "
                     "be even to pair every class.")
  ds = load_procedural_cached(num_classes, per_class, image_size, seed)
  order = np.random.default_rng(pair_seed).permutation(num_classes)
  coarse = np.empty(num_classes, np.int32)
  coarse[order] = np.arange(num_classes) // 2
  return Dataset(images=ds.images, labels=coarse[ds.labels],
                 class_names=tuple(f"pair{i}" for i in range(num_classes // 2)),
                 attributes={**ds.attributes, "fine_class": ds.labels},
                 name="procedural_pairs")


DATASETS = {"procedural_cached": "load_procedural_cached",
            "procedural_pairs": "load_procedural_pairs"}


@contextlib.contextmanager
def datasets_registered():
  """Registers this script's loaders with the trainer's dataset registry
  (``data.name='procedural_cached'`` / ``'procedural_pairs'``) while the
  context is open."""
  for name, loader in DATASETS.items():
    registry.LOADERS[name] = registry.LoaderSpec(f"{__name__}:{loader}",
                                                 takes_data_dir=False)
  try:
    yield
  finally:
    for name in DATASETS:
      registry.LOADERS.pop(name, None)


# ----------------------------------------------------------------------------
# Training and embedding
# ----------------------------------------------------------------------------


def embed_checkpoints(config, workdir: str, steps=None,
                      untrained: bool = False) -> dict:
  """Restores checkpoints of ``workdir`` (default: the latest) and embeds the
  train and test sets: ``{step: {'train': [N, D], 'test': [Q, D]}}`` plus
  ``'datasets'`` and ``'method_params'`` (of the latest). ``untrained``:
  the run's fresh weights instead, as step 0, with no checkpoint read."""
  from dmlx import train  # pylint: disable=g-import-not-at-top
  if untrained:   # fresh weights at step 0, no checkpoint
    from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
    from dmlx.train.restore import Restored  # pylint: disable=g-import-not-at-top
    run = run_lib.build(config, workdir, quiet=True)
    state, host = run_lib.fresh_state(run)
    restored = Restored(run=run, state=state, host=host, step=0)
  else:
    restored = train.restore(config, workdir)
  run = restored.run
  datasets = {"train": run.train, "test": run.test}
  out = {"datasets": datasets,
         "method_params": jax.tree_util.tree_map(
             np.asarray, jax.device_get(restored.state.params["method"]))}
  for step in (steps if steps is not None else [restored.step]):
    at = restored if step == restored.step else train.restore(config, workdir, step)
    out[step] = {s: at.embed(ds)["embedding"] for s, ds in datasets.items()}
    if at is not restored:
      at.close()
  restored.close()
  return out


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of every checkpoint kept in ``workdir``."""
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


# ----------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------


def classification_errors(train_emb, train_labels, test_emb, test_labels,
                          K: int, L: int = 128, seed: int = 0) -> dict:
  """Test error of the soft kNN and kNC classifiers (Rippel et al., 2016,
  eq. 6) with σ² of eq. 4 over this embedding's per-class K-means index."""
  num_classes = int(train_labels.max()) + 1
  index = magnet.build_cluster_index(train_emb, train_labels, num_classes, K,
                                     seed=seed)
  sigma2 = float(index.index_sigma2)
  knc = magnet.knc_predict(test_emb, index, sigma2, L, num_classes)
  knn = magnet.knn_predict(test_emb, train_emb, train_labels, sigma2, L,
                           num_classes)
  return {"knn_error": float(np.mean(knn != test_labels)),
          "knc_error": float(np.mean(knc != test_labels))}


def softmax_classifier_error(params: dict, test_emb, test_labels) -> float:
  """Error of softmax's own trained linear classifier, argmax(x W + b)."""
  logits = test_emb @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  return float(np.mean(np.argmax(logits, axis=1) != test_labels))


def attribute_concentration(embeddings, attributes: dict, sizes,
                            labels=None) -> dict:
  """Mean fraction of each example's n nearest neighbours (itself excluded)
  that share its value of each attribute, for every n in ``sizes``
  (Rippel et al., 2016, section 4.2, Fig. 6d), and the chance level
  Σ_v p_v² of each attribute.

  With ``labels``, also ``'other_class'``: the same fraction over the n
  nearest neighbours of *other* classes only — whether similar examples of
  different classes are close ("Magnet clusters together examples of
  different classes but with similar attributes", Fig. 6b–c).
  """
  embeddings = np.asarray(embeddings, np.float32)
  n_max = max(sizes)
  extra = 0 if labels is None else int(np.bincount(labels).max())
  kmax = min(n_max + extra, len(embeddings) - 1)
  _, idx = faiss_ops.knn(embeddings, None, kmax, exclude_self=True)
  views = {"by_size": np.ones_like(idx, bool)}
  if labels is not None:
    views["other_class"] = labels[idx] != labels[:, None]
  out = {}
  for name, values in attributes.items():
    values = np.asarray(values)
    same = values[idx] == values[:, None]
    _, counts = np.unique(values, return_counts=True)
    out[name] = {"chance": float(np.sum((counts / counts.sum()) ** 2))}
    for view, keep in views.items():
      # Rank of each kept neighbour among the kept ones (1-based).
      rank = np.cumsum(keep, axis=1)
      hits = np.cumsum(same & keep, axis=1)
      fractions = []
      for n in sizes:
        # Position of the n-th kept neighbour (or the last one available).
        pos = np.argmax(rank >= n, axis=1)
        pos = np.where(rank[:, -1] >= n, pos, kmax - 1)
        got = np.maximum(rank[np.arange(len(idx)), pos], 1)
        fractions.append(float(np.mean(hits[np.arange(len(idx)), pos] / got)))
      out[name][view] = fractions
  return out


def cluster_purity(embeddings, labels, attributes: dict, K: int,
                   seed: int = 0) -> dict:
  """How much each attribute explains Magnet-style per-class K-means clusters
  (section 3.2's index) of an embedding: the mean, over clusters, of the
  fraction of a cluster's members sharing its most common value, next to the
  same purity for random clusters of the same sizes (attributes permuted
  within each class)."""
  num_classes = int(labels.max()) + 1
  index = magnet.build_cluster_index(embeddings, labels, num_classes, K,
                                     seed=seed)
  assignments = np.asarray(index.assignments)
  rng = np.random.default_rng(seed)
  out = {}
  for name, values in attributes.items():
    values = np.asarray(values)
    shuffled = values.copy()
    for c in range(num_classes):
      rows = np.flatnonzero(labels == c)
      shuffled[rows] = values[rng.permutation(rows)]
    purity = []
    for v in (values, shuffled):
      per_cluster = [np.bincount(v[assignments == j]).max() /
                     np.sum(assignments == j) for j in np.unique(assignments)]
      purity.append(float(np.mean(per_cluster)))
    out[name] = {"purity": purity[0], "random": purity[1]}
  return out


def hierarchy_recovery(train_emb, train_fine, train_coarse, test_emb,
                       test_fine, test_coarse) -> dict:
  """How well the hidden fine classes are recovered from an embedding trained
  on coarse labels (Rippel et al., 2016, section 4.3)."""
  fine_knn = dmlx_eval.knn_accuracy(train_emb, train_fine, test_emb,
                                    test_fine, k=(1, 10))
  coarse_knn = dmlx_eval.knn_accuracy(train_emb, train_coarse, test_emb,
                                      test_coarse, k=10)
  within = []
  for c in np.unique(test_coarse):
    q, g = test_emb[test_coarse == c], train_emb[train_coarse == c]
    d = np.sum((q[:, None, :] - g[None, :, :]) ** 2, axis=2)
    pred = train_fine[train_coarse == c][np.argmin(d, axis=1)]
    within.append(pred == test_fine[test_coarse == c])
  return {"fine_1nn_accuracy": fine_knn[1],
          "fine_10nn_accuracy": fine_knn[10],
          "within_pair_1nn_accuracy": float(np.mean(np.concatenate(within))),
          "fine_nmi": dmlx_eval.nmi(test_emb, test_fine, init="kmeans++"),
          "coarse_10nn_accuracy": coarse_knn}


# ----------------------------------------------------------------------------
# The experiments
# ----------------------------------------------------------------------------


def run_classification(p: dict, root: str) -> dict:
  """Trains the three objectives; per-epoch error curves, final errors and
  the final test embeddings (for the attribute analysis)."""
  out = {"errors": {}, "curves": {}, "magnet_evaluate": None, "seconds": {}}
  embeddings = {}
  # kNC's K and L (Magnet's evaluation) for every objective: the baselines'
  # configs carry the loss method's settings, which have neither.
  knc = make_config("magnet", p).method
  for method in METHODS:
    config = make_config(method, p)
    workdir = os.path.join(root, method)
    final = common.train(config, workdir)
    out["seconds"][method] = final["seconds"]
    if method == "magnet":
      out["magnet_evaluate"] = final.get("method")
    steps = checkpoint_steps(workdir)
    emb = embed_checkpoints(config, workdir, steps)
    train_ds, test_ds = emb["datasets"]["train"], emb["datasets"]["test"]
    curve = {}
    for step in steps:
      curve[step] = classification_errors(
          emb[step]["train"], train_ds.labels, emb[step]["test"],
          test_ds.labels, K=int(knc.K), L=int(knc.L))
    out["curves"][method] = {str(s): e for s, e in curve.items()}
    errors = dict(curve[steps[-1]])
    if method == "softmax":
      errors["classifier_error"] = softmax_classifier_error(
          emb["method_params"], emb[steps[-1]]["test"], test_ds.labels)
    out["errors"][method] = errors
    embeddings[method] = emb[steps[-1]]["test"]
    embeddings["attributes"] = {a: test_ds.attributes[a] for a in ATTRIBUTES}
    embeddings["labels"] = test_ds.labels
    embeddings[method + "_train"] = emb[steps[-1]]["train"]
    embeddings["train_attributes"] = {a: train_ds.attributes[a]
                                      for a in ATTRIBUTES}
    embeddings["train_labels"] = train_ds.labels
    embeddings["K"] = int(knc.K)
    print(f"{method}: {errors} ({final['seconds']:.0f}s)", flush=True)
  out["efficiency"] = efficiency(out["curves"])
  return out, embeddings


def efficiency(curves: dict) -> dict:
  """Steps each objective needs to reach triplet's final kNN error (Fig. 5's
  red diamonds), under kNN and kNC; ``None`` where it never does."""
  triplet = curves["triplet"]
  last = max(triplet, key=int)
  target = triplet[last]["knn_error"]
  out = {"triplet_final_knn_error": target, "triplet_steps": int(last)}
  for method, curve in curves.items():
    if method == "triplet":
      continue
    for key in ("knc_error", "knn_error"):
      reached = [int(s) for s, e in curve.items() if e[key] <= target]
      step = min(reached) if reached else None
      out[f"{method}_{key[:3]}_steps"] = step
      out[f"{method}_{key[:3]}_speedup"] = int(last) / step if step else None
  return out


def run_attributes(p: dict, root: str, embeddings: dict) -> tuple[dict, dict]:
  """Attribute concentration of the final test embeddings and the attribute
  purity of per-class K-means clusters of the training embeddings, with the
  untrained network for reference."""
  config = make_config("magnet", p)
  untrained = embed_checkpoints(config, os.path.join(root, "untrained"),
                                untrained=True)
  embeddings = dict(embeddings, untrained=untrained[0]["test"],
                    untrained_train=untrained[0]["train"])
  names = METHODS + ("untrained",)
  concentration = {m: attribute_concentration(
      embeddings[m], embeddings["attributes"], NEIGHBOURHOODS,
      embeddings["labels"]) for m in names}
  purity = {m: cluster_purity(embeddings[m + "_train"],
                              embeddings["train_labels"],
                              embeddings["train_attributes"], embeddings["K"])
            for m in names}
  return concentration, purity


def run_hierarchy(p: dict, root: str) -> dict:
  """Trains on collapsed pairs of classes and measures fine-class recovery."""
  out = {}
  for method in METHODS:
    config = make_config(method, p, dataset="procedural_pairs")
    if method == "magnet":
      config = common.override(config, {"method.K": p["hierarchy_K"]})
    workdir = os.path.join(root, "pairs_" + method)
    final = common.train(config, workdir)
    emb = embed_checkpoints(config, workdir)
    step = max(k for k in emb if isinstance(k, int))
    train_ds, test_ds = emb["datasets"]["train"], emb["datasets"]["test"]
    out[method] = hierarchy_recovery(
        emb[step]["train"], train_ds.attributes["fine_class"],
        train_ds.labels, emb[step]["test"], test_ds.attributes["fine_class"],
        test_ds.labels)
    out[method]["seconds"] = final["seconds"]
    print(f"pairs {method}: {out[method]}", flush=True)
  return out


def main(argv):
  del argv
  import shutil  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  p = preset(FLAGS.quick, FLAGS.epochs)
  parts = FLAGS.parts.split(",")
  root = FLAGS.workdir + ("_quick" if FLAGS.quick else "")
  shutil.rmtree(root, ignore_errors=True)
  results = {"preset": p, "quick": FLAGS.quick}
  with datasets_registered():
    if "classification" in parts or "attributes" in parts:
      results["classification"], embeddings = run_classification(p, root)
      if "attributes" in parts:
        results["attributes"], results["cluster_purity"] = run_attributes(
            p, root, embeddings)
    if "hierarchy" in parts:
      results["hierarchy"] = run_hierarchy(p, root)
  results["seconds"] = time.time() - t0
  print_tables(results)
  suffix = "_quick" if FLAGS.quick else ""
  results["plots"] = save_plots(results, FLAGS.out, suffix)
  path = os.path.join(FLAGS.out, f"magnet{suffix}.json")
  common.save_json(results, path)
  print(f"\nwrote {path} and {results['plots']} in {results['seconds']:.0f}s")


if __name__ == "__main__":
  app.run(main)
