"""Vo & Hays (2019) at small scale: should the embedding layer be the embedding?

  python experiments/vohays.py --seeds=2       # docs/results_vohays.md's run
                                               # (14 min on 2 busy cores)
  python experiments/vohays.py                 # 1 seed
  python experiments/vohays.py --quick         # ~1 minute smoke run
  python experiments/vohays.py --dataset=procedural --variants=neta,netd
  python experiments/vohays.py --from_json=experiments/results/vohays.json

Trains Vo & Hays's variants (``configs/vohays.py``: NetA = pool5_3 → fc6 →
loss, NetD = loss on pool5_3, NetE = pool5_3 → fc6 → fc7 → loss, and ``cls``,
NetA's network trained with softmax cross-entropy, their Fig. 3-right) on a
VGG16-BN of 1/8 width (8..64 channels, so pool5_x and every fc layer are
64-d; the first max pool skipped so conv5 maps are 4 × 4 at 32 px), from
scratch, with the paper's optimiser (SGD, momentum 0.9, weight decay 5e-4,
lr 0.01 divided by 10 halfway) and 16 classes × 2 images per batch.

Every layer (pool5_1..3 and the fc stack) is evaluated on the training
classes (train R@1) and on the unseen test classes (test R@1) after every
dmlx epoch, from the checkpoints the run leaves (``train.max_checkpoints``
keeps them all), the way the authors do it: features L2-normalised, cosine
nearest neighbour. The trainer's own per-layer evaluation
(``train.eval_every_epochs``) uses Euclidean distance on the raw features;
that number is reported beside it (``test_l2``).

Datasets (``--dataset``): ``omniglot`` (default; the 136-character
"background small 1" archive in ``/work/shared/data``, 68 training / 68 test
characters, 20 drawings each: many classes with few images, the paper's
regime), ``procedural`` (offline, ``configs/vohays.py:dataset=procedural``'s data)
and ``tinyimagenet`` (the 101-class subset). Prints the per-layer table
(like the paper's Table 2) and writes
``experiments/results/vohays[_<dataset>][_quick].json`` and
``vohays_curves[_<dataset>][_quick].png`` (no dataset part for omniglot).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import numpy as np

import common  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Smoke run: 2 variants, a few epochs.")
flags.DEFINE_string("variants", "neta,netd,nete,cls", "Comma-separated "
                    "variants of configs/vohays.py.")
flags.DEFINE_string("dataset", "omniglot", "omniglot | procedural | "
                    "tinyimagenet.")
flags.DEFINE_string("data_root", os.path.join(os.path.dirname(common.ROOT),
                                              "shared", "data"),
                    "Folder holding omniglot/ and tiny-imagenet/.")
flags.DEFINE_integer("epochs", 8, "dmlx epochs per run.")
flags.DEFINE_integer("steps_per_epoch", 50, "Iterations per dmlx epoch "
                     "(one evaluation point each).")
flags.DEFINE_integer("seeds", 1, "Seeds per variant.")
flags.DEFINE_multi_string("set", [], "Config override key=value (a Python "
                          "literal), e.g. --set=optim.lr=0.03.")
flags.DEFINE_string("workdir", "/tmp/dmlx_vohays", "Where runs go (wiped).")
flags.DEFINE_string("jax_cache", "/tmp/dmlx_vohays_jax_cache", "Persistent "
                    "XLA compilation cache (seeds and the checkpoint "
                    "evaluation reuse the training run's compilations); '' = "
                    "off.")
flags.DEFINE_string("from_json", "", "Re-print the table and re-draw the "
                    "curves of an earlier run's JSON instead of training.")
flags.DEFINE_string("out_dir", os.path.join(common.ROOT, "experiments",
                                            "results"), "Outputs.")

TABLE_LAYERS = ("pool5_1", "pool5_2", "pool5_3", "fc6", "fc7", "fc8")
NAMES = {"neta": "NetA", "netb": "NetB", "netc": "NetC", "netd": "NetD",
         "nete": "NetE", "netf": "NetF", "cls": "Classification"}


# ---------------------------------------------------------------------------
# Configs and runs.
# ---------------------------------------------------------------------------


def _data_overrides(dataset: str, root: str) -> dict:
  """``config.data`` for ``dataset`` at 36 px stored / 32 px crops."""
  if dataset == "procedural":
    return {}
  if dataset == "omniglot":
    return {"data.name": "omniglot",
            "data.data_dir": os.path.join(root, "omniglot",
                                          "images_background_small1.zip"),
            "data.options": {"channels": 3},
            "data.mean": (0.1, 0.1, 0.1), "data.std": (0.3, 0.3, 0.3),
            "data.flip": False}          # a mirrored character is another
  if dataset == "tinyimagenet":
    return {"data.name": "tinyimagenet",
            "data.data_dir": os.path.join(root, "tiny-imagenet",
                                          "tiny-imagenet-subset.zip"),
            "data.options": {}, "data.mean": (0.485, 0.456, 0.406),
            "data.std": (0.229, 0.224, 0.225)}
  raise ValueError(f"Unknown --dataset {dataset!r}; expected omniglot, "
                   "procedural or tinyimagenet.")


def make_config(variant: str, seed: int, epochs: int, steps: int,
                overrides: dict):
  """``configs/vohays.py:net=<variant>`` with the experiment's data, budget
  and every checkpoint kept."""
  c = common.load_config("configs/vohays.py", f"net={variant}")
  updates = {"seed": seed, "train.epochs": epochs,
             "train.steps_per_epoch": steps,
             "train.max_checkpoints": epochs + 1,
             "train.eval_every_epochs": 0,      # evaluated below, per ckpt
             "train.tensorboard": False,
             "eval.untrained_baseline": False,
             "eval.metrics": ("recall",), "eval.ks": (1,)}
  updates.update(overrides)
  return common.override(c, updates)


def layer_curves(config, workdir: str) -> dict:
  """Per-layer train/test Recall@1 at step 0 and at every checkpoint.

  Returns ``{'steps': [...], 'train'|'test'|'test_l2': {layer: [...]}}``:
  cosine nearest neighbours on L2-normalised features (as the authors
  evaluate), and Euclidean on the raw features for ``test_l2``."""
  from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top
  from dmlx.train import evaluators as evaluate_lib  # pylint: disable=g-import-not-at-top
  from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from dmlx.train import step as step_lib  # pylint: disable=g-import-not-at-top

  run = run_lib.build(config, workdir, quiet=True)
  layers = [l for l in run.layers if l != "embedding"]
  data = {"train": evaluate_lib.subsample(run.train, config.eval.train_subset,
                                          config.seed),
          "test": run.test}
  fresh, _ = run_lib.fresh_state(run)
  states = [(0, {"params": fresh.params["model"],
                 "batch_stats": fresh.batch_stats})]
  for step in sorted(run.checkpointer.manager.all_steps()):
    state, _ = run_lib.restore_state(run, step)
    states.append((step, {"params": state.params["model"],
                          "batch_stats": state.batch_stats}))
  out = {"steps": [s for s, _ in states]}
  for split in ("train", "test", "test_l2"):
    out[split] = {l: [] for l in layers}

  def r1(x, labels):
    return dmlx_eval.evaluate_retrieval(x, labels, ks=(1,),
                                        metrics=("recall",))["recall@1"]

  for _, variables in states:
    for split, ds in data.items():
      feats = step_lib.extract_features(run.features, variables, ds.images,
                                        run.mesh, config.eval.batch_size,
                                        tuple(layers))
      for l in layers:
        f = feats[l]
        unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        out[split][l].append(r1(unit, ds.labels))
        if split == "test":
          out["test_l2"][l].append(r1(f, ds.labels))
  run.checkpointer.close()
  run.writer.close()
  return out


# ---------------------------------------------------------------------------
# Tables and plots.
# ---------------------------------------------------------------------------


def final_table(curves: dict) -> dict:
  """``{'NetA pool5_3': {'train R@1':..., 'test R@1':..., 'gap':...,
  'test R@1 (L2 raw)':...}}`` at the last step, mean over seeds."""
  rows = {}
  for variant, runs in curves.items():
    for layer in TABLE_LAYERS:
      if layer not in runs[0]["test"]:
        continue
      tr = np.mean([r["train"][layer][-1] for r in runs])
      te = np.mean([r["test"][layer][-1] for r in runs])
      l2 = np.mean([r["test_l2"][layer][-1] for r in runs])
      best = np.mean([max(r["test"][layer][1:]) for r in runs])
      rows[f"{NAMES.get(variant, variant)} {layer}"] = {
          "train R@1": float(tr), "test R@1": float(te),
          "gap": float(tr - te), "best test R@1": float(best),
          "test R@1 (L2 raw)": float(l2)}
  return rows


def plot_curves(curves: dict, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colours = {"pool5_1": "tab:gray", "pool5_2": "tab:blue",
             "pool5_3": "tab:green", "fc6": "tab:orange", "fc7": "tab:red",
             "fc8": "tab:purple"}
  fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6),
                           sharey=True, squeeze=False)
  for ax, (variant, runs) in zip(axes[0], curves.items()):
    steps = runs[0]["steps"]
    for layer, colour in colours.items():
      if layer not in runs[0]["test"]:
        continue
      for split, style in (("train", "--"), ("test", "-")):
        y = np.mean([r[split][layer] for r in runs], axis=0)
        ax.plot(steps, y, style, color=colour,
                label=f"{layer} {split}" if split == "test" else None)
    ax.set_title(NAMES.get(variant, variant))
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("Recall@1 (solid: test, dashed: train)")
  labels = {}
  for ax in axes[0]:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      labels.setdefault(label, handle)
  axes[0][-1].legend(labels.values(), labels.keys(), fontsize=7,
                     loc="lower right")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------


def main(argv):
  del argv
  if FLAGS.jax_cache:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", FLAGS.jax_cache)
  if FLAGS.from_json:
    with open(FLAGS.from_json) as f:
      saved = json.load(f)
    report(saved["curves"], saved["dataset"], saved["epochs"] *
           saved["steps_per_epoch"], saved["seeds"], saved["quick"])
    return
  variants = [v.strip() for v in FLAGS.variants.split(",") if v.strip()]
  epochs, steps, seeds = FLAGS.epochs, FLAGS.steps_per_epoch, FLAGS.seeds
  if FLAGS.quick:
    variants, epochs, steps, seeds = variants[:2], 3, 20, 1
  overrides = _data_overrides(FLAGS.dataset, FLAGS.data_root)
  for item in FLAGS.set:
    key, _, value = item.partition("=")
    overrides[key] = ast.literal_eval(value)
  shutil.rmtree(FLAGS.workdir, ignore_errors=True)
  curves, seconds = {}, {}
  for variant in variants:
    curves[variant] = []
    for seed in range(seeds):
      config = make_config(variant, seed, epochs, steps, overrides)
      workdir = os.path.join(FLAGS.workdir, f"{variant}_s{seed}")
      final = common.train(config, workdir)
      curves[variant].append(layer_curves(config, workdir))
      seconds[f"{variant}_s{seed}"] = final["seconds"]
      last = {l: round(v[-1], 3) for l, v in curves[variant][-1]["test"].items()}
      print(f"{variant} seed {seed}: {final['seconds']:.0f}s, test R@1 {last}",
            flush=True)

  rows = report(curves, FLAGS.dataset, epochs * steps, seeds, FLAGS.quick)
  common.save_json({
      "dataset": FLAGS.dataset, "quick": FLAGS.quick, "variants": variants,
      "epochs": epochs, "steps_per_epoch": steps, "seeds": seeds,
      "overrides": {k: str(v) for k, v in overrides.items()},
      "table": rows, "curves": curves, "seconds": seconds},
      os.path.join(FLAGS.out_dir,
                   f"vohays{_suffix(FLAGS.dataset, FLAGS.quick)}.json"))


def _suffix(dataset: str, quick: bool) -> str:
  """'' for the default dataset, else '_<dataset>'; then '_quick'."""
  return ("" if dataset == "omniglot" else f"_{dataset}") + (
      "_quick" if quick else "")


def report(curves: dict, dataset: str, iterations: int, seeds: int,
           quick: bool) -> dict:
  """Prints the final per-layer table, draws the curves; returns the rows."""
  rows = final_table(curves)
  desc = (f"{dataset}, VGG16-BN/8 from scratch, {iterations} iterations, "
          f"{seeds} seed(s); R@1 with cosine on L2-normalised features")
  print(f"\nPer-layer Recall@1 after training ({desc}):")
  print(common.table(rows))
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  png = os.path.join(FLAGS.out_dir,
                     f"vohays_curves{_suffix(dataset, quick)}.png")
  plot_curves(curves, png, desc)
  print(f"wrote {png}")
  return rows


if __name__ == "__main__":
  app.run(main)
