"""Stanford-Online-Products-scale evaluation: time and peak memory.

Runs ``dmlx.eval.evaluate_retrieval`` (Recall@{1,2,4,8}, MAP@R, R-precision,
NMI) on 60,502 synthetic 512-d embeddings -- the size of the SOP test split --
and compares it, in the same process, with the naive approach that builds the
full N x N distance matrix. The naive reference only fits on a subsample
(default 20,000 points, 1.6 GB of float32); its memory at full size is
extrapolated as N^2 * 4 bytes and its time as N^2.

Data (``--data``):
  * ``clustered`` (default): 11,316 classes with 2..12 images each (5.35 on
    average, as in SOP's test split), each class a random unit centre plus
    isotropic noise, L2-normalised.
  * ``random``: unit vectors with no structure (same labels).

Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a process-lifetime
high-water mark, so phases run in increasing order of expected peak (the
memory-bounded pass first, the N x N reference last) and each phase reports
the rise of the high-water mark over the RSS it started from.

Usage:
  python benchmarks/eval_scale.py            # full size, several minutes
  python benchmarks/eval_scale.py --quick    # 6,000 points, seconds
Writes ``benchmarks/results/eval_scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from dmlx.eval import evaluate_retrieval, format_table  # noqa: E402

_KS = (1, 2, 4, 8)
_MB = 1024.0 ** 2


def make_data(n: int, dim: int, num_classes: int, kind: str, noise: float,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Synthetic L2-normalised embeddings with SOP-like class sizes."""
  rng = np.random.default_rng(seed)
  sizes = np.full(num_classes, 2)
  extra = n - sizes.sum()
  if extra < 0:
    raise ValueError(f"n={n} is too small for {num_classes} classes of >= 2.")
  while extra > 0:  # spread the rest at random, at most 12 per class
    open_classes = np.flatnonzero(sizes < 12)
    pick = rng.choice(open_classes, min(extra, len(open_classes)),
                      replace=False)
    sizes[pick] += 1
    extra = n - sizes.sum()
  labels = rng.permutation(np.repeat(np.arange(num_classes), sizes))
  if kind == "random":
    x = rng.standard_normal((n, dim), dtype=np.float32)
  else:
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= noise / np.sqrt(dim)
    x += centres[labels]
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x, labels.astype(np.int64)


def naive_retrieval(x: np.ndarray, y: np.ndarray, ks=_KS,
                    row_chunk: int = 1024) -> dict[str, float]:
  """Recall@K, MAP@R, R-precision from the full N x N distance matrix.

  The textbook approach: ``D = ||x||^2 + ||y||^2 - 2 X X^T`` materialised
  (built in place, so the matrix itself is the N^2 * 4-byte peak), the
  diagonal set to +inf, then each row's nearest neighbours read off it.
  """
  n = len(x)
  sq = np.einsum("nd,nd->n", x, x)
  dist = x @ x.T
  dist *= -2.0
  dist += sq[:, None]
  dist += sq[None, :]
  np.fill_diagonal(dist, np.inf)
  _, counts = np.unique(y, return_inverse=False, return_counts=True)
  r_of = dict(zip(np.unique(y).tolist(), (counts - 1).tolist()))
  r = np.array([r_of[v] for v in y.tolist()])
  kmax = max(max(ks), int(r.max()))
  hits = np.zeros(len(ks))
  ap_sum = rp_sum = 0.0
  for s in range(0, n, row_chunk):
    rows = dist[s:s + row_chunk]
    part = np.argpartition(rows, kmax, axis=1)[:, :kmax]
    part_dist = np.take_along_axis(rows, part, axis=1)
    order = part_dist.argsort(axis=1, kind="stable")
    nn = np.take_along_axis(part, order, axis=1)
    match = y[nn] == y[s:s + row_chunk, None]
    for j, k in enumerate(ks):
      hits[j] += match[:, :k].any(axis=1).sum()
    rank = np.arange(1, kmax + 1)
    rr = r[s:s + row_chunk]
    rel = match & (rank <= rr[:, None])
    cum = np.cumsum(rel, axis=1)
    ok = rr > 0
    ap_sum += ((rel * cum / rank).sum(axis=1)[ok] / rr[ok]).sum()
    rp_sum += (cum[:, -1][ok] / rr[ok]).sum()
  del dist
  counted = int((r > 0).sum())
  out = {f"recall@{k}": float(h) / n for k, h in zip(ks, hits)}
  out["map@r"] = ap_sum / counted
  out["r_precision"] = rp_sum / counted
  return out


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _phase(name: str, fn, log: dict) -> dict:
  """Runs ``fn()``, records wall time and the rise of peak RSS."""
  rss0, peak0 = _rss_mb(), _peak_mb()
  t0 = time.perf_counter()
  out = fn()
  seconds = time.perf_counter() - t0
  # If an earlier phase set the high-water mark and this one stayed below it,
  # the rise is only an upper bound on this phase's own extra memory.
  raised = _peak_mb() > peak0
  log[name] = {"seconds": seconds, "rss_before_mb": rss0,
               "peak_rss_mb": _peak_mb(), "peak_raised": raised,
               "peak_rise_mb": max(0.0, _peak_mb() - rss0)}
  print(f"  {name}: {seconds:.1f} s, peak RSS {_peak_mb():.0f} MB "
        f"({'+' if raised else '<= +'}{log[name]['peak_rise_mb']:.0f} MB over "
        f"{rss0:.0f} MB)", flush=True)
  return out


def _class_subsample(y: np.ndarray, n_ref: int, seed: int) -> np.ndarray:
  """Indices of whole classes, drawn at random, totalling about n_ref points."""
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(y, return_counts=True)
  order = rng.permutation(len(classes))
  keep = order[:np.searchsorted(np.cumsum(counts[order]), n_ref) + 1]
  return np.flatnonzero(np.isin(y, classes[keep]))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="6,000 x 128, 1,100 classes, reference on 3,000.")
  parser.add_argument("--data", choices=("clustered", "random"),
                      default="clustered")
  parser.add_argument("--n", type=int, default=60_502)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--classes", type=int, default=11_316)
  parser.add_argument("--n-ref", type=int, default=20_000,
                      help="subsample size for the N x N reference")
  parser.add_argument("--noise", type=float, default=None,
                      help="within-class noise norm (clustered data); default "
                      "2.2 (Recall@1 ~0.79 at full size), 1.2 with --quick")
  parser.add_argument("--nmi-niter", type=int, default=20,
                      help="k-means iterations of NMI (fewer to time it on a "
                      "busy machine; the JSON extrapolates to 20)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=str(
      pathlib.Path(__file__).parent / "results" / "eval_scale.json"))
  args = parser.parse_args(argv)
  if args.quick:
    args.n, args.dim, args.classes, args.n_ref = 6_000, 128, 1_100, 3_000
  if args.noise is None:
    args.noise = 1.2 if args.quick else 2.2

  print(f"eval_scale: N={args.n} D={args.dim} classes={args.classes} "
        f"data={args.data} faiss={faiss.__version__} "
        f"omp_threads={faiss.omp_get_max_threads()} cpus={os.cpu_count()}",
        flush=True)
  log: dict = {}
  x, y = _phase("make_data", lambda: make_data(
      args.n, args.dim, args.classes, args.data, args.noise, args.seed), log)

  # 1. The memory-bounded path at full size (recall + MAP@R pass, then NMI).
  full = _phase("dmlx_recall_map_full", lambda: evaluate_retrieval(
      x, y, _KS, metrics=("recall", "map_r")), log)
  full.update(_phase("dmlx_nmi_full", lambda: evaluate_retrieval(
      x, y, _KS, metrics=("nmi",), nmi_niter=args.nmi_niter), log))

  # 2. Both paths on a subsample of whole classes that the N x N matrix fits.
  sub = _class_subsample(y, args.n_ref, args.seed)
  xs, ys = x[sub], y[sub]
  n_ref = len(sub)
  ours_sub = _phase("dmlx_recall_map_sub", lambda: evaluate_retrieval(
      xs, ys, _KS, metrics=("recall", "map_r")), log)
  naive_sub = _phase("naive_recall_map_sub", lambda: naive_retrieval(xs, ys),
                     log)
  max_diff = max(abs(ours_sub[k] - naive_sub[k]) for k in naive_sub)

  # 3. Report.
  scale = (args.n / n_ref) ** 2
  naive_full_gb = args.n ** 2 * 4 / 1024 ** 3
  naive_sub_gb = n_ref ** 2 * 4 / 1024 ** 3
  time_full = log["dmlx_recall_map_full"]["seconds"] + log["dmlx_nmi_full"][
      "seconds"]
  summary = {
      "config": vars(args) | {"n_ref_actual": n_ref},
      "machine": {"cpus": os.cpu_count(), "faiss": faiss.__version__,
                  "faiss_omp_threads": faiss.omp_get_max_threads(),
                  "faiss_gpus": faiss.get_num_gpus(),
                  "python": platform.python_version(),
                  "loadavg_at_end": os.getloadavg()},
      "phases": log,
      "metrics_full": full,
      "metrics_sub_dmlx": ours_sub,
      "metrics_sub_naive": naive_sub,
      "max_abs_diff_sub": max_diff,
      "naive_matrix_gb_sub": naive_sub_gb,
      "naive_matrix_gb_full_extrapolated": naive_full_gb,
      "naive_seconds_full_extrapolated":
          log["naive_recall_map_sub"]["seconds"] * scale,
      "dmlx_seconds_full_total": time_full,
      # k-means costs ~one N x k_clusters exact search per Lloyd iteration,
      # plus one for the final assignment: scale to the default 20 iterations.
      "dmlx_nmi_seconds_full_at_20_iter_extrapolated":
          log["dmlx_nmi_full"]["seconds"] * 21 / (args.nmi_niter + 1),
  }
  rows = {
      f"dmlx full N={args.n} (recall+map@r)": {
          "seconds": log["dmlx_recall_map_full"]["seconds"],
          "peak_rise_mb": log["dmlx_recall_map_full"]["peak_rise_mb"]},
      f"dmlx full N={args.n} (nmi)": {
          "seconds": log["dmlx_nmi_full"]["seconds"],
          "peak_rise_mb": log["dmlx_nmi_full"]["peak_rise_mb"]},
      f"dmlx sub N={n_ref} (recall+map@r)": {
          "seconds": log["dmlx_recall_map_sub"]["seconds"],
          "peak_rise_mb": log["dmlx_recall_map_sub"]["peak_rise_mb"]},
      f"naive NxN sub N={n_ref}": {
          "seconds": log["naive_recall_map_sub"]["seconds"],
          "peak_rise_mb": log["naive_recall_map_sub"]["peak_rise_mb"],
          "matrix_mb": naive_sub_gb * 1024},
      f"naive NxN full N={args.n} (extrapolated)": {
          "seconds": summary["naive_seconds_full_extrapolated"],
          "matrix_mb": naive_full_gb * 1024},
  }
  print()
  print(format_table(rows, fmt="{:.1f}"))
  print()
  print(format_table({"full (dmlx)": full, "sub (dmlx)": ours_sub,
                      "sub (naive NxN)": naive_sub}))
  bounds = [k for k, v in log.items() if not v["peak_raised"]]
  if bounds:
    print(f"peak_rise_mb is an upper bound for {', '.join(bounds)} (the "
          "high-water mark was set by an earlier phase)")
  print(f"NMI k-means at {args.nmi_niter} iterations; at 20: "
        f"~{summary['dmlx_nmi_seconds_full_at_20_iter_extrapolated']:.0f} s")
  print(f"\nmax |dmlx - naive| on the subsample: {max_diff:.2e} (float32 "
        "near-ties may order differently in faiss and numpy)")
  print(f"naive N x N matrix at N={args.n}: {naive_full_gb:.1f} GB float32 "
        f"(N^2 * 4 bytes); at N={n_ref}: {naive_sub_gb:.2f} GB")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(summary, indent=2, default=float) + "\n")
  print(f"wrote {out}")
  return summary


if __name__ == "__main__":
  main()
