"""Preemption: SIGTERM (what SLURM and preemptible TPU / GPU VMs send before
they kill a job) makes a run checkpoint the step it is at and exit with
:data:`EXIT_PREEMPTED`; the same command then resumes from that checkpoint.

A single process sets a flag in its SIGTERM handler and the loop checks it
between steps (a step in flight finishes first; a checkpoint being written
is completed). Several processes (``jax.distributed``) must stop at the same
step, so there JAX's own preemption notice is used:
``multihost_utils.reached_preemption_sync_point(step)`` is true on every
process at one agreed step (``jax.distributed.initialize`` installs the
SIGTERM handler of its coordination service; dmlx installs none).
"""
from __future__ import annotations

import signal
import threading
from typing import Any

import jax

# EX_TEMPFAIL (sysexits.h): "try again later" -- a job script or a SLURM
# requeue hook tells a preempted run from a failed one by it.
EXIT_PREEMPTED = 75


class Preemption:
  """``with Preemption() as preempted: ... if preempted(step): ...``."""

  def __init__(self):
    self.signal: int | None = None
    self._previous: Any = None
    self._multi = jax.process_count() > 1
    self._installed = False

  def _handler(self, signum, frame) -> None:
    del frame
    self.signal = signum

  def __enter__(self) -> "Preemption":
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def __call__(self, step: int) -> bool:
    """Whether the run should checkpoint ``step`` and stop now."""
    if self._multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:   # no preemption service (jax.distributed not set up with it)
        return False
    return self.signal is not None
