"""Host clustering of the seed methods at 60k x 128: Magnet and MIC refreshes.

* **Magnet** (Rippel et al., ICLR 2016, Sec. 3.1, eqs. 2-3): the cluster index
  is K-means of *each class's* representations into K clusters
  (:func:`dmlx.methods.magnet_index.build_cluster_index`, k-means++ seeding,
  ``niter`` Lloyd iterations per class).
* **MIC** (Roth et al., ICCV 2019, Sec. 3.3, Algorithm 1): surrogate labels
  are K-means of the class-standardised features of the whole training set
  into C clusters (:func:`dmlx.methods.mic_clustering.compute_surrogate_labels`).

Both are timed on a seeded Gaussian mixture of ``--n`` = 60,000 points in
``--dim`` = 128 dimensions over ``--classes`` classes (class means N(0, I),
unit within-class noise), the wall clock of the whole call (median of
``--repeats``), with FAISS on all cores (``OMP_WAIT_POLICY=PASSIVE``). The
issue's target is < 2 s each on this 2-core machine. Also reported: the
k-means objective of the result relative to the best of ``--redo`` restarts
with 3x the iterations, so a faster setting cannot hide a worse clustering.

  python benchmarks/clustering.py
  python benchmarks/clustering.py --classes=500 --magnet_k=8 --mic_clusters=200

Writes ``benchmarks/results/clustering.json``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import faiss  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dmlx.methods import magnet_index, mic_clustering  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import _common  # pylint: disable=g-import-not-at-top,wrong-import-position


def _data(n: int, d: int, classes: int, seed: int):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(classes, d)).astype(np.float32)
  labels = rng.integers(0, classes, n)
  return means[labels] + rng.normal(size=(n, d)).astype(np.float32), labels


def _timed(fn, repeats: int):
  times, out = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), out


def _objective(x: np.ndarray, assignments: np.ndarray) -> float:
  """Sum of squared distances to the assigned clusters' means (eq. 2)."""
  order = np.argsort(assignments, kind="stable")
  a, xs = assignments[order], x[order].astype(np.float64)
  _, starts = np.unique(a, return_index=True)
  sums = np.add.reduceat(xs, starts, axis=0)
  counts = np.diff(np.append(starts, len(a)))[:, None]
  return float(np.sum(xs ** 2) - np.sum(sums ** 2 / counts))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=60000)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--magnet_k", type=int, default=8)
  p.add_argument("--mic_clusters", type=int, default=30)
  p.add_argument("--niter", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  _common.add_host_memory_argument(p)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "clustering.json"))
  args = p.parse_args(argv)
  from dmlx import host_memory  # pylint: disable=g-import-not-at-top
  memory = host_memory.configure(args.host_memory)  # before FAISS's threads
  x, labels = _data(args.n, args.dim, args.classes, 0)
  rows = []

  magnet_s, index = _timed(lambda: magnet_index.build_cluster_index(
      x, labels, args.classes, args.magnet_k, niter=args.niter), args.repeats)
  long_index = magnet_index.build_cluster_index(
      x, labels, args.classes, args.magnet_k, niter=3 * args.niter, seed=1)
  rows.append({"what": "magnet per-class k-means", "K": args.magnet_k,
               "classes": args.classes, "niter": args.niter,
               "seconds": magnet_s,
               "objective_vs_3x_iterations": _objective(x, index.assignments)
               / _objective(x, long_index.assignments)})

  mic_s, surrogate = _timed(lambda: mic_clustering.compute_surrogate_labels(
      x, labels, args.mic_clusters, niter=args.niter), args.repeats)
  z = mic_clustering.standardise_per_class(x, labels, "mean")
  long_labels = mic_clustering.compute_surrogate_labels(
      x, labels, args.mic_clusters, niter=3 * args.niter, seed=1)
  rows.append({"what": "mic surrogate labels (standardise + k-means)",
               "C": args.mic_clusters, "niter": args.niter, "seconds": mic_s,
               "objective_vs_3x_iterations": _objective(z, surrogate)
               / _objective(z, long_labels)})

  for r in rows:
    print(f"{r['what']:48s} {r['seconds']:7.3f} s   objective / 3x-iteration "
          f"run's: {r['objective_vs_3x_iterations']:.4f}")
  meta = {"n": args.n, "dim": args.dim, "classes": args.classes,
          "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
          "cpu_count": os.cpu_count(), "machine": platform.platform(),
          "load_average": os.getloadavg(), "repeats": args.repeats,
          "target_s": 2.0, "host_memory": memory}
  _common.write_results(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
  main()
