"""Benchmark of the NNGK centre-bank refresh: FAISS k-NN, exact vs approximate.

Meyer et al. (ICIP 2018), Section 2.2-2.3: every ``update_interval`` epochs
each training example needs its k = 100 approximate nearest centres among all
N training embeddings, excluding itself. This times that search for a bank of
N = 60,000 centres in D = 512 dimensions (the size of a large DML training set)
with the index types :func:`dmlx.methods.nngk.build_bank` offers and
measures their recall against exact search:

* ``ivf_join``: the bank among itself by IVF cell blocks
  (:func:`dmlx.index.self_join.self_knn_cells`, nlist = sqrt(N), k-means on
  64 points per cell, each cell's members searched exactly with one BLAS
  product among the members of its ``nprobe`` nearest cells); timed whole,
  k-means included.
* ``auto (checked ivf_join)``: what NNGK's ``index_type='auto'`` runs above
  20,000 centres (:func:`dmlx.index.self_join.self_knn_checked`): the join
  kept at a recall >= 0.95 measured on 256 rows (nprobe 4, then 8), exact
  search otherwise; timed whole.
* ``flat``: exact brute force. Timed on a subsample of queries and
  extrapolated to all N (``--full-exact`` times all N instead).
* ``hnsw``: HNSW graph (M = 32), built on all N, all N queries searched with
  the ``exclude_self`` path NNGK uses, at efSearch 128 and 2(k+1) (the
  :func:`dmlx.index.knn` default).
* ``ivf``: inverted file, nlist = 4 sqrt(N) cells, all N queries searched at a
  few ``nprobe`` values.

Recall = mean |approx ∩ exact| / k over the subsample of query rows (the
neighbour lists exclude the query itself).

Data: a seeded Gaussian mixture: ``--classes`` = 100 class means drawn with
std ``--spread`` = 1 per dimension, unit-variance isotropic noise around them
(≈ 600 points per class, nearest class-mates nearer than other classes).
The class structure favours IVF (its k-means cells align with the classes, so
few probes already find every neighbour), while the full 512-dimensional
within-class noise makes graph (HNSW) search work hard; real embeddings lie
between. Re-measure on real embeddings before choosing ``nprobe``/``efSearch``.

Timings: ``*_s`` is wall clock, ``*_cpu_s`` this process's CPU time over all
FAISS threads (robust to other processes sharing the cores). Set
``OMP_WAIT_POLICY=PASSIVE`` on a shared machine.

Run::

  python -m benchmarks.nngk_refresh --quick   # N=10,000, from the repo root
  python -m benchmarks.nngk_refresh           # N=60,000, D=512, k=100
  python -m benchmarks.nngk_refresh --spread=0.3 --faiss-indexes= \
      --out=benchmarks/results/nngk_refresh_overlapping.json   # harder data
  python -m benchmarks.nngk_refresh --embeddings=/tmp/tin.npz --faiss-indexes= \
      --out=benchmarks/results/nngk_refresh_tinyimagenet.json  # real features

(``/tmp/tin.npz``: ``python launch/embed.py --workdir=<a run> --layer=pooled
--images=../shared/data/tiny-imagenet/tiny-imagenet-101x500.zip
--out=/tmp/tin.npz``.)

Writes ``benchmarks/results/nngk_refresh.json`` (``nngk_refresh_quick.json``
with ``--quick``).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import faiss
import numpy as np

from benchmarks import _common
from dmlx import host_memory
from dmlx import index as dmlx_index
from dmlx.index import self_join


def _data(n: int, d: int, classes: int, spread: float,
          seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  means = rng.normal(scale=spread, size=(classes, d)).astype(np.float32)
  labels = rng.integers(0, classes, n)
  return means[labels] + rng.normal(size=(n, d)).astype(np.float32)


def _exact_subsample(x: np.ndarray, rows: np.ndarray,
                     k: int) -> tuple[np.ndarray, "_Timer"]:
  """Exact k nearest (excluding self) of ``x[rows]`` among all of ``x``."""
  with _Timer() as timer:
    index = dmlx_index.build_index(x, index_type="flat", use_gpu=False)
    _, nbrs = index.search(x[rows], k + 1)
  out = np.empty((len(rows), k), np.int64)
  for i, (row, cand) in enumerate(zip(rows, nbrs)):
    keep = cand[cand != row]
    out[i] = keep[:k]
  return out, timer


class _Timer:
  """Wall-clock and process CPU seconds of a block (CPU time is robust to
  other processes sharing the cores; wall time is what a refresh costs)."""

  def __enter__(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self._wall
    self.cpu = time.process_time() - self._cpu


def _search_all(index: faiss.Index, x: np.ndarray, k: int) -> tuple[
    np.ndarray, _Timer]:
  """All N queries with NNGK's exclude_self path; returns (nbrs, timer)."""
  nbrs = np.empty((len(x), k), np.int64)
  with _Timer() as timer:
    for start, _, idx in dmlx_index.search_batches(index, x, k,
                                                   exclude_self=True):
      nbrs[start:start + len(idx)] = idx
  return nbrs, timer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="N=10,000 and fewer settings (seconds).")
  parser.add_argument("--n", type=int, default=None)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--queries", type=int, default=None,
                      help="query rows for exact recall (default 2000; 500 "
                      "with --quick).")
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--spread", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--full-exact", action="store_true",
                      help="time exact search for all N queries too.")
  parser.add_argument("--embeddings", default="",
                      help="real embeddings instead of the mixture: a .npz "
                      "from launch/embed.py ('vectors') or a .npy [N, D]")
  parser.add_argument("--join-nprobe", default="2,4,8",
                      type=lambda v: [int(p) for p in v.split(",")],
                      help="nprobe values of the ivf_join rows")
  parser.add_argument("--faiss-indexes", default="hnsw,ivf",
                      type=lambda v: [p for p in v.split(",") if p],
                      help="FAISS index rows besides ivf_join: hnsw, ivf "
                      "('' for none; each takes about a minute at N=60k)")
  _common.add_host_memory_argument(parser)
  parser.add_argument("--out", default=None, help="default "
                      "benchmarks/results/nngk_refresh.json "
                      "(nngk_refresh_quick.json with --quick).")
  args = parser.parse_args()
  args.host_memory_in_effect = host_memory.configure(args.host_memory)  # before FAISS's threads
  if args.out is None:
    args.out = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        "nngk_refresh_quick.json" if args.quick else "nngk_refresh.json")
  if args.embeddings:
    loaded = np.load(args.embeddings)
    x = np.ascontiguousarray(
        loaded["vectors"] if hasattr(loaded, "files") else loaded, np.float32)
    args.n, args.dim = x.shape
  n = args.n or (10_000 if args.quick else 60_000)
  q = args.queries or (500 if args.quick else 2000)
  k = args.k
  for name, value in (("n", n), ("dim", args.dim), ("k", k), ("queries", q)):
    if value < 1:
      raise ValueError(f"--{name} must be positive, got {value}.")
  if q > n or k >= n:
    raise ValueError(f"need queries <= n and k < n, got queries={q}, k={k}, "
                     f"n={n}.")

  load_start = round(os.getloadavg()[0], 2)
  if not args.embeddings:
    x = _data(n, args.dim, args.classes, args.spread, args.seed)
  rows = np.sort(np.random.default_rng(args.seed + 1).choice(n, q, False))
  results = []

  exact, t = _exact_subsample(x, rows, k)
  flat = {"index": "flat", "params": {}, "recall": 1.0, "build_s": 0.0,
          "search_s_subsample": round(t.wall, 3),
          "search_s": round(t.wall * n / q, 2),
          "search_cpu_s": round(t.cpu * n / q, 2),
          "search_s_is": "extrapolated from the subsample"}
  if args.full_exact:
    index = dmlx_index.build_index(x, index_type="flat", use_gpu=False)
    _, t = _search_all(index, x, k)
    flat.update(search_s=round(t.wall, 2), search_cpu_s=round(t.cpu, 2),
                search_s_is="measured")
  flat["total_s"] = flat["search_s"]
  results.append(flat)
  print(f"flat: {flat['search_s']:.1f}s ({flat['search_s_is']}), recall 1",
        flush=True)

  def record(name, params, build, index):
    nbrs, search = _search_all(index, x, k)
    if np.any(nbrs == np.arange(n)[:, None]):
      raise RuntimeError(f"{name}: a query's own id is in its list.")
    recall = dmlx_index.measure_recall(nbrs[rows], exact)
    results.append({
        "index": name, "params": params, "recall": round(recall, 4),
        "build_s": round(build.wall, 2), "search_s": round(search.wall, 2),
        "build_cpu_s": round(build.cpu, 2), "search_cpu_s": round(search.cpu, 2),
        "search_s_is": "measured", "total_s": round(build.wall + search.wall, 2)})
    print(f"{name} {params}: build {build.wall:.1f}s search {search.wall:.1f}s "
          f"(cpu {build.cpu:.1f}+{search.cpu:.1f}s) recall {recall:.4f}",
          flush=True)

  for nprobe in (args.join_nprobe if not args.quick else args.join_nprobe[:1]):
    with _Timer() as t:
      _, nbrs = dmlx_index.knn(x, None, k, exclude_self=True,
                               index_type="ivf_join", nprobe=nprobe,
                               seed=args.seed)
    if np.any(nbrs == np.arange(n)[:, None]):
      raise RuntimeError("ivf_join: a query's own id is in its list.")
    recall = dmlx_index.measure_recall(nbrs[rows], exact)
    results.append({
        "index": "ivf_join", "params": {"nlist": int(round(np.sqrt(n))),
                                        "nprobe": nprobe},
        "recall": round(recall, 4), "build_s": 0.0, "search_s": round(t.wall, 2),
        "search_cpu_s": round(t.cpu, 2), "search_s_is": "measured (k-means "
        "included)", "total_s": round(t.wall, 2)})
    print(f"ivf_join nprobe={nprobe}: {t.wall:.2f}s (cpu {t.cpu:.1f}s) recall "
          f"{recall:.4f}", flush=True)
  with _Timer() as t:  # NNGK's index_type='auto' above 20,000 centres
    _, nbrs, info = self_join.self_knn_checked(x, k, seed=args.seed)
  recall = dmlx_index.measure_recall(nbrs[rows], exact)
  results.append({
      "index": "auto (checked ivf_join)", "params": info,
      "recall": round(recall, 4), "build_s": 0.0, "search_s": round(t.wall, 2),
      "search_cpu_s": round(t.cpu, 2), "search_s_is": "measured",
      "total_s": round(t.wall, 2)})
  print(f"auto: {info} {t.wall:.2f}s recall {recall:.4f}", flush=True)
  if not args.faiss_indexes:
    args.faiss_indexes = []
  if "hnsw" in args.faiss_indexes:
    _faiss_hnsw(args, x, k, record)
  if "ivf" in args.faiss_indexes:
    _faiss_ivf(args, x, n, k, record)
  _write(args, n, q, k, load_start, results)


def _faiss_hnsw(args, x, k, record):
  with _Timer() as build:
    hnsw = dmlx_index.build_index(x, index_type="hnsw", hnsw_m=32,
                                  ef_search=128, use_gpu=False)
  for ef in ([2 * (k + 1)] if args.quick else [128, 2 * (k + 1)]):
    hnsw.hnsw.efSearch = ef
    record("hnsw", {"M": 32, "efSearch": ef}, build, hnsw)



def _faiss_ivf(args, x, n, k, record):
  nlist = int(round(4 * np.sqrt(n)))
  with _Timer() as build:
    ivf = dmlx_index.build_index(x, index_type="ivf", nlist=nlist,
                                 nprobe=max(1, nlist // 8), use_gpu=False,
                                 seed=args.seed)
  for nprobe in ([nlist // 8] if args.quick else
                 [max(1, nlist // 32), nlist // 8]):
    ivf.nprobe = nprobe
    record("ivf", {"nlist": nlist, "nprobe": nprobe}, build, ivf)


def _write(args, n, q, k, load_start, results):
  report = {
      "benchmark": "nngk_refresh",
      "what": "k-NN of every centre among all centres (excluding itself), "
              "as in an NNGK bank refresh; recall vs exact on a query "
              "subsample; times in seconds, faiss-cpu",
      "n": n, "dim": args.dim, "k": k, "recall_queries": q,
      "data": ({"kind": "embeddings", "file": os.path.basename(args.embeddings)}
               if args.embeddings else
               {"kind": "gaussian_mixture", "classes": args.classes,
                "spread": args.spread, "seed": args.seed}),
      "quick": bool(args.quick),
      "faiss_version": faiss.__version__,
      "faiss_threads": faiss.omp_get_max_threads(),
      "host_memory": args.host_memory_in_effect,
      "cpu_count": os.cpu_count(),
      "load_avg_1m_at_start": load_start,
      "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
      "timing_note": "*_s = wall clock, *_cpu_s = this process's CPU time "
                     "(all threads); on a shared machine wall >> cpu/threads",
      "machine": platform.platform(),
      "results": results,
  }
  _common.write_results(args.out, report, indent=2)


if __name__ == "__main__":
  main()
