"""Times every dmlx loss (forward + backward) against pytorch-metric-learning.

For each loss and each batch shape (P classes x K=4 images, L2-normalised
random embeddings), the jitted ``value_and_grad`` of the dmlx loss is timed
(median of ``--repeats`` calls, each ``block_until_ready``), and, when
``torch`` and ``pytorch_metric_learning`` import, the equivalent PML loss on
the *same* inputs in the same process (``loss.backward()``, median). Both run
single-threaded by default (``--threads 1``: ``torch.set_num_threads(1)`` and
XLA's ``--xla_cpu_multi_thread_eigen=false``); with more threads
``OMP_WAIT_POLICY=PASSIVE`` is set for torch. Results print as a table and go
to ``benchmarks/results/losses.json``.

``ratio`` is PML time / dmlx time (wall-clock medians); ``cpu ratio`` the same
for process CPU time, which a busy shared machine disturbs less.

Where the PML loss computes the same function (``same_form`` in the table), the
two loss values are compared too; elsewhere PML mines or reduces differently
(noted per row) and only the time is comparable.

Usage::

  python benchmarks/losses.py --quick          # tiny shapes, seconds
  python benchmarks/losses.py                  # B (256, 1024) x D (128, 512)
  python benchmarks/losses.py --losses triplet_all,margin --repeats 20
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_K = 4


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny run: B in (32, 64), D=32, 3 repeats")
  parser.add_argument("--batch-sizes", default="256,1024")
  parser.add_argument("--dims", default="128,512")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--losses", default="",
                      help="comma-separated registry names (default: all)")
  parser.add_argument("--threads", type=int, default=1,
                      help="threads for torch and XLA (1 = single-threaded)")
  parser.add_argument("--no-pml", action="store_true",
                      help="do not time pytorch-metric-learning")
  parser.add_argument("--no-variants", action="store_true",
                      help="skip the max_positives=K-1 / None rows of "
                      "triplet_all, triplet_semihard and margin")
  parser.add_argument("--cube-max-batch", type=int, default=512,
                      help="also time the naive [B, B, B] batch-all triplet "
                      "loss up to this batch size (0 disables)")
  parser.add_argument("--out", default=str(
      _ROOT / "benchmarks" / "results" / "losses.json"))
  args = parser.parse_args(argv)
  if args.quick:
    args.batch_sizes, args.dims, args.repeats = "32,64", "32", 3
  return args


def _configure_threads(threads: int):
  """Must run before jax and torch are imported."""
  if threads == 1:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (flags +
                               " --xla_cpu_multi_thread_eigen=false").strip()
  else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _inputs(b: int, d: int, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, d)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.repeat(np.arange(b // _K), _K).astype(np.int32)
  return x, labels


def _time(fn, repeats: int) -> tuple[float, float, float]:
  """(first call seconds, median wall seconds, median CPU seconds)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    w, c = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
  return first, statistics.median(walls), statistics.median(cpus)


# ----------------------------------------------------------------- dmlx side


def _jax_runner(name, x, labels, num_classes, hyper):
  """Jitted value_and_grad w.r.t. embeddings and loss parameters.

  Labels are an argument, as in a training step: closed over, they would be
  compile-time constants that XLA tries to fold.
  """
  import jax
  from dmlx import losses

  params = losses.init(name, jax.random.PRNGKey(0), num_classes, x.shape[1])

  @jax.jit
  def step(x, labels, params, rng):
    return jax.value_and_grad(
        lambda x, p: losses.apply(name, x, labels, params=p, rng=rng,
                                  **hyper)[0],
        argnums=(0, 1))(x, params)

  args = (jax.device_put(x), jax.device_put(labels), params,
          jax.random.PRNGKey(1))
  run = lambda: jax.block_until_ready(step(*args))
  return run, lambda: float(step(*args)[0]), params


def _jax_cube_runner(x, labels, margin=0.2):
  """Naive batch-all triplet loss over the full [B, B, B] cube (reference)."""
  import jax
  import jax.numpy as jnp
  from dmlx import losses

  def loss(x, labels):
    d = losses.pairwise_distances(x)
    pos, neg = losses.positive_mask(labels), losses.negative_mask(labels)
    valid = pos[:, :, None] & neg[:, None, :]
    v = jnp.where(valid, jax.nn.relu(d[:, :, None] - d[:, None, :] + margin),
                  0)
    return jnp.sum(v) / jnp.maximum(jnp.sum(v > 0), 1)

  step = jax.jit(jax.value_and_grad(loss))
  x, labels = jax.device_put(x), jax.device_put(labels)
  return ((lambda: jax.block_until_ready(step(x, labels))),
          (lambda: float(step(x, labels)[0])))


# ------------------------------------------------------------------ PML side

# Losses with a max_positives speed knob (default 7): also timed at K - 1
# (the P x K table) and None (sorted / B - 1 fallback).
_VARIANTS = ("triplet_all", "triplet_semihard", "margin")

# name -> (same_form, note)
_PML_NOTES = {
    "triplet_all": (True, "TripletMarginLoss, all triplets, AvgNonZero"),
    "triplet_semihard": (False, "TripletMarginMiner('semihard') keeps every "
                         "semi-hard triplet, not one per (a, p)"),
    "triplet_batch_hard": (True, "BatchHardMiner + TripletMarginLoss(Mean)"),
    "contrastive": (False, "PML: unsquared hinges, AvgNonZero"),
    "npair": (False, "PML: one (anchor, positive) pair per class"),
    "margin": (False, "DistanceWeightedMiner + MarginLoss; different draws"),
    "proxy_nca": (True, "ProxyNCALoss(softmax_scale=3), same proxies"),
    "lifted_structure": (True, "LiftedStructureLoss; builds a |P| x |N| "
                         "matrix"),
    "nca": (True, "NCALoss, unnormalised squared L2"),
    "softmax": (True, "torch Linear + cross_entropy (not PML)"),
    "normalized_softmax": (True, "NormalizedSoftmaxLoss, same weights"),
}
_NO_PML = (False, "no pytorch-metric-learning counterpart")


def _pml_runner(name, x, labels, num_classes, params):
  """Returns (run, value) closures for the PML counterpart, or None."""
  import numpy as np
  import torch
  from pytorch_metric_learning import distances, losses, miners, reducers

  if name not in _PML_NOTES:
    return None  # dmlda_contrastive, smooth_triplet: dmlx's own forms.
  if name == "lifted_structure" and len(labels) > 512:
    return None  # |P| x |N| float matrix: ~12 GB at B=1024.
  lp = distances.LpDistance(normalize_embeddings=False)
  miner = None
  weights = []
  if name == "triplet_all":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp)
  elif name == "triplet_semihard":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp)
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard",
                                      distance=lp)
  elif name == "triplet_batch_hard":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp,
                                  reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=lp)
  elif name == "contrastive":
    fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=lp)
  elif name == "npair":
    fn = losses.NPairsLoss()
  elif name == "margin":
    fn = losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2, learn_beta=True)
    miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    weights = [fn.beta]
  elif name == "proxy_nca":
    fn = losses.ProxyNCALoss(num_classes, x.shape[1], softmax_scale=3.0)
    fn.proxies.data = torch.from_numpy(np.asarray(params["proxies"]).copy())
    weights = [fn.proxies]
  elif name == "lifted_structure":
    fn = losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0,
                                    distance=lp)
  elif name == "nca":
    fn = losses.NCALoss(softmax_scale=1.0, distance=distances.LpDistance(
        normalize_embeddings=False, power=2))
  elif name == "softmax":
    kernel = torch.from_numpy(np.asarray(params["kernel"]).copy())
    bias = torch.from_numpy(np.asarray(params["bias"]).copy())
    kernel.requires_grad_(True)
    bias.requires_grad_(True)
    weights = [kernel, bias]
    fn = lambda e, y: torch.nn.functional.cross_entropy(e @ kernel + bias, y)
  elif name == "normalized_softmax":
    fn = losses.NormalizedSoftmaxLoss(num_classes, x.shape[1],
                                      temperature=0.05)
    fn.W.data = torch.from_numpy(np.asarray(params["kernel"]).copy())
    weights = [fn.W]
  else:
    return None
  y = torch.from_numpy(labels.astype(np.int64))

  def forward_backward():
    for w in weights:
      w.grad = None
    e = torch.from_numpy(x).requires_grad_(True)
    loss = fn(e, y, miner(e, y)) if miner is not None else fn(e, y)
    loss.backward()
    return loss

  return forward_backward, lambda: float(forward_backward().detach())


# ---------------------------------------------------------------------- main


def main(argv=None):
  args = _parse_args(argv)
  _configure_threads(args.threads)
  sys.path.insert(0, str(_ROOT))
  import jax
  from dmlx import losses

  pml = None
  if not args.no_pml:
    try:
      import torch
      import pytorch_metric_learning
      torch.set_num_threads(args.threads)
      pml = {"torch": torch.__version__,
             "pytorch_metric_learning": pytorch_metric_learning.__version__,
             "torch_threads": torch.get_num_threads()}
    except ImportError as e:
      print(f"pytorch-metric-learning unavailable ({e}); timing dmlx only.")
  names = [n for n in args.losses.split(",") if n] or list(losses.REGISTRY)
  for n in names:
    losses.get(n)  # ValueError on a bad name
  shapes = [(int(b), int(d)) for b in args.batch_sizes.split(",")
            for d in args.dims.split(",")]

  rows = []
  header = (f"{'loss':36s} {'B':>5s} {'D':>4s} {'dmlx ms':>9s} "
            f"{'PML ms':>9s} {'ratio':>6s} {'cpu ratio':>9s} {'same':>4s} "
            f"{'|diff|':>8s}  note")
  print(header)
  print("-" * len(header))
  for b, d in shapes:
    x, labels = _inputs(b, d)
    num_classes = b // _K
    jobs = []
    for name in names:
      jobs.append((name, {}))
      if name in _VARIANTS and not args.no_variants:
        jobs += [(name, {"max_positives": _K - 1}),
                 (name, {"max_positives": None})]
    for name, hyper in jobs:
      run, value, params = _jax_runner(name, x, labels, num_classes, hyper)
      compile_s, jax_s, jax_cpu = _time(run, args.repeats)
      label = name + "".join(f"[{k}={v}]" for k, v in hyper.items())
      row = {"loss": label, "hyper": hyper, "batch_size": b, "dim": d,
             "k": _K, "dmlx_ms": jax_s * 1e3, "dmlx_cpu_ms": jax_cpu * 1e3,
             "dmlx_first_call_s": compile_s, "dmlx_loss": value()}
      if pml is not None and not hyper:
        same, note = _PML_NOTES.get(name, _NO_PML)
        runner = _pml_runner(name, x, labels, num_classes, params)
        row.update(same_form=same, note=note)
        if runner is None:
          row["note"] = "PML skipped: " + note
        else:
          pml_run, pml_value = runner
          _, pml_s, pml_cpu = _time(pml_run, args.repeats)
          row.update(pml_ms=pml_s * 1e3, pml_cpu_ms=pml_cpu * 1e3,
                     pml_loss=pml_value(), ratio=pml_s / jax_s,
                     cpu_ratio=pml_cpu / max(jax_cpu, 1e-9))
      rows.append(row)
      _print_row(row)
      if name == "triplet_all" and not hyper and b <= args.cube_max_batch:
        cube_run, cube_value = _jax_cube_runner(x, labels)
        _, cube_s, cube_cpu = _time(cube_run, args.repeats)
        cube = {"loss": "triplet_all[naive cube]", "batch_size": b, "dim": d,
                "k": _K, "dmlx_ms": cube_s * 1e3,
                "dmlx_cpu_ms": cube_cpu * 1e3, "dmlx_loss": cube_value(),
                "note": f"[B,B,B] JAX reference; the default form is "
                        f"{cube_s / jax_s:.1f}x faster"}
        rows.append(cube)
        _print_row(cube)

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {"jax": jax.__version__, "backend": jax.default_backend(),
          "threads": args.threads, "xla_flags": os.environ.get("XLA_FLAGS"),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
          "repeats": args.repeats, "quick": args.quick, "pml": pml,
          "cpu_count": os.cpu_count(), "machine": platform.machine(),
          "load_average": os.getloadavg(),
          "inputs": "L2-normalised N(0, I) embeddings, P x K=4 labels"}
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
  print(f"\nwrote {out}")


def _print_row(row):
  pml_ms = f"{row['pml_ms']:9.2f}" if "pml_ms" in row else f"{'-':>9s}"
  ratio = f"{row['ratio']:6.2f}" if "ratio" in row else f"{'-':>6s}"
  cpu_ratio = (f"{row['cpu_ratio']:9.2f}" if "cpu_ratio" in row
               else f"{'-':>9s}")
  same = ("yes" if row.get("same_form") else "no") if "same_form" in row \
      else "-"
  diff = (f"{abs(row['pml_loss'] - row['dmlx_loss']):8.1e}"
          if "pml_loss" in row and row.get("same_form") else f"{'-':>8s}")
  print(f"{row['loss']:36s} {row['batch_size']:5d} {row['dim']:4d} "
        f"{row['dmlx_ms']:9.2f} {pml_ms} {ratio} {cpu_ratio} {same:>4s} "
        f"{diff}  "
        f"{row.get('note', '')}", flush=True)


if __name__ == "__main__":
  main()
