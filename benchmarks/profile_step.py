"""Where dmlx's train step spends its time on XLA:CPU, HLO op by HLO op.

Builds the step ``benchmarks/train_step.py`` times (same network, input,
batch, loss and optimiser), compiles it with XLA's per-op trace events on
(``--xla_cpu_enable_xprof_traceme``), traces ``--steps`` steps with
``jax.profiler`` and sums each compiled op's time. Each op is named by the
source operation XLA records for it (``op_name``), so the totals group into
forward / backward and by layer, for example ``bwd layer4_1/conv1``. The
trace events cost some time themselves (about 10 % of a ResNet-18 step), so
read the shares, not the absolute figures; ``train_step.py`` times the step
without them.

  taskset -c 1 python benchmarks/profile_step.py --net=resnet18
  taskset -c 0,1 python benchmarks/profile_step.py --net=resnet50 --threads=2

This is how the max pool's gradient (163 -> 52 ms of ResNet-18's stem) and the
im2col product's kernel transposes (129 ms of its step) were found
(``docs/speed.md``). Prints; ``--out`` also writes the op table as JSON.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv=None):
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--net", default="resnet18", choices=sorted(train_step.NETS))
  p.add_argument("--conv", default="default",
                 help="dmlx convolution path, as train_step.py's --conv")
  p.add_argument("--threads", type=int, default=1,
                 help="1: XLA without its Eigen thread pool")
  p.add_argument("--steps", type=int, default=2, help="traced steps")
  p.add_argument("--top", type=int, default=20, help="ops and groups listed")
  p.add_argument("--out", default="", help="also write the op table here")
  return p.parse_args(argv)


def group_of(op_name: str) -> str:
  """``'fwd'`` / ``'bwd'`` and the innermost backbone layer of an op's
  source operation: ``'bwd layer4_1/conv1'``, ``'fwd bn1'``; ops outside
  a named layer are grouped by their last two path parts."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  parts = [p for p in op_name.split("/") if p]
  layer = [p for p in parts if re.match(
      r"^(layer\d+_\d+|inception_\w+|conv\d\w*|bn\d\w*|downsample_\w+|"
      r"block\d+|stem|embedding)$", p)]
  if layer:
    return f"{direction} {'/'.join(layer[-2:])}"
  return f"{direction} {'/'.join(parts[-2:])}"


def op_times(trace_dir: str, steps: int) -> dict[str, float]:
  """Milliseconds per step of each compiled op in a ``jax.profiler`` trace:
  the XLA:CPU executor's events, without the thunk executor's own spans and
  without the ops inside a loop's body, whose time is the loop's."""
  import jax  # pylint: disable=g-import-not-at-top
  (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                      recursive=True)
  data = jax.profiler.ProfileData.from_file(path)
  times: collections.Counter = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python" or "PjRtCpuClient" in line.name:
        continue
      events = sorted((e for e in line.events
                       if not e.name.startswith("ThunkExecutor")),
                      key=lambda e: (e.start_ns, -e.end_ns))
      open_until = -1
      for event in events:
        if event.start_ns < open_until:   # nested in the previous op
          continue
        open_until = event.end_ns
        times[event.name] += event.duration_ns / 1e6 / steps
  return dict(times)


def op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (its shape and opcode, its source ``op_name``)."""
  out = {}
  for m in re.finditer(r"%([\w.\-]+) = (\([^)\n]*\)|\S+) ([\w\-]+)\([^\n]*?"
                       r"metadata=\{op_name=\"([^\"]+)\"", hlo_text):
    shape = m.group(2) if len(m.group(2)) < 60 else m.group(2)[:57] + "..."
    out[m.group(1)] = (f"{shape} {m.group(3)}", m.group(4))
  return out


def main(argv=None) -> None:
  sys.path.insert(0, ROOT)
  args = _parse(argv)
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
  if args.threads == 1:
    flags += " --xla_cpu_multi_thread_eigen=false"
  os.environ["XLA_FLAGS"] = flags.strip()      # before JAX starts
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import _common, train_step  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory(prefix="dmlx_profile_") as tmp:
    _, state, batches, step = train_step.build_step(
        args.net, args.conv, os.path.join(tmp, "run"))
    compiled = step.lower(state, batches).compile()
    names = op_names(compiled.as_text())
    holder = [state]

    def one():
      holder[0], metrics = compiled(holder[0], batches)
      jax.block_until_ready(metrics["loss"])

    one()
    one()
    jax.profiler.start_trace(os.path.join(tmp, "trace"))
    for _ in range(args.steps):
      one()
    jax.profiler.stop_trace()
    times = op_times(os.path.join(tmp, "trace"), args.steps)

  total = sum(times.values())
  groups: collections.Counter = collections.Counter()
  for name, ms in times.items():
    groups[group_of(names.get(name, ("", ""))[1])] += ms
  print(f"{args.net}, {args.threads} thread(s): {total:.1f} ms of ops a step "
        f"(traced; {len(times)} ops)")
  print(f"\n{'ms':>8s} {'share':>6s}  op  [shape opcode]  source")
  for name, ms in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
    shape, source = names.get(name, ("", ""))
    print(f"{ms:8.2f} {ms / total:6.1%}  {name}  [{shape}]  {source[-70:]}")
  print(f"\n{'ms':>8s} {'share':>6s}  group")
  for group, ms in groups.most_common(args.top):
    print(f"{ms:8.2f} {ms / total:6.1%}  {group}")
  if args.out:
    _common.write_results(args.out, {
        "meta": {"net": args.net, "threads": args.threads, "cpu": _common.cpu(),
                 "jax": jax.__version__, "traced_steps": args.steps},
        "ops": {n: {"ms": ms, "hlo": names.get(n, ("", ""))[0],
                    "source": names.get(n, ("", ""))[1]}
                for n, ms in times.items()},
        "groups": dict(groups)})


if __name__ == "__main__":
  main()
