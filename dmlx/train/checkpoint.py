"""Atomic, resumable checkpoints of the whole TrainState with orbax.

orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-write leaves the previous checkpoint intact. The
state holds weights, optimiser state, RNG, the method state (centre bank,
cluster index, surrogate labels, densities) and the step — from which the
sampler position follows — so a resumed run continues exactly.
"""
from __future__ import annotations

import os
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
