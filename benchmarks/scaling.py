"""Step, refresh and evaluation time against devices and processes.

  python benchmarks/scaling.py                       # 1, 2, 4, 8 devices; 2 processes
  python benchmarks/scaling.py --devices=1,8 --processes=1,2 --num_train=1200

One configuration (NNGK on the procedural dataset: the main job's network
and method, with ``--num_train`` training images, batches of ``--batch``) is
measured in a fresh process for each layout: 1 process with 1, 2, 4, 8
simulated CPU devices (``--xla_force_host_platform_device_count``), and P
processes of one device each on localhost (``launch/cluster/local.py``,
Gloo collectives). Each measures, after compiling:

* ``step_s``: one train step (median of ``--steps``, waited for);
* ``refresh_s``: the NNGK bank refresh (embed the training set across the
  mesh, gather, FAISS k-NN on the host, broadcast, replicate);
* ``eval_s``: the retrieval evaluation of the test split.

On this machine every simulated device and every process shares the same 2
cores, so the numbers measure what sharding and the collectives *cost*, not a
speed-up; ``docs/scaling.md`` states what changes on GPUs and TPUs. Results
print as a table and go to ``benchmarks/results/scaling.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _config(num_train: int, batch: int, image_size: int):
  import configs  # pylint: disable=g-import-not-at-top
  c = configs.load("nngk.py:dataset=procedural")
  per_class = 24
  c.data.options.num_classes = 2 * max(2, num_train // per_class)
  c.data.options.per_class = per_class
  c.data.image_size, c.data.crop_size = image_size, image_size - 4
  c.sampler.name, c.sampler.batch_size = "random", batch
  c.train.progress = c.train.tensorboard = False
  c.eval.untrained_baseline = False
  c.eval.report = False
  c.eval.ks = (1,)
  c.eval.metrics = ("recall",)
  return c


def worker(args) -> None:
  """One layout: prints one JSON line (process 0)."""
  from dmlx.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize("auto")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from dmlx.train import step as step_lib  # pylint: disable=g-import-not-at-top

  c = _config(args.num_train, args.batch, args.image_size)
  run = run_lib.build(c, args.workdir, quiet=True)
  state, host = run_lib.fresh_state(run)
  state, host = loop.refresh(run, state, host, 0)           # compiles the embedding
  t0 = time.perf_counter()
  state, host = loop.refresh(run, state, host, 0)
  jax.block_until_ready(state.method_state)
  refresh_s = time.perf_counter() - t0
  train_step = jax.jit(step_lib.make_train_step(run.model, run.method, run.method_config,
                                                run.optimizer, run.data_config),
                       donate_argnums=(0,))
  samplers = loop._samplers(run, state, host, 0)  # pylint: disable=protected-access
  times = []
  for i in range(args.steps + 2):
    batches = loop._batches(run, samplers, i, host)  # pylint: disable=protected-access
    t0 = time.perf_counter()
    state, metrics = train_step(state, batches)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  loop.evaluate(run, state, host, 0, final=False)            # compiles
  t0 = time.perf_counter()
  loop.evaluate(run, state, host, 0, final=False)
  eval_s = time.perf_counter() - t0
  if distributed.is_main():
    print(json.dumps({
        "processes": jax.process_count(), "devices": jax.device_count(),
        "num_train": len(run.train), "num_test": len(run.test), "batch": args.batch,
        "embedding_dim": run.info.embedding_dim,
        "step_s": float(np.median(times[2:])), "compile_step_s": times[0],
        "refresh_s": refresh_s, "eval_s": eval_s}), flush=True)


def _layout(args, devices: int, processes: int) -> dict:
  import tempfile  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp(prefix="dmlx_scaling_")
  command = [sys.executable, os.path.abspath(__file__), "--worker",
             f"--workdir={workdir}", f"--num_train={args.num_train}",
             f"--batch={args.batch}", f"--steps={args.steps}",
             f"--image_size={args.image_size}"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT
  if processes > 1:
    command = [sys.executable, os.path.join(ROOT, "launch", "cluster", "local.py"),
               f"--num_processes={processes}", f"--devices_per_process={devices}",
               "--"] + command
  else:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
  if out.returncode:
    raise RuntimeError(f"{devices} devices x {processes} processes failed:\n"
                       + (out.stdout + out.stderr)[-3000:])
  line = [l for l in out.stdout.splitlines() if '"step_s"' in l][-1]
  return json.loads(line.partition("] ")[2] if line.startswith("[") else line)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", default="")
  parser.add_argument("--devices", default="1,2,4,8",
                      help="devices per process, comma-separated (1 process)")
  parser.add_argument("--processes", default="2",
                      help="process counts (one device each), comma-separated")
  parser.add_argument("--num_train", type=int, default=1200)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "scaling.json"))
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  layouts = [(int(d), 1) for d in args.devices.split(",") if d]
  layouts += [(1, int(p)) for p in args.processes.split(",") if p and int(p) > 1]
  rows = []
  print(f"{'processes':>9} {'devices':>7} {'step ms':>8} {'refresh s':>9} {'eval s':>7}")
  for devices, processes in layouts:
    r = _layout(args, devices, processes)
    rows.append(r)
    print(f"{r['processes']:>9} {r['devices']:>7} {1e3 * r['step_s']:>8.1f} "
          f"{r['refresh_s']:>9.2f} {r['eval_s']:>7.2f}", flush=True)
  base = rows[0]
  for r in rows:
    for key in ("step_s", "refresh_s", "eval_s"):
      r[key.replace("_s", "_vs_first")] = r[key] / base[key]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".tmp", "w") as f:
    json.dump({"command": " ".join(sys.argv), "cpus": os.cpu_count(),
               "reference": "the first layout, measured in this run",
               "rows": rows}, f, indent=2)
  os.replace(args.out + ".tmp", args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
