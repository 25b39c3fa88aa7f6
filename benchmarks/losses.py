"""Times every dmlx loss (forward + backward) against pytorch-metric-learning
and against a roofline floor.

For each loss and each batch shape (P classes x K=4 images, L2-normalised
random embeddings), the jitted ``value_and_grad`` of the dmlx loss is timed
(median of ``--repeats`` calls, each ``block_until_ready``; fewer for calls
slower than ``--budget-s`` allows), and, when ``torch`` and
``pytorch_metric_learning`` import, the equivalent PML loss on the *same*
inputs in the same process (``loss.backward()``, median). Both run
single-threaded by default (``--threads 1``: ``torch.set_num_threads(1)`` and
XLA's ``--xla_cpu_multi_thread_eigen=false``); with more threads
``OMP_WAIT_POLICY=PASSIVE`` is set for torch. Results print as a table and go
to ``benchmarks/results/losses.json``.

Rows: every registered loss (:data:`dmlx.losses.REGISTRY`), the
``max_positives`` variants of the table-based losses, the naive ``[B, B, B]``
batch-all reference (B <= ``--cube-max-batch``), N-pair with one
(anchor, positive) pair per class (``npair[pairs=one_per_class]...``, PML's
``NPairsLoss`` like for like) and the seed methods' losses as their methods
call them (no PML counterpart): ``nngk[bank]`` (a bank of 10 B centres,
k = 100 stored neighbours per example, :func:`dmlx.losses.nngk`),
``magnet`` (one cluster per class of the batch,
:func:`dmlx.losses.magnet_loss`), ``mic_mi`` (MIC's l_d with gradient
reversal, :func:`dmlx.losses.mutual_information_loss`, R of width 512) and
``dmlda_density`` (DML-DA's L_DA with its correlation penalty,
:func:`dmlx.losses.density_regularizer`).

``ratio`` is PML time / dmlx time (wall-clock medians); ``cpu ratio`` the same
for process CPU time, which a busy shared machine disturbs less.

Roofline. At start-up the process measures its own matmul rate (a 2048 x 2048
float32 ``jnp`` matmul) and memory bandwidth (a 64 MiB float32 ``x + 1`` with
the buffer donated, i.e. one read and one write per element), with the same
thread setting. Each row's ``floor ms`` is ``max(FLOPs / FLOP/s, bytes /
bytes/s)`` for the work its loss *family* cannot avoid (see the ``_cost_*``
functions: only the matmuls and the big ``B x B``-, ``B x (K-1) x B``-,
``B x k x D``-sized arrays are counted; elementwise arithmetic, ``exp``/``log``,
sorts, label masks and per-call dispatch are not), and ``x floor`` = dmlx ms /
floor ms. A row far above its floor is either slow or dominated by work the
model leaves out; the JSON says which model each row used.

``x full`` is the same ratio against a fuller floor that adds the
``exp``/``log`` evaluations the family cannot avoid (:func:`_transcendentals`)
at this process's measured rate (``sum(exp(u))`` and ``sum(log(u))`` on 4M
floats) to the FLOPs' time: the soft losses (the smooth triplet's softplus
table, margin's sampling weights, the log-sum-exps) spend much of their time
there, which the matmul-and-bytes floor cannot show.

Where the PML loss computes the same function (``same_form`` in the table), the
two loss values are compared too; elsewhere PML mines or reduces differently
(noted per row) and only the time is comparable.

Usage::

  python benchmarks/losses.py --quick          # tiny shapes, a few minutes
  python benchmarks/losses.py                  # B (512, 2048) x D 128
  python benchmarks/losses.py --batch-sizes 512 --dims 128,512
  python benchmarks/losses.py --losses triplet_all,margin,magnet --repeats 20
  python benchmarks/losses.py --no-pml --no-variants   # dmlx rows only

On a shared machine pin it to one core (``taskset -c 1 python ...``).
``--host-memory`` is :mod:`dmlx.host_memory`'s mode (default ``auto``, as the
launchers: freed memory kept in the process on CPU; ``system`` for glibc's
defaults, under which every call page-faults its B x B temporaries in again).
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
_F32 = 4  # bytes per float32

# Seed methods' losses: not registry losses, timed as their methods call them.
_SEED_ROWS = ("nngk[bank]", "magnet", "mic_mi", "dmlda_density")
_NNGK_BANK_FACTOR = 10    # bank of 10 B centres
_NNGK_NEIGHBOURS = 100    # k stored neighbours per example
_MIC_HIDDEN = 512         # R's hidden width (config.method.projection_dim)
# N-pair like for like with PML's NPairsLoss (one pair per class, no L2 term).
_NPAIR_PML = {"pairs": "one_per_class", "l2_reg": 0.0}


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny run: B in (32, 64), D=32, 3 repeats")
  parser.add_argument("--batch-sizes", default="512,2048")
  parser.add_argument("--dims", default="128")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--min-time-s", type=float, default=0.25,
                      help="fast rows repeat until their calls add up to this")
  parser.add_argument("--budget-s", type=float, default=20.0,
                      help="per-row timing budget: slower calls get fewer "
                      "repeats (at least 3)")
  parser.add_argument("--losses", default="",
                      help="comma-separated registry names and/or seed rows "
                      f"{', '.join(_SEED_ROWS)} (default: all)")
  parser.add_argument("--threads", type=int, default=1,
                      help="threads for torch and XLA (1 = single-threaded)")
  parser.add_argument("--no-pml", action="store_true",
                      help="do not time pytorch-metric-learning")
  parser.add_argument("--no-variants", action="store_true",
                      help="skip the max_positives=K-1 / None rows of "
                      "triplet_all, triplet_semihard and margin, and the "
                      "one-pair-per-class npair row")
  parser.add_argument("--cube-max-batch", type=int, default=512,
                      help="also time the naive [B, B, B] batch-all triplet "
                      "loss up to this batch size (0 disables)")
  parser.add_argument("--pml-lifted-max-batch", type=int, default=256,
                      help="PML's LiftedStructureLoss builds |P| x |N| "
                      "matrices (13 s a call at B=256): skipped above this")
  sys.path.insert(0, str(_ROOT))
  from benchmarks import _common  # pylint: disable=g-import-not-at-top
  _common.add_host_memory_argument(parser)
  parser.add_argument("--out", default=str(
      _ROOT / "benchmarks" / "results" / "losses.json"))
  args = parser.parse_args(argv)
  if args.quick:
    args.batch_sizes, args.dims, args.repeats = "32,64", "32", 3
    args.min_time_s = 0.0
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


def _time(fn, repeats: int, budget_s: float = float("inf"),
          min_total_s: float = 0.0) -> tuple[float, float, float]:
  """(first call seconds, median wall seconds, median CPU seconds).

  The first call (compilation included) is not in the median. Calls slower
  than ``budget_s / repeats`` are repeated fewer times (at least 3); fast
  ones more than ``repeats`` times, until they add up to ``min_total_s``
  (at most 2000 calls), so a sub-millisecond row is not the median of a few
  calls on cold caches.
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  walls, cpus = [], []
  while True:
    w, c = time.perf_counter(), time.process_time()
    fn()
    walls.append(time.perf_counter() - w)
    cpus.append(time.process_time() - c)
    enough = len(walls) >= repeats and (
        sum(walls) >= min_total_s or len(walls) >= 2000)
    if enough or (len(walls) >= 3 and sum(walls) + walls[0] > budget_s):
      break
  return first, statistics.median(walls), statistics.median(cpus)


# ------------------------------------------------------------------ roofline


def _machine_rates(repeats: int = 7) -> dict:
  """Measured in this process, with its thread setting: matmul FLOP/s (a
  2048 x 2048 float32 jnp matmul, 2 n^3 FLOPs), memory bytes/s (``x + 1`` on
  a 64 MiB float32 array whose buffer is donated, so steady state: one read
  and one write per element, no fresh pages) and the time of an empty jitted
  call (dispatch overhead, not part of any floor)."""
  import jax
  import jax.numpy as jnp

  n = 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  _, matmul_s, _ = _time(lambda: matmul(a, b).block_until_ready(), repeats)

  size = 1 << 24
  add = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  buf = [jnp.zeros((size,), jnp.float32)]

  def step():
    buf[0] = add(buf[0])
    buf[0].block_until_ready()

  _, add_s, _ = _time(step, max(repeats, 9))
  empty = jax.jit(lambda x: x)
  one = jnp.zeros(())
  _, empty_s, _ = _time(lambda: empty(one).block_until_ready(), 50)
  # exp and log of 4M floats in [0.5, 1.5], summed (not bound by writes).
  u = jax.random.uniform(jax.random.PRNGKey(2), (n, n), jnp.float32, 0.5, 1.5)
  trans = {}
  for name, f in (("exp", jnp.exp), ("log", jnp.log)):
    g = jax.jit(lambda u, f=f: jnp.sum(f(u)))
    _, trans[name], _ = _time(lambda g=g: g(u).block_until_ready(), repeats)
  return {"matmul_flops_per_s": 2 * n ** 3 / matmul_s,
          "transcendentals_per_s": 2 * n * n / (trans["exp"] + trans["log"]),
          "bytes_per_s": 2 * _F32 * size / add_s,
          "call_overhead_ms": empty_s * 1e3,
          "matmul_probe": f"{n}x{n} float32 matmul, {matmul_s * 1e3:.1f} ms",
          "bandwidth_probe": f"donated x + 1 on {size} float32, "
                             f"{add_s * 1e3:.2f} ms",
          "transcendental_probe": f"sum(exp(u)), sum(log(u)) on {n}x{n} "
                                  f"float32, {trans['exp'] * 1e3:.2f} and "
                                  f"{trans['log'] * 1e3:.2f} ms"}


def _cost_pairwise(b: int, n: int, d: int, *, passes: int = 4
                   ) -> tuple[float, float, str]:
  """A loss on one ``[b, n]`` matrix of dot products or distances.

  FLOPs: the ``[b, d] x [d, n]`` product, ``2 b n d`` forward, and its
  backward, ``4 b n d`` (the cotangent times each operand; for ``x x^T``
  the two halves of the gradient, or one product with ``G + G^T``, which
  XLA may fuse into ``2 b n d``: we count ``4 b n d`` either way).
  Bytes: ``passes`` float32 passes over the ``[b, n]`` matrix; 4 = the
  product written and read once by a fused loss in the forward pass, and the
  cotangent written and read once by the backward product. Everything else
  (the elementwise loss arithmetic and its ``exp``/``log``/``sqrt``, label
  masks, the ``[b]``-sized reductions and ``O(b d)`` norms) is not counted.
  """
  return (6.0 * b * n * d, passes * _F32 * b * n,
          f"pairwise[{b}x{n}x{d}, {passes} passes]")


def _cost_table(b: int, w: int, *, differentiable: bool
                ) -> tuple[float, float, str]:
  """An (anchor, positive, negative) array ``[b, w, b]``, ``w = K - 1``.

  Bytes: one float32 write and read of the array in the forward pass (integer
  mining: its backward is ``[b, b]``), twice that when the loss is
  differentiated through it (the soft triplet). A fused implementation need
  not materialise it at all, so this over-counts memory and still leaves out
  the ``b^2 w`` compares/``softplus``es it costs; no FLOPs.
  """
  passes = 4 if differentiable else 2
  return 0.0, passes * _F32 * b * w * b, f"table[{b}x{w}x{b}]"


def _cost_cube(b: int) -> tuple[float, float, str]:
  """The naive batch-all reference: the ``[b, b, b]`` cube materialised as
  float32 once in the forward and once in the backward pass (write + read)."""
  return 0.0, 4.0 * _F32 * b ** 3, f"cube[{b}^3]"


def _cost_gathered(b: int, k: int, d: int) -> tuple[float, float, str]:
  """NNGK: each example against its ``k`` gathered stored centres.

  FLOPs: the ``b k`` dot products / squared distances of ``d`` terms,
  ``2 b k d`` forward and ``4 b k d`` backward (batched matrix-vector work,
  memory-bound, counted at the matmul rate anyway). Bytes: the ``[b, k, d]``
  float32 centres read from the bank once in the forward and once in the
  backward pass (``8 b k d``); the ``[b, k]`` logits and the bank gather's
  index arithmetic are not counted.
  """
  return (6.0 * b * k * d, 2.0 * _F32 * b * k * d,
          f"gathered[{b}x{k}x{d}]")


def _cost_mlp(b: int, d_in: int, hidden: int, d_out: int
              ) -> tuple[float, float, str]:
  """MIC's l_d: the two-layer projection R on ``[b, d_in]``.

  FLOPs: ``2 b (d_in h + h d_out)`` forward, twice that backward (input and
  weight gradients). Bytes: the ``[b, h]`` hidden activation written and
  read forward, its cotangent written and read backward (4 passes); the
  ``[b, d]`` embeddings and the normalisations are not counted.
  """
  return (6.0 * b * (d_in * hidden + hidden * d_out),
          4.0 * _F32 * b * hidden, f"mlp[{b}x{d_in}x{hidden}x{d_out}]")


def _cost_segment(b: int, d: int) -> tuple[float, float, str]:
  """DML-DA's L_DA: per-class means and densities are segment sums over the
  batch, ``O(b d)``, and the class-pair penalty is ``O(b)`` (or ``O(C^2)``).
  Bytes: the ``[b, d]`` embeddings read in the forward pass, read again and
  their gradient written in the backward (3 float32 passes); no FLOPs."""
  return 0.0, 3.0 * _F32 * b * d, f"segment[{b}x{d}]"


def _add(*costs):
  return (sum(c[0] for c in costs), sum(c[1] for c in costs),
          " + ".join(c[2] for c in costs))


def _cost(name: str, hyper: dict, b: int, d: int) -> tuple[float, float, str]:
  """The roofline model of one row: ``(matmul FLOPs, bytes, description)``."""
  num_classes = b // _K
  w = _K - 1
  sorted_form = "max_positives" in hyper and hyper["max_positives"] is None
  if name in ("triplet_all", "triplet_semihard"):
    if sorted_form:  # sorts are not modelled
      return _cost_pairwise(b, b, d)
    return _add(_cost_pairwise(b, b, d),
                _cost_table(b, w, differentiable=False))
  if name == "smooth_triplet":
    return _add(_cost_pairwise(b, b, d),
                _cost_table(b, w, differentiable=True))
  if name == "margin":
    # + the sampling CDF, one more [B, B] array written and read.
    return _cost_pairwise(b, b, d, passes=6)
  if name == "npair" and hyper.get("pairs") == "one_per_class":
    return _cost_pairwise(num_classes, num_classes, d)
  if name in ("proxy_nca", "softmax", "normalized_softmax"):
    return _cost_pairwise(b, num_classes, d)
  if name == "triplet_all[naive cube]":
    return _add(_cost_pairwise(b, b, d), _cost_cube(b))
  if name == "nngk[bank]":
    return _cost_gathered(b, _NNGK_NEIGHBOURS, d)
  if name == "magnet":  # distances to B cluster slots (any composition)
    return _cost_pairwise(b, b, d)
  if name == "mic_mi":
    return _cost_mlp(b, d, _MIC_HIDDEN, d)
  if name == "dmlda_density":
    return _cost_segment(b, d)
  # contrastive, dmlda_contrastive, npair, nca, lifted_structure,
  # triplet_batch_hard: one [B, B] matrix.
  return _cost_pairwise(b, b, d)


def _transcendentals(name: str, hyper: dict, b: int) -> tuple[float, str]:
  """The ``exp``/``log`` evaluations a loss family cannot avoid in its
  forward pass (its backward reuses them), and which ones: one per entry of
  the ``[B, B]`` (or ``[B, C]``) matrix it log-sum-exps or soft-maxes over,
  margin's three per ``[B, B]`` entry (``log d``, ``log(1 - d^2/4)`` and the
  ``exp`` of the sampling weight), the soft triplet's two per ``[B, W, B]``
  table entry (``exp`` and ``log1p`` of its softplus), NNGK's ``exp`` and
  weight ``log`` per stored neighbour. Hinge losses need none (``sqrt`` is
  not counted)."""
  c, w = b // _K, _K - 1
  if name == "margin":
    return 3.0 * b * b, f"3 x [{b}x{b}]"
  if name == "smooth_triplet":
    return 2.0 * b * w * b, f"2 x [{b}x{w}x{b}]"
  if name == "npair" and hyper.get("pairs") == "one_per_class":
    return float(c * c), f"[{c}x{c}]"
  if name in ("lifted_structure", "nca", "npair"):
    return float(b * b), f"[{b}x{b}]"
  if name in ("proxy_nca", "softmax", "normalized_softmax", "magnet"):
    return float(b * c), f"[{b}x{c}]"
  if name == "nngk[bank]":
    return 2.0 * b * _NNGK_NEIGHBOURS, f"2 x [{b}x{_NNGK_NEIGHBOURS}]"
  return 0.0, ""


def _floor(cost, rates, transcendentals=(0.0, "")) -> dict:
  """The row's floor, ``max(FLOPs / FLOP/s, bytes / bytes/s)``, and its
  ``full`` floor with the transcendentals' time added to the FLOPs'
  (both are arithmetic on the same vector units)."""
  flops, nbytes, model = cost
  flop_s = flops / rates["matmul_flops_per_s"]
  byte_s = nbytes / rates["bytes_per_s"]
  count, which = transcendentals
  full_s = max(flop_s + count / rates["transcendentals_per_s"], byte_s)
  return {"floor_ms": max(flop_s, byte_s) * 1e3,
          "floor_bound": "flops" if flop_s >= byte_s else "bytes",
          "model_flops": flops, "model_bytes": nbytes, "floor_model": model,
          "model_transcendentals": count, "transcendentals": which,
          "floor_full_ms": full_s * 1e3}


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


def _seed_runner(name, x, labels):
  """(run, value) of a seed method's loss, called as its method calls it,
  jitted ``value_and_grad`` w.r.t. the embeddings and the loss's parameters.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from dmlx import losses

  b, d = x.shape
  num_classes = b // _K
  rng = np.random.default_rng(1)
  if name == "nngk[bank]":
    # A bank of N = 10 B centres, class of centre i = i // K; batch example b
    # is training row b (so the batch is P x K). Each row's k stored
    # neighbours: its K - 1 classmates first, then random rows (never itself).
    n, k = _NNGK_BANK_FACTOR * b, _NNGK_NEIGHBOURS
    centres = rng.normal(size=(n, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = np.arange(n)
    mates = (rows[:, None] // _K) * _K + (
        (rows[:, None] % _K + np.arange(1, _K)[None, :]) % _K)
    others = (rows[:, None] + rng.integers(1, n, size=(n, k - _K + 1))) % n
    bank = losses.CentreBank(
        centres=jnp.asarray(centres),
        labels=jnp.asarray((rows // _K).astype(np.int32)),
        neighbours=jnp.asarray(np.concatenate([mates, others], 1)
                               .astype(np.int32)),
        mask=jnp.ones((n, k), bool))
    params = jnp.asarray(rng.uniform(0.5, 1.5, size=n).astype(np.float32))
    index = jnp.arange(b, dtype=jnp.int32)
    fn = lambda x, w, bank, index: losses.nngk(
        x, jnp.asarray(labels), index, bank, w, sigma=0.5,
        reduction="sum")[0]
    extra = (bank, index)
  elif name == "magnet":
    params = jnp.zeros(())  # parameter-free: a dummy to keep one signature
    cluster_ids = jnp.asarray(labels)  # the sampler's D = 4 per cluster
    fn = lambda x, p, labels, cluster_ids: losses.magnet_loss(
        x, labels, cluster_ids, alpha=1.0)[0] + 0.0 * p
    extra = (jnp.asarray(labels), cluster_ids)
  elif name == "mic_mi":
    params = losses.init_projection(jax.random.PRNGKey(0), d, d, _MIC_HIDDEN)
    aux = rng.normal(size=(b, d)).astype(np.float32)
    fn = lambda xs, p: losses.mutual_information_loss(
        xs[0], xs[1], p, grl_lambda=1.0)
    x = (x, aux)
    extra = ()
  elif name == "dmlda_density":
    params = jnp.full((num_classes,), 0.5, jnp.float32)
    d0 = jnp.asarray(rng.uniform(0.2, 0.8, num_classes).astype(np.float32))
    fn = lambda x, alpha, labels, d0: losses.density_regularizer(
        x, labels, alpha, d0, eta=0.5, correlation=True,
        min_class_size=2)[0]
    extra = (jnp.asarray(labels), d0)
  else:
    raise ValueError(name)
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
  args = (jax.tree.map(jax.device_put, x), params) + extra
  return ((lambda: jax.block_until_ready(step(*args))),
          (lambda: float(step(*args)[0])))


# ------------------------------------------------------------------ PML side

# Losses with a max_positives speed knob (default 7): also timed at K - 1
# (the P x K table) and None (sorted / B - 1 fallback).
_VARIANTS = ("triplet_all", "triplet_semihard", "margin")


def _label(name, hyper):
  return name + "".join(f"[{k}={v}]" for k, v in hyper.items())


# row label -> (same_form, note)
_PML_NOTES = {
    "triplet_all": (True, "TripletMarginLoss, all triplets, AvgNonZero"),
    "triplet_semihard": (False, "TripletMarginMiner('semihard') keeps every "
                         "semi-hard triplet, not one per (a, p)"),
    "triplet_batch_hard": (True, "BatchHardMiner + TripletMarginLoss(Mean)"),
    "contrastive": (False, "PML: unsquared hinges, AvgNonZero"),
    "npair": (False, "PML: one (anchor, positive) pair per class; dmlx: all "
              "pairs (see the pairs=one_per_class row)"),
    _label("npair", _NPAIR_PML): (True, "NPairsLoss: one (anchor, positive) "
                                  "pair per class, like for like"),
    "margin": (False, "DistanceWeightedMiner + MarginLoss; different draws"),
    "proxy_nca": (True, "ProxyNCALoss(softmax_scale=3), same proxies"),
    "lifted_structure": (True, "LiftedStructureLoss; builds a |P| x |N| "
                         "matrix"),
    "nca": (True, "NCALoss, unnormalised squared L2"),
    "softmax": (True, "torch Linear + cross_entropy (not PML)"),
    "normalized_softmax": (True, "NormalizedSoftmaxLoss, same weights"),
}
_NO_PML = (False, "no pytorch-metric-learning counterpart")


def _pml_runner(label, x, labels, num_classes, params, lifted_max_batch):
  """Returns (run, value) closures for the PML counterpart, or None."""
  import numpy as np
  import torch
  from pytorch_metric_learning import distances, losses, miners, reducers

  if label not in _PML_NOTES:
    return None  # dmlda_contrastive, smooth_triplet: dmlx's own forms.
  if label == "lifted_structure" and len(labels) > lifted_max_batch:
    return None  # |P| x |N| float matrices: seconds to minutes a call.
  lp = distances.LpDistance(normalize_embeddings=False)
  miner = None
  weights = []
  if label == "triplet_all":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp)
  elif label == "triplet_semihard":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp)
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard",
                                      distance=lp)
  elif label == "triplet_batch_hard":
    fn = losses.TripletMarginLoss(margin=0.2, distance=lp,
                                  reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=lp)
  elif label == "contrastive":
    fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=lp)
  elif label in ("npair", _label("npair", _NPAIR_PML)):
    fn = losses.NPairsLoss()
  elif label == "margin":
    fn = losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2, learn_beta=True)
    miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
    weights = [fn.beta]
  elif label == "proxy_nca":
    fn = losses.ProxyNCALoss(num_classes, x.shape[1], softmax_scale=3.0)
    fn.proxies.data = torch.from_numpy(np.asarray(params["proxies"]).copy())
    weights = [fn.proxies]
  elif label == "lifted_structure":
    fn = losses.LiftedStructureLoss(neg_margin=1.0, pos_margin=0.0,
                                    distance=lp)
  elif label == "nca":
    fn = losses.NCALoss(softmax_scale=1.0, distance=distances.LpDistance(
        normalize_embeddings=False, power=2))
  elif label == "softmax":
    kernel = torch.from_numpy(np.asarray(params["kernel"]).copy())
    bias = torch.from_numpy(np.asarray(params["bias"]).copy())
    kernel.requires_grad_(True)
    bias.requires_grad_(True)
    weights = [kernel, bias]
    fn = lambda e, y: torch.nn.functional.cross_entropy(e @ kernel + bias, y)
  elif label == "normalized_softmax":
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
  from dmlx import host_memory
  host_memory_mode = host_memory.configure(args.host_memory)  # before jax runs
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
  names = ([n for n in args.losses.split(",") if n]
           or list(losses.REGISTRY) + list(_SEED_ROWS))
  for n in names:
    if n not in _SEED_ROWS:
      losses.get(n)  # ValueError on a bad name
  shapes = [(int(b), int(d)) for b in args.batch_sizes.split(",")
            for d in args.dims.split(",")]

  rates = _machine_rates()
  print(f"roofline: matmul {rates['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({rates['matmul_probe']}), memory "
        f"{rates['bytes_per_s'] / 1e9:.2f} GB/s ({rates['bandwidth_probe']}), "
        f"exp/log {rates['transcendentals_per_s'] / 1e9:.2f} G/s, "
        f"empty jitted call {rates['call_overhead_ms'] * 1e3:.0f} us; "
        f"host memory: {host_memory_mode}")
  rows = []
  header = (f"{'loss':42s} {'B':>5s} {'D':>4s} {'dmlx ms':>9s} "
            f"{'PML ms':>9s} {'ratio':>6s} {'cpu ratio':>9s} "
            f"{'floor ms':>8s} {'x floor':>7s} {'x full':>6s} {'same':>4s} "
            f"{'|diff|':>8s}"
            "  note")
  print(header)
  print("-" * len(header))
  for b, d in shapes:
    x, labels = _inputs(b, d)
    num_classes = b // _K
    jobs = []
    for name in names:
      jobs.append((name, {}))
      if args.no_variants:
        continue
      if name in _VARIANTS:
        jobs += [(name, {"max_positives": _K - 1}),
                 (name, {"max_positives": None})]
      if name == "npair":
        jobs.append((name, dict(_NPAIR_PML)))
    for name, hyper in jobs:
      label = _label(name, hyper)
      if name in _SEED_ROWS:
        run, value = _seed_runner(name, x, labels)
        params = None
      else:
        run, value, params = _jax_runner(name, x, labels, num_classes, hyper)
      compile_s, jax_s, jax_cpu = _time(run, args.repeats, args.budget_s,
                                        args.min_time_s)
      row = {"loss": label, "hyper": hyper, "batch_size": b, "dim": d,
             "k": _K, "dmlx_ms": jax_s * 1e3, "dmlx_cpu_ms": jax_cpu * 1e3,
             "dmlx_first_call_s": compile_s, "dmlx_loss": value()}
      row.update(_floor(_cost(name, hyper, b, d), rates,
                        _transcendentals(name, hyper, b)))
      row["x_floor"] = row["dmlx_ms"] / row["floor_ms"]
      row["x_floor_full"] = row["dmlx_ms"] / row["floor_full_ms"]
      if pml is not None and (not hyper or label in _PML_NOTES):
        same, note = _PML_NOTES.get(label, _NO_PML)
        runner = (None if name in _SEED_ROWS else
                  _pml_runner(label, x, labels, num_classes, params,
                              args.pml_lifted_max_batch))
        row.update(same_form=same, note=note)
        if runner is None:
          row["note"] = "PML skipped: " + note
        else:
          pml_run, pml_value = runner
          _, pml_s, pml_cpu = _time(pml_run, args.repeats, args.budget_s,
                                    args.min_time_s)
          row.update(pml_ms=pml_s * 1e3, pml_cpu_ms=pml_cpu * 1e3,
                     pml_loss=pml_value(), ratio=pml_s / jax_s,
                     cpu_ratio=pml_cpu / max(jax_cpu, 1e-9))
      rows.append(row)
      _print_row(row)
      if name == "triplet_all" and not hyper and b <= args.cube_max_batch:
        cube_run, cube_value = _jax_cube_runner(x, labels)
        _, cube_s, cube_cpu = _time(cube_run, args.repeats, args.budget_s)
        cube = {"loss": "triplet_all[naive cube]", "batch_size": b, "dim": d,
                "k": _K, "dmlx_ms": cube_s * 1e3,
                "dmlx_cpu_ms": cube_cpu * 1e3, "dmlx_loss": cube_value(),
                "note": f"[B,B,B] JAX reference; the default form is "
                        f"{cube_s / jax_s:.1f}x faster"}
        cube.update(_floor(_cost(cube["loss"], {}, b, d), rates))
        cube["x_floor"] = cube["dmlx_ms"] / cube["floor_ms"]
        cube["x_floor_full"] = cube["dmlx_ms"] / cube["floor_full_ms"]
        rows.append(cube)
        _print_row(cube)

  from benchmarks import _common as _bench_common
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {"jax": jax.__version__, "backend": jax.default_backend(),
          "threads": args.threads, "xla_flags": os.environ.get("XLA_FLAGS"),
          "host_memory": host_memory_mode,
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
          "repeats": args.repeats, "budget_s": args.budget_s,
          "quick": args.quick, "pml": pml, "roofline": rates,
          "cpu_count": os.cpu_count(), "machine": platform.machine(),
          "cpu": _bench_common.cpu(),
          "affinity": sorted(os.sched_getaffinity(0)),
          "load_average": os.getloadavg(),
          "inputs": "L2-normalised N(0, I) embeddings, P x K=4 labels",
          "seed_rows": {
              "nngk[bank]": f"losses.nngk, bank of {_NNGK_BANK_FACTOR} B "
                            f"centres, k={_NNGK_NEIGHBOURS}, sigma=0.5, "
                            "reduction='sum'; grad w.r.t. x and the weights",
              "magnet": "losses.magnet_loss, cluster id = class (K=4 per "
                        "cluster), alpha=1",
              "mic_mi": f"losses.mutual_information_loss, E_beta of dim D, "
                        f"R hidden {_MIC_HIDDEN}, grl_lambda=1; grad w.r.t. "
                        "both embeddings and R",
              "dmlda_density": "losses.density_regularizer with D0, eta=0.5, "
                               "C = B/K classes; grad w.r.t. x and alpha"}}
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
  print(f"{row['loss']:42s} {row['batch_size']:5d} {row['dim']:4d} "
        f"{row['dmlx_ms']:9.2f} {pml_ms} {ratio} {cpu_ratio} "
        f"{row['floor_ms']:8.2f} {row['x_floor']:7.1f} "
        f"{row['x_floor_full']:6.1f} {same:>4s} {diff}  "
        f"{row.get('note', '')}", flush=True)


if __name__ == "__main__":
  main()
