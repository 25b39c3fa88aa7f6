"""Starts one dmlx command as N processes of one jax.distributed job on this
machine: a laptop's or a test's stand-in for a cluster.

  python launch/cluster/local.py --num_processes=2 -- \\
      python launch/train.py --config=configs/default.py --workdir=/tmp/dmlx_mp

Each process gets ``DMLX_COORDINATOR_ADDRESS`` (a free localhost port),
``DMLX_NUM_PROCESSES`` and ``DMLX_PROCESS_ID``, which ``launch/train.py`` and
``launch/evaluate.py`` read (``--distributed=auto``). On CPU
``--devices_per_process`` simulates that many devices in each process; with
``--gpus_per_process`` process i sees GPUs ``[i*g, (i+1)*g)``. Output lines are
prefixed with the process id. If one process fails the others are stopped; a
SIGTERM or SIGINT sent to the launcher is passed to every process (each then
checkpoints and exits with 75, which the launcher returns).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(i: int, n: int, port: int, devices: int, gpus: int,
                base: dict | None = None) -> dict:
  """The environment of process ``i`` of ``n``."""
  env = dict(os.environ if base is None else base)
  env.update({"DMLX_COORDINATOR_ADDRESS": f"localhost:{port}",
              "DMLX_NUM_PROCESSES": str(n), "DMLX_PROCESS_ID": str(i)})
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={devices}"])
  if gpus:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(i * gpus, (i + 1) * gpus))
  return env


def _pump(i: int, stream, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(f"[{i}] {line}")
    out.flush()


def run(command: list[str], num_processes: int, devices: int = 0, gpus: int = 0,
        port: int | None = None) -> int:
  """Runs ``command`` as ``num_processes`` processes; returns the exit code:
  0 if all succeed, else the first failure's (75 when they were preempted)."""
  if num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}.")
  if not command:
    raise ValueError("No command: pass it after '--'.")
  port = port or free_port()
  procs = [subprocess.Popen(command, env=process_env(i, num_processes, port, devices, gpus),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  pumps = [threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
           for i, p in enumerate(procs)]
  for t in pumps:
    t.start()

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  code = 0
  try:
    while [p.poll() for p in procs].count(None):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed and not code:
        code = failed[0]
        if code != 75:      # a failure: the others would wait for it forever
          for p in procs:
            if p.poll() is None:
              p.terminate()
      time.sleep(0.2)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  for t in pumps:
    t.join(timeout=5)
  codes = [p.returncode for p in procs]
  return code or next((c for c in codes if c), 0)


def main(argv: list[str]) -> int:
  if "--" in argv:
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
  else:
    own, command = argv, []
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="simulated CPU devices per process (0: as the platform has)")
  parser.add_argument("--gpus_per_process", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args(own)
  return run(command, args.num_processes, args.devices_per_process,
             args.gpus_per_process, args.port or None)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
