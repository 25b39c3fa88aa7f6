"""A run's work directory read without its training data: the config it
wrote (``config.json``) and the network's variables from its latest (or a
given) orbax checkpoint, restored without templates."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np


@dataclasses.dataclass(frozen=True)
class WorkdirState:
  """``config`` (a ConfigDict), ``variables`` (``{'params', 'batch_stats'}``
  of the network, host arrays) and the checkpoint ``step``."""
  config: ml_collections.ConfigDict
  variables: dict[str, Any]
  step: int
  workdir: str


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote to ``<workdir>/config.json``.

  Raises:
    FileNotFoundError: ``workdir`` has no ``config.json`` (not a dmlx run,
      or one that has not started).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no config.json: not a dmlx run "
                            "directory (train with launch/train.py --workdir=...).")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_checkpoint(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """``(state, step)``: the raw checkpointed pytree (``{'train': ...,
  'host': ...}``) of the latest checkpoint, or ``step``.

  Raises:
    FileNotFoundError: no checkpoint (or not ``step``) in ``workdir``.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoint in {directory}; train first with "
                            "launch/train.py and the same --workdir.")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers=ocp.StandardCheckpointHandler())
  try:
    steps = manager.all_steps()
    chosen = manager.latest_step() if step is None else int(step)
    if chosen is None or chosen not in steps:
      raise FileNotFoundError(f"No checkpoint {'' if step is None else step} in "
                              f"{directory} (steps there: {sorted(steps)}).")
    # Onto this process's first device, whatever devices wrote it (a
    # checkpoint of an 8-GPU run opens on a laptop).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
        if hasattr(m, "shape") and hasattr(m, "dtype") else m,
        manager.item_metadata(chosen))
    state = manager.restore(chosen, args=ocp.args.StandardRestore(target))
  finally:
    manager.close()
  return state, int(chosen)


def read_workdir(workdir: str, step: int | None = None,
                 config: ml_collections.ConfigDict | None = None) -> WorkdirState:
  """The network of a finished or running work directory: its config
  (``config`` if given, else ``config.json``) and the variables of its latest
  checkpoint (or ``step``). No dataset is loaded."""
  config = read_config(workdir) if config is None else config
  state, chosen = read_checkpoint(workdir, step)
  train = state.get("train", state)
  variables = {"params": _numpy(train["params"]["model"]),
               "batch_stats": _numpy(train.get("batch_stats") or {})}
  return WorkdirState(config=config, variables=variables, step=chosen,
                      workdir=os.path.abspath(workdir))


def _numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
