"""Atomic, resumable checkpoints of the whole TrainState with orbax.

orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-write leaves the previous checkpoint intact. The
state holds weights, optimiser state, RNG, the method state (centre bank,
cluster index, surrogate labels, densities) and the step — from which the
sampler position follows — so a resumed run continues exactly.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` for one work directory."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` as checkpoint ``step`` (waits until it is on disk)."""
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self.manager.wait_until_finished()

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores the latest (or ``step``) checkpoint into ``template``'s
    structure, shapes and shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()


class WorkdirError(OSError):
  """A work directory that cannot hold the run (named in the message)."""


def check_writable(workdir: str) -> None:
  """Creates ``workdir`` and writes a probe file into it, so a path that is
  not a directory, a read-only file system or a missing permission fail
  before any data is loaded or anything is compiled.

  Raises:
    WorkdirError: naming the directory and the system's reason.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".dmlx_write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(e.errno or errno.EIO,
                       f"The work directory {workdir!r} is not writable "
                       f"({e.strerror or e}); pass --workdir=<a writable folder>.") from e


def check_space(workdir: str, state: Any, max_to_keep: int,
                margin_bytes: int = 64 << 20) -> int:
  """Fails when the file system of ``workdir`` has less free space than
  ``max_to_keep + 1`` checkpoints of ``state`` (orbax writes the new one
  before deleting the oldest) plus ``margin_bytes`` for logs. Returns the
  bytes needed.

  Raises:
    WorkdirError: naming the space needed and the space free.
  """
  leaves = jax.tree_util.tree_leaves(state)
  size = sum(int(getattr(x, "nbytes", 0) or 0) for x in leaves)
  need = size * (max_to_keep + 1) + margin_bytes
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise WorkdirError(errno.ENOSPC,
                       f"The work directory {workdir!r} has {free / 2**20:.1f} MiB "
                       f"free; {max_to_keep + 1} checkpoints of {size / 2**20:.1f} MiB "
                       f"and the logs need {need / 2**20:.1f} MiB. Free space, "
                       "lower train.max_checkpoints or choose another --workdir.")
  return need
