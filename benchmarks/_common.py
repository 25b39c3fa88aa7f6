"""What the benchmark scripts share: the host-memory option, the CPU's
description and the JSON writer."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any


def add_host_memory_argument(parser: argparse.ArgumentParser,
                             several: bool = False) -> None:
  """``--host-memory``: :mod:`dmlx.host_memory`'s mode, as the launchers'
  ``--host_memory`` (default ``auto``: freed memory kept on CPU). With
  ``several``, a comma-separated list (each mode in its own process, checked
  by the caller); otherwise one of the modes, checked by argparse."""
  from dmlx import host_memory  # pylint: disable=g-import-not-at-top
  if several:
    parser.add_argument("--host-memory", default="auto",
                        help="dmlx.host_memory mode of the child processes, "
                        "as the launchers' --host_memory (auto: keep on CPU); "
                        "several comma-separated, each in its own process")
  else:
    parser.add_argument("--host-memory", default="auto",
                        choices=host_memory.MODES,
                        help="dmlx.host_memory mode, as the launchers' "
                        "--host_memory (auto: keep on CPU)")


def cpu() -> dict[str, Any]:
  """The CPU's model name and its vector ISAs of note (Linux's
  ``/proc/cpuinfo``; empty elsewhere). The shared machines here change kind
  between sessions (AVX2 EPYC, AVX-512 / AMX Xeon), and the ratios move with
  it, so every result file says which it ran on."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return {}
  model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("model name")), None)
  flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                if line.startswith("flags")), [])
  return {"model": model,
          "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile")
                  if f in flags]}


def write_results(path: str, payload: Any, indent: int = 1) -> None:
  """Writes a benchmark's JSON to ``path`` (parent folders made) and says so."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=indent)
  print(f"wrote {path}")
