"""Train-step throughput: dmlx's jitted step against PyTorch + PML.

The same network, input size, batch and loss on both sides, in one process
per thread setting:

* **dmlx**: the step ``launch/train.py`` runs (``dmlx.train.step``, jitted
  with the loop's donation): augmentation (random crop + flip, normalisation),
  backbone, 128-d embedding head with L2 normalisation, the semi-hard triplet
  loss (margin 0.2) and Adam, on a P x K batch drawn by the run's own sampler
  from a procedural dataset. ``--conv`` picks how its convolutions are
  computed (:mod:`dmlx.models.layers`).
* **PyTorch**: the reference modules of :mod:`dmlx.models.torch_reference`
  (torchvision's layouts; NCHW, PyTorch's default) with the same head, flip +
  normalisation, PML's ``TripletMarginLoss`` over the semi-hard triplets of
  ``TripletMarginMiner`` and ``torch.optim.Adam``.

Reported per network: images/s (median of ``--steps`` timed steps after two
warm-up steps), the first call's compile time, the step's FLOPs (XLA's cost
analysis of dmlx's compiled step: forward, backward and update; on a mesh of
several devices, e.g. ``--xla-flags=--xla_force_host_platform_device_count=2``,
one device's share times their number), the achieved
GFLOP/s of each side at those FLOPs, and its fraction of this process's
measured matmul peak (a 2048² float32 ``jnp.dot``, same thread setting).
``roofline img/s`` is the peak divided by the FLOPs per image.

Threads: each setting runs in its own process pinned to that many cores
(``taskset``); 1 thread is XLA without its Eigen thread pool
(``--xla_cpu_multi_thread_eigen=false``) and ``torch.set_num_threads(1)``.

  python benchmarks/train_step.py                         # every net, 1 and 2 threads
  python benchmarks/train_step.py --nets=resnet18 --threads=1 --steps=5
  python benchmarks/train_step.py --quick                 # small CNN + ResNet-18
  python benchmarks/train_step.py --host-memory=keep,system   # both malloc modes

On a GPU (``--platform=gpu``, the device machine when one is lent) both
sides run there in one process: by default at 224 px, batch 128, with
bfloat16 computation (dmlx: ``config.model.dtype='bfloat16'``; PyTorch:
``torch.autocast`` in bfloat16, channels-last), and the row adds the
model-FLOPs utilisation ``mfu``: achieved FLOP/s over the chip's dense bf16
datasheet rate (:data:`DATASHEET_BF16`), beside the fraction of a measured
8192² bf16 matmul. ``--dtype``, ``--image-size`` and ``--batch`` override
either platform's defaults.

  python benchmarks/train_step.py --platform=gpu --nets=resnet50,bn_inception

``--host-memory`` is :mod:`dmlx.host_memory`'s mode in the child (default
``auto``, as ``launch/train.py``: freed memory kept in the process on CPU).
It is process-wide, so the PyTorch side runs under the same mode.

Writes ``benchmarks/results/train_step.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import _common  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (image size, batch, dmlx backbone kwargs); the settings.
NETS = {
    "small_cnn": (32, 64, {"width": 32, "num_blocks": 3}),
    "resnet18": (64, 64, {}),
    "resnet50": (128, 32, {}),
    "bn_inception": (128, 32, {}),
}
EMBEDDING_DIM = 128
MARGIN = 0.2
# --platform=gpu defaults: the papers' input size, a GPU-sized batch, bf16.
GPU_SETTINGS = {"image_size": 224, "batch": 128, "dtype": "bfloat16"}
# Dense bf16 FLOP/s by device kind (vendor datasheets, SXM parts): MFU's
# denominator.
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--nets", default=",".join(NETS))
  p.add_argument("--platform", default="cpu", choices=("cpu", "gpu"))
  p.add_argument("--dtype", default="",
                 help="computation dtype, float32 | bfloat16 (default: "
                 "float32 on cpu, bfloat16 on gpu)")
  p.add_argument("--image-size", type=int, default=0,
                 help="input size (default: each net's on cpu, 224 on gpu)")
  p.add_argument("--batch", type=int, default=0,
                 help="batch size (default: each net's on cpu, 128 on gpu)")
  p.add_argument("--threads", default="1,2")
  p.add_argument("--steps", type=int, default=5, help="timed steps per side")
  p.add_argument("--conv", default="default",
                 help="dmlx convolution path: 'default' (the library's "
                 "default), 'xla' (lax.conv everywhere, 1x1 included) or 'im2col' "
                 "(im2col + matmul everywhere); several comma-separated")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--quick", action="store_true",
                 help="small CNN and ResNet-18, 1 thread, 3 steps")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS")
  _common.add_host_memory_argument(p, several=True)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "train_step.json"))
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    args.nets, args.threads, args.steps = "small_cnn,resnet18", "1", 3
  if args.dtype not in ("", "float32", "bfloat16"):
    raise ValueError(f"--dtype: {args.dtype!r} is not float32 or bfloat16")
  gpu = args.platform == "gpu"
  args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
  if gpu:
    args.image_size = args.image_size or GPU_SETTINGS["image_size"]
    args.batch = args.batch or GPU_SETTINGS["batch"]
  if args.batch and args.batch % 4:
    raise ValueError(f"--batch: {args.batch} is not a multiple of 4 (P x 4)")
  return args


def shape(net: str, args) -> tuple[int, int]:
  """(image size, batch) of ``net`` under ``args``' overrides."""
  return net_shape(net, args.image_size, args.batch)


def net_shape(net: str, size: int = 0, batch: int = 0) -> tuple[int, int]:
  """(image size, batch) of ``net``: ``size`` / ``batch``, or its own where
  0."""
  default_size, default_batch, _ = NETS[net]
  return size or default_size, batch or default_batch


def _median_time(fn, steps: int) -> float:
  """Median seconds of ``steps`` calls of ``fn`` after two warm-up calls
  (``fn`` blocks until its device work is done)."""
  fn()
  fn()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


# ------------------------------------------------------------------ dmlx side


def _conv_setting(conv: str) -> dict:
  from dmlx.models import layers  # pylint: disable=g-import-not-at-top
  if conv == "default":
    return {}
  if conv == "xla":
    return {"im2col_max_size": 0}
  if conv == "im2col":
    return {"im2col_max_size": 10**6}
  if conv.startswith("im2col<="):
    return {"im2col_max_size": int(conv.split("<=")[1])}
  raise ValueError(f"--conv must be default, xla, im2col or im2col<=N, got "
                   f"{conv!r} (library default: im2col for outputs <= "
                   f"{layers.DEFAULT_IM2COL_MAX_SIZE})")


def build_step(net: str, conv: str, workdir: str, *, size: int = 0,
               batch: int = 0, dtype: str = "float32"):
  """dmlx's train step of ``net`` as ``launch/train.py`` builds it: returns
  ``(run, state, batches, step)``, ``step`` the jitted, uncompiled step and
  ``batches`` one epoch's first batches from the run's own sampler.
  ``size`` / ``batch`` (0: the net's) and ``dtype`` override the input size,
  batch and ``config.model.dtype``."""
  import configs  # pylint: disable=g-import-not-at-top
  from dmlx.train import loop, run as run_lib  # pylint: disable=g-import-not-at-top

  kwargs = NETS[net][2]
  size, batch = net_shape(net, size, batch)
  config = configs.load("baselines.py:loss=triplet_semihard")
  config.model.backbone = net
  config.model.backbone_kwargs = {**kwargs, **_conv_setting(conv)}
  config.model.dtype = dtype
  config.model.embedding_dim = EMBEDDING_DIM
  config.loss.kwargs.margin = MARGIN
  config.data.image_size = size + size // 8
  config.data.crop_size = size
  config.data.options.num_classes = 2 * batch // 4
  config.data.options.per_class = 8
  config.sampler.batch_size = batch
  config.sampler.classes_per_batch = batch // 4
  config.train.tensorboard = False
  config.train.progress = False
  run = run_lib.build(config, workdir, quiet=True)
  state, host = run_lib.fresh_state(run)
  samplers = loop._samplers(run, state, host, 0)  # pylint: disable=protected-access
  batches = loop._batches(run, samplers, 0, host)  # pylint: disable=protected-access
  return run, state, batches, run_lib.jit_train_step(run)


def dmlx_step(net: str, conv: str, steps: int, workdir: str, *,
              size: int = 0, batch: int = 0, dtype: str = "float32") -> dict:
  """Times dmlx's train step of ``net``; images/s, compile s, FLOPs."""
  import jax  # pylint: disable=g-import-not-at-top

  run, state, batches, step = build_step(net, conv, workdir, size=size,
                                         batch=batch, dtype=dtype)
  batch = run.config.sampler.batch_size
  t = time.perf_counter()
  compiled = step.lower(state, batches).compile()
  compile_s = time.perf_counter() - t
  flops = _step_flops(run, state, batches)
  holder = [state]

  def one():
    holder[0], metrics = compiled(holder[0], batches)
    jax.block_until_ready(metrics["loss"])

  seconds = _median_time(one, steps)
  return {"img_per_s": batch / seconds, "step_s": seconds,
          "compile_s": compile_s, "devices": int(run.mesh.devices.size),
          "flops": flops,
          "loss": float(jax.device_get(compiled(holder[0], batches)[1]["loss"]))}


def _step_flops(run, state, batches) -> float:
  """The whole step's FLOPs from XLA's cost analysis, compiled with the
  per-tap kernel gradients in one piece: the analysis counts a loop body
  once, so the image-sliced scan the step runs would undercount their FLOPs
  (same products either way). The analysis of a step partitioned over the
  run's mesh counts one device's share, so it is scaled by the mesh size."""
  from dmlx.models import conv_grad  # pylint: disable=g-import-not-at-top
  from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
  saved = conv_grad.TAP_DW_SLICE_POSITIONS
  conv_grad.TAP_DW_SLICE_POSITIONS = 1 << 62
  try:
    cost = run_lib.jit_train_step(run).lower(
        state, batches).compile().cost_analysis()
  finally:
    conv_grad.TAP_DW_SLICE_POSITIONS = saved
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return int(run.mesh.devices.size) * float(cost.get("flops", 0.0))


# ----------------------------------------------------------------- torch side


def torch_step(net: str, steps: int, *, size: int = 0, batch: int = 0,
               dtype: str = "float32", device: str = "cpu") -> dict:
  """Times the PyTorch + PML step of the same network, loss and optimiser;
  on ``device='cuda'`` channels-last, and ``dtype='bfloat16'`` under
  ``torch.autocast`` (the loss in float32, as dmlx's)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_metric_learning import distances, losses, miners  # pylint: disable=g-import-not-at-top
  from dmlx.models import torch_reference  # pylint: disable=g-import-not-at-top

  kwargs = NETS[net][2]
  size, batch = net_shape(net, size, batch)
  n = torch_reference.torch_nets(torch)
  backbone = {
      "small_cnn": lambda: n["SmallCNN"](**kwargs),
      "resnet18": lambda: n["ResNet"](n["Basic"], (2, 2, 2, 2), 64),
      "resnet50": lambda: n["ResNet"](n["Bottleneck"], (3, 4, 6, 3), 64),
      "bn_inception": lambda: n["BNInception"](1.0),
  }[net]()
  with torch.no_grad():
    probe = backbone.eval()(torch.zeros(1, 3, size, size))
  feat_dim = probe.shape[1]
  pool = probe.dim() == 4
  head = torch.nn.Linear(feat_dim, EMBEDDING_DIM)
  memory_format = (torch.channels_last if device == "cuda"
                   else torch.contiguous_format)
  backbone = backbone.to(device, memory_format=memory_format)
  head = head.to(device)
  backbone.train()
  params = list(backbone.parameters()) + list(head.parameters())
  opt = torch.optim.Adam(params, lr=1e-3)
  lp = distances.LpDistance(normalize_embeddings=False)
  loss_fn = losses.TripletMarginLoss(margin=MARGIN, distance=lp)
  miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard",
                                    distance=lp)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.uniform(0, 1, (batch, 3, size, size))
                            .astype(np.float32)).to(
                                device, memory_format=memory_format)
  labels = torch.from_numpy(np.repeat(np.arange(batch // 4), 4)).to(device)
  mean = torch.tensor([0.45] * 3, device=device).view(1, 3, 1, 1)
  std = torch.tensor([0.3] * 3, device=device).view(1, 3, 1, 1)
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=dtype == "bfloat16")
  out = {}

  def one():
    flip = torch.rand(batch, device=device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    x = (x - mean) / std
    with autocast:
      f = backbone(x)
      if pool:
        f = f.mean(dim=(2, 3))
    e = torch.nn.functional.normalize(head(f.float()), dim=1)
    loss = loss_fn(e, labels, miner(e, labels))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    out["loss"] = float(loss.detach())   # waits for the device

  seconds = _median_time(one, steps)
  return {"img_per_s": batch / seconds, "step_s": seconds, "loss": out["loss"]}


def matmul_peak(n: int = 2048, dtype: str = "float32") -> float:
  """FLOP/s of an n² jnp.dot in ``dtype`` in this process (median of 7)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda a: a @ a)
  seconds = _median_time(lambda: jax.block_until_ready(f(a)), 7)
  return 2 * n**3 / seconds


def datasheet_peak() -> tuple[str, float | None]:
  """(device kind, its dense bf16 FLOP/s from :data:`DATASHEET_BF16` or
  None) of JAX's first device."""
  import jax  # pylint: disable=g-import-not-at-top
  kind = jax.devices()[0].device_kind
  rate = next((r for name, r in DATASHEET_BF16.items() if name in kind), None)
  return kind, rate


def child(args) -> None:
  """One thread setting, in this process: every net, both sides."""
  from dmlx import host_memory  # pylint: disable=g-import-not-at-top
  memory = host_memory.configure(args.host_memory)  # before jax or torch runs
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.child)
  gpu = args.platform == "gpu"
  peak = (matmul_peak(8192, args.dtype) if gpu
          else matmul_peak(2048, "float32"))
  # MFU only for bf16 rows: a float32 step has no single datasheet rate
  # (XLA may run its matmuls in TF32).
  kind, datasheet = datasheet_peak() if gpu else ("cpu", None)
  if args.dtype != "bfloat16":
    datasheet = None
  rows = []
  with tempfile.TemporaryDirectory(prefix="dmlx_train_step_") as tmp:
    for net in args.nets.split(","):
      size, batch = shape(net, args)
      setting = {"size": size, "batch": batch, "dtype": args.dtype}
      tr = None if args.no_torch else torch_step(
          net, args.steps, device="cuda" if gpu else "cpu", **setting)
      for conv in args.conv.split(","):
        dm = dmlx_step(net, conv, args.steps,
                       os.path.join(tmp, f"{net}_{conv}"), **setting)
        per_img = dm["flops"] / batch
        row = {"net": net, "image_size": size, "batch": batch, "conv": conv,
               "platform": args.platform, "device_kind": kind,
               "dtype": args.dtype,
               "threads": args.child, "host_memory": memory,
               "matmul_peak_gflops": peak / 1e9,
               "step_gflop": dm["flops"] / 1e9,
               "roofline_img_per_s": peak / per_img if per_img else None,
               "dmlx": {**dm, "gflops": per_img * dm["img_per_s"] / 1e9,
                        "peak_fraction": per_img * dm["img_per_s"] / peak}}
        if datasheet:
          row["datasheet_bf16_tflops"] = datasheet / 1e12
          row["dmlx"]["mfu"] = per_img * dm["img_per_s"] / datasheet
        if tr is not None:
          row["torch"] = {**tr, "gflops": per_img * tr["img_per_s"] / 1e9,
                          "peak_fraction": per_img * tr["img_per_s"] / peak}
          if datasheet:
            row["torch"]["mfu"] = per_img * tr["img_per_s"] / datasheet
          row["dmlx_over_torch"] = dm["img_per_s"] / tr["img_per_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)


def _print(rows) -> None:
  head = (f"{'net':13s} {'px':>4s} {'B':>3s} {'thr':>3s} {'conv':>9s} "
          f"{'memory':>6s} "
          f"{'dmlx img/s':>10s} {'torch img/s':>11s} {'ratio':>6s} "
          f"{'GFLOP/img':>9s} {'dmlx GF/s':>9s} {'torch GF/s':>10s} "
          f"{'peak GF/s':>9s} {'roofline':>8s} {'compile s':>9s} "
          f"{'dtype':>8s} {'MFU':>11s}")
  print(head)
  print("-" * len(head))
  for r in rows:
    tr = r.get("torch", {})
    print(f"{r['net']:13s} {r['image_size']:4d} {r['batch']:3d} "
          f"{r['threads']:3d} {r['conv']:>9s} "
          f"{r.get('host_memory', 'system'):>6s} {r['dmlx']['img_per_s']:10.1f} "
          f"{tr.get('img_per_s', float('nan')):11.1f} "
          f"{r.get('dmlx_over_torch', float('nan')):6.2f} "
          f"{r['step_gflop'] / r['batch']:9.2f} {r['dmlx']['gflops']:9.1f} "
          f"{tr.get('gflops', float('nan')):10.1f} "
          f"{r['matmul_peak_gflops']:9.1f} {r['roofline_img_per_s'] or 0:8.1f} "
          f"{r['dmlx']['compile_s']:9.1f} {r.get('dtype', 'float32'):>8s} "
          f"{_mfu(r)}")


def _mfu(row) -> str:
  """``dmlx / torch`` model-FLOPs utilisation, where a datasheet rate is
  known (GPU rows)."""
  if "mfu" not in row["dmlx"]:
    return f"{'-':>11s}"
  torch_mfu = row.get("torch", {}).get("mfu")
  return (f"{row['dmlx']['mfu']:5.1%}/" +
          (f"{torch_mfu:5.1%}" if torch_mfu is not None else "-"))


def main(argv=None) -> None:
  args = _parse(argv)
  for net in args.nets.split(","):
    if net not in NETS:
      raise ValueError(f"--nets: unknown network {net!r}; known: {sorted(NETS)}")
  for conv in args.conv.split(","):
    _conv_setting(conv)
  if args.child:
    child(args)
    return
  rows = []
  memories = args.host_memory.split(",")
  for memory in memories:
    if memory not in ("auto", "keep", "system"):
      raise ValueError(f"--host-memory: {memory!r} is not auto, keep or system")
  gpu = args.platform == "gpu"
  threads_list = ([os.cpu_count()] if gpu
                  else [int(t) for t in args.threads.split(",")])
  settings = [(t, m) for t in threads_list for m in memories]
  for threads, memory in settings:
    if not 1 <= threads <= os.cpu_count():
      raise ValueError(f"--threads: {threads} is not in 1..{os.cpu_count()}")
    flags = args.xla_flags
    if threads == 1:
      flags = "--xla_cpu_multi_thread_eigen=false " + flags
    env = {**os.environ, "XLA_FLAGS": flags.strip(),
           "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
           "JAX_PLATFORMS": "cuda" if gpu else "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile time is measured
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={threads}",
           f"--nets={args.nets}", f"--steps={args.steps}", f"--conv={args.conv}",
           f"--host-memory={memory}", f"--platform={args.platform}",
           f"--dtype={args.dtype}", f"--image-size={args.image_size}",
           f"--batch={args.batch}"]
    if not gpu:
      cmd = ["taskset", "-c", ",".join(str(c) for c in range(threads))] + cmd
    if args.no_torch:
      cmd.append("--no-torch")
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{threads}-thread run failed:\n{proc.stderr[-4000:]}")
    rows += [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  _print(rows)
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  meta = {"jax": jax.__version__, "torch": torch.__version__,
          "platform": args.platform, "dtype": args.dtype,
          "xla_flags": args.xla_flags, "cpu_count": os.cpu_count(),
          "machine": platform.platform(), "cpu": _common.cpu(),
          "load_average": os.getloadavg(), "steps": args.steps,
          "flops_from": "XLA cost analysis of dmlx's compiled step"}
  _common.write_results(args.out, {"meta": meta, "rows": rows})


if __name__ == "__main__":
  main()
