"""Metric logging to stdout, a JSON-lines file and TensorBoard (if available)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping


class MetricWriter:
  """Writes ``{name: value}`` at a step to every sink; only process 0 writes."""

  def __init__(self, workdir: str, tensorboard: bool = True, quiet: bool = False):
    import jax  # pylint: disable=g-import-not-at-top
    self.active = jax.process_index() == 0
    self.quiet = quiet
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._log = open(os.path.join(workdir, "train.log"), "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        self.log("tensorboardX not installed: TensorBoard logging off "
                 "(pip install tensorboardX).")

  def log(self, message: str) -> None:
    """A line of text to stderr and train.log."""
    if not self.active:
      return
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    if not self.quiet:
      print(line, file=sys.stderr, flush=True)
    self._log.write(line + "\n")
    self._log.flush()

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    if not self.active:
      return
    record = {"step": int(step), **{prefix + k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step":
          self._tb.add_scalar(k.replace("@", "_at_"), v, int(step))

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._log.close()
      if self._tb is not None:
        self._tb.close()
