"""Steps per second of the real-data configs, this tree against a reference
revision, measured in the same run on the same core.

  python benchmarks/train_speed.py --ref=37a1e1a          # before/after a change
  python benchmarks/train_speed.py --methods=nngk,magnet --epochs=3

For each method of ``configs/real_data.py`` the same command
(``launch/train.py --config=configs/<dataset>_<method>.py``: the former file
name, which the current launcher translates) trains ``--epochs`` epochs in
this tree and, with ``--ref``, in a ``git worktree`` of the reference
revision, one run at a time pinned to one core. Reported: the steady-state
steps/s of the last epoch (the trainer's own epoch line, which excludes the
method's host refresh and the first epoch's compilation) and the whole step
loop's steps/s (``train_seconds``: refreshes included). Results print as a
table and go to ``benchmarks/results/train_speed.json``. Needs the real data
of ``../shared/data`` (the configs' default ``data.data_dir``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = ("triplet_semihard", "margin", "nngk", "magnet", "mic",
           "dmlda_contrastive")


def _data_dir(dataset: str, given: str = "") -> str:
  if given:
    return given
  import configs  # pylint: disable=g-import-not-at-top
  return configs.load(f"real_data.py:dataset={dataset},method=margin").data.data_dir


def run(tree: str, dataset: str, method: str, epochs: int, core: int,
        workdir: str, data_dir: str = "") -> dict:
  """One training run in ``tree``; its steady-state and overall steps/s."""
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = ["taskset", "-c", str(core), sys.executable,
         os.path.join(tree, "launch", "train.py"),
         f"--config=configs/{dataset}_{method}.py", f"--workdir={workdir}",
         f"--config.train.epochs={epochs}", "--config.train.progress=False",
         "--config.eval.untrained_baseline=False",
         f"--config.data.data_dir={_data_dir(dataset, data_dir)}"]
  out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
  if out.returncode:
    raise RuntimeError(f"{method} in {tree} failed:\n{out.stderr[-3000:]}")
  log = open(os.path.join(workdir, "train.log")).read()
  epoch_rates = [float(x) for x in re.findall(r"([\d.]+) steps/s", log)]
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    final = json.load(f)
  return {"steady_steps_per_s": epoch_rates[-1],
          "loop_steps_per_s": final["steps"] / final["train_seconds"],
          "steps": final["steps"],
          "recall@1": final["trained"]["test"]["embedding"]["recall@1"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ref", default="", help="reference git revision")
  parser.add_argument("--dataset", default="omniglot")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--core", type=int, default=0)
  parser.add_argument("--data_dir", default="", help="the dataset's archive "
                      "(default: the configs' data.data_dir)")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "train_speed.json"))
  args = parser.parse_args()
  trees = {"this tree": ROOT}
  scratch = tempfile.mkdtemp(prefix="dmlx_speed_")
  if args.ref:
    ref_tree = os.path.join(scratch, "ref")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", ref_tree,
                    args.ref], check=True, capture_output=True)
    trees = {f"ref {args.ref}": ref_tree, **trees}
  results: dict = {}
  try:
    for method in args.methods.split(","):
      for name, tree in trees.items():
        r = run(tree, args.dataset, method, args.epochs, args.core,
                os.path.join(scratch, "run"), args.data_dir)
        results.setdefault(method, {})[name] = r
        print(f"{method:>18} {name:>14}: {r['steady_steps_per_s']:6.2f} steps/s "
              f"steady, {r['loop_steps_per_s']:6.2f} over the loop, "
              f"R@1 {r['recall@1']:.3f}", flush=True)
  finally:
    if args.ref:
      subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force",
                      os.path.join(scratch, "ref")], capture_output=True)
    shutil.rmtree(scratch, ignore_errors=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"dataset": args.dataset, "epochs": args.epochs,
               "ref": args.ref, "results": results}, f, indent=2)
  if args.ref:
    print("\n| method | steady steps/s (ref → now) | loop steps/s (ref → now) |")
    print("|---|---|---|")
    for method, r in results.items():
      a, b = r[f"ref {args.ref}"], r["this tree"]
      print(f"| {method} | {a['steady_steps_per_s']:.2f} → "
            f"{b['steady_steps_per_s']:.2f} | {a['loop_steps_per_s']:.2f} → "
            f"{b['loop_steps_per_s']:.2f} |")


if __name__ == "__main__":
  main()
