"""DML-DA at small scale: does density adaptivity help, and does it narrow the
train/test gap? (Li et al., "Deep Metric Learning with Density Adaptivity",
2019: Table I / Fig. 3 / Fig. 4 comparisons, Fig. 1(d) gap, Fig. 6 λ sweep.)

On the offline procedural dataset (zero-shot split: 24 training classes, 24
unseen test classes; ``configs/dmlda.py:dataset=procedural``), for each base loss --
the paper's contrastive loss (eq. 2), N-pair (eq. 4), triplet (eq. 3) -- it
trains the base loss alone and with each regulariser at weight λ:

* ``DA``: DML-DA, eq. (8) (density regulariser + inter-class density
  correlation penalty); ``DA-``: eq. (6) without the penalty;
* ``GOR``: global orthogonal regularisation; ``EN``: the entropy regulariser,

and reports test Recall@1/2/4/8 and NMI, training-set Recall@1, the
train − test Recall@1 gap, and the mean class density (eq. 5) of the final
embeddings on the test and training classes (and, relative to the spread
of the whole test embedding, ``relative density``). Then a λ sweep of DML-DA
for one base loss (Fig. 6). A few seeds of the plain contrastive loss measure
the run-to-run spread that every difference must be read against.

  python experiments/dmlda.py            # full (10-15 min on 2 busy cores)
  python experiments/dmlda.py --quick    # smoke version (1-2 min)

Writes ``experiments/results/dmlda[_quick].json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import common  # pylint: disable=wrong-import-position

CONFIG = "configs/dmlda.py"
LOSSES = ("contrastive", "npair", "triplet")
VARIANTS = {"base": "none", "DA": "density", "DA-": "density_minus",
            "GOR": "gor", "EN": "entropy"}
RESULTS = os.path.join(common.ROOT, "experiments", "results")


def run_one(loss: str, regularizer: str, lam: float, epochs: int, seed: int,
            log=print) -> dict:
  """Trains one (base loss, regulariser, λ) on the procedural zero-shot split
  and returns its measurements."""
  config = common.load_config(
      CONFIG, f"loss={loss},dataset=procedural,regularizer={regularizer}")
  config = common.override(config, {
      "method.lam": float(lam), "train.epochs": epochs, "seed": seed,
      "data.options.seed": 0, "eval.untrained_baseline": False,
      "train.tensorboard": False})
  workdir = tempfile.mkdtemp(prefix="dmlda_exp_")
  captured = io.StringIO()  # the trainer's own log lines and report
  try:
    with contextlib.redirect_stdout(captured), \
        contextlib.redirect_stderr(captured):
      final = common.train(config, workdir)
  except Exception:
    print(captured.getvalue(), file=sys.stderr)
    raise
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  test = final["trained"]["test"]["embedding"]
  train = final["trained"]["train"]["embedding"]
  row = {f"R@{k}": test[f"recall@{k}"] for k in (1, 2, 4, 8)}
  row.update({
      "NMI": test["nmi"],
      "train R@1": train["recall@1"],
      "gap R@1": train["recall@1"] - test["recall@1"],
      "test density": final["method"]["test_density"],
      "relative density": final["method"]["test_relative_density"],
      "train density": final["method"]["train_density"],
      "seconds": final["seconds"],
  })
  if "mean_target_density" in final["method"]:
    row["mean alpha"] = final["method"]["mean_target_density"]
  log(f"  {loss:11s} {regularizer:13s} λ={lam:<6g} seed={seed}: test R@1 "
      f"{row['R@1']:.3f} NMI {row['NMI']:.3f} train R@1 {row['train R@1']:.3f}"
      f" density {row['test density']:.3f} ({row['seconds']:.0f}s)")
  return row


def plot(results: dict, path: str) -> None:
  """Bar charts of test R@1 / NMI / gap per base loss and variant, and the λ
  sweep."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  metrics = ("R@1", "NMI", "gap R@1", "relative density")
  fig, axes = plt.subplots(1, len(metrics) + 1,
                           figsize=(4 * (len(metrics) + 1), 3.4))
  losses = list(results["table"])
  variants = list(VARIANTS)
  width = 0.8 / len(variants)
  for ax, metric in zip(axes, metrics):
    for j, v in enumerate(variants):
      values = [results["table"][l].get(v, {}).get(metric, np.nan)
                for l in losses]
      ax.bar(np.arange(len(losses)) + j * width, values, width, label=v)
    ax.set_xticks(np.arange(len(losses)) + 0.4 - width / 2, losses)
    ax.set_title(f"{metric} (λ={results['lam']:g})")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(variants),
             fontsize=8)
  sweep = results["sweep"]
  lams = sorted(float(k) for k in sweep["runs"])
  ax = axes[-1]
  for metric in ("R@1", "NMI"):
    ax.plot(lams, [sweep["runs"][repr(l)][metric] for l in lams], "o-",
            label=f"DA {metric}")
    ax.axhline(sweep["base"][metric], ls="--", lw=0.8,
               color=ax.lines[-1].get_color(), label=f"base {metric}")
  ax.set_xscale("log")
  ax.set_xlabel("λ")
  ax.set_title(f"λ sweep ({sweep['loss']})")
  ax.legend(fontsize=7)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke version: contrastive only, short runs")
  parser.add_argument("--lam", type=float, default=10.0,
                      help="λ of every regulariser in the table (paper: 10)")
  parser.add_argument("--sweep", default="0.01,0.1,1,10,25",
                      help="λ values of the DML-DA sweep")
  parser.add_argument("--sweep_loss", default="contrastive", choices=LOSSES)
  parser.add_argument("--epochs", type=int, default=0,
                      help="epochs of 12 steps (default 16; quick 3)")
  parser.add_argument("--noise_seeds", type=int, default=3,
                      help="seeds of the plain base loss for the spread")
  parser.add_argument("--out", default=RESULTS)
  parser.add_argument("--jax_cache", default=os.path.join(
      tempfile.gettempdir(), "dmlx_jax_cache"),
                      help="persistent XLA compilation cache directory")
  args = parser.parse_args(argv)

  # Runs share their network's init / feature-extraction programs: a
  # persistent compilation cache saves compiling them again for every run.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", args.jax_cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)

  quick = args.quick
  epochs = args.epochs or (3 if quick else 16)
  losses = ("contrastive",) if quick else LOSSES
  variants = {"base": "none", "DA": "density"} if quick else VARIANTS
  lams = [float(x) for x in args.sweep.split(",")]
  if quick:
    lams = [1.0, args.lam]
  noise_seeds = 1 if quick else max(args.noise_seeds, 1)
  t0 = time.time()
  print(f"DML-DA on procedural (zero-shot), {epochs} epochs x 12 steps, "
        f"λ={args.lam:g}", flush=True)

  table: dict = {}
  for loss in losses:
    table[loss] = {}
    for name, regularizer in variants.items():
      table[loss][name] = run_one(loss, regularizer, args.lam, epochs, seed=0)

  spread = [table[args.sweep_loss]["base"]] if args.sweep_loss in table else []
  for seed in range(1, noise_seeds):
    spread.append(run_one(args.sweep_loss, "none", 0.0, epochs, seed=seed))

  sweep_runs = {}
  for lam in lams:
    if lam == args.lam and args.sweep_loss in table:
      sweep_runs[repr(lam)] = table[args.sweep_loss]["DA"]
    else:
      sweep_runs[repr(lam)] = run_one(args.sweep_loss, "density", lam,
                                      epochs, seed=0)
  base = (table.get(args.sweep_loss, {}).get("base") or
          run_one(args.sweep_loss, "none", 0.0, epochs, seed=0))

  results = {
      "quick": quick, "epochs": epochs, "steps": epochs * 12,
      "lam": args.lam, "config": CONFIG, "table": table,
      "base_seeds": {"loss": args.sweep_loss, "runs": spread},
      "sweep": {"loss": args.sweep_loss, "base": base, "runs": sweep_runs},
      "seconds": time.time() - t0,
  }

  columns = ["R@1", "R@2", "R@4", "R@8", "NMI", "train R@1", "gap R@1",
             "test density", "train density", "relative density"]
  for loss in losses:
    print(f"\n{loss} (λ={args.lam:g}, {epochs * 12} steps, seed 0)")
    print(common.table(table[loss], columns))
  if len(spread) > 1:
    print(f"\nplain {args.sweep_loss}, seeds 0-{len(spread) - 1}: R@1 "
          f"{common.mean_std([r['R@1'] for r in spread])}, NMI "
          f"{common.mean_std([r['NMI'] for r in spread])}, gap "
          f"{common.mean_std([r['gap R@1'] for r in spread])}")
  print(f"\nλ sweep, DML-DA with {args.sweep_loss} (base alone: R@1 "
        f"{base['R@1']:.4f}, NMI {base['NMI']:.4f})")
  print(common.table({f"λ={float(k):g}": v for k, v in sweep_runs.items()},
                     ["R@1", "NMI", "gap R@1", "test density",
                      "relative density", "mean alpha"]))
  print(f"\ntotal {results['seconds']:.0f}s")

  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, "dmlda_quick" if quick else "dmlda")
  common.save_json(results, stem + ".json")
  plot(results, stem + ".png")
  print(f"wrote {stem}.json and {stem}.png")
  return results


if __name__ == "__main__":
  main()
