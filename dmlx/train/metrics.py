"""The step loop's metrics: kept on the device between declared steps.

:class:`Meter` collects each step's device scalars without reading them; at a
declared step :meth:`Meter.flush` copies them to the host in one explicit
transfer, stops the run on the first non-finite step (naming the step, the
loss terms and the last good checkpoint), writes the interval's means to the
logs and moves the progress bar. The bar is drawn only when stderr is a
terminal; in a file or a pipe the log lines are the progress.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any

import jax
import numpy as np


class Meter:
  """Device metrics of the steps since the last flush (see the module
  docstring). ``run`` provides ``config``, ``writer``, ``checkpointer``,
  ``method``, ``steps_per_epoch`` and ``total_steps``."""

  def __init__(self, run: Any, start: int):
    self.run = run
    self.pending: list[tuple[int, Any]] = []
    self.epoch_losses: list[float] = []
    self.epoch_t0 = time.time()
    self.epoch_steps = 0
    self.last_saved = run.checkpointer.latest_step()
    self.progress = None
    cfg = run.config.train
    if cfg.progress and jax.process_index() == 0 and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.progress = tqdm(total=run.total_steps, initial=start, leave=False,
                           dynamic_ncols=True, desc="train")
    self._next_step = start

  def add(self, metrics: Any) -> None:
    """Keeps one step's device metrics (no transfer)."""
    self._next_step += 1
    self.pending.append((self._next_step, metrics))

  def saved(self, step: int) -> None:
    self.last_saved = step

  def flush(self, step: int, *, epoch_end: bool = False) -> None:
    """Reads the pending metrics (one explicit copy), raises
    ``FloatingPointError`` on the first non-finite one, logs their means."""
    if not self.pending:
      return
    steps = [s for s, _ in self.pending]
    values = jax.device_get([m for _, m in self.pending])
    self.pending = []
    for s, m in zip(steps, values):
      if not m.get("finite", 1.0) or not math.isfinite(float(m["loss"])):
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(m.items())
                          if k != "finite")
        where = (f"step {self.last_saved} in {self.run.checkpointer.directory}"
                 if self.last_saved is not None else
                 f"none yet (checkpoints go to {self.run.checkpointer.directory})")
        raise FloatingPointError(
            f"Loss is {float(m['loss'])} at step {s} (epoch "
            f"{(s - 1) // self.run.steps_per_epoch}, method "
            f"{self.run.method.name}); loss terms: {terms}. The last good "
            f"checkpoint is {where}. Lower optim.lr or check the loss "
            "hyper-parameters.")
    keys = [k for k in values[-1] if k != "finite"]
    means = {k: float(np.mean([float(m[k]) for m in values])) for k in keys}
    self.run.writer.write(step, means, "train/")
    self.epoch_losses.extend(float(m["loss"]) for m in values)
    self.epoch_steps += len(values)
    if self.progress is not None:
      self.progress.update(len(values))
      self.progress.set_postfix(loss=f"{means['loss']:.4f}")
    if epoch_end:
      seconds = max(time.time() - self.epoch_t0, 1e-9)
      self.run.log(f"epoch {step // self.run.steps_per_epoch}: mean loss "
                   f"{np.mean(self.epoch_losses):.4f}, "
                   f"{self.epoch_steps / seconds:.2f} steps/s")
      self.epoch_losses, self.epoch_steps = [], 0
      self.epoch_t0 = time.time()

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()
