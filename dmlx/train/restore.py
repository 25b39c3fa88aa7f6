"""``restore(config, workdir)``: a trained or running work directory, back.

The one way to get a run's state out of its work directory, used by
``launch/evaluate.py``, the experiment scripts and tests: the run is built
from its config (data, network, method), the checkpoint is read into
templates made with ``jax.eval_shape`` and nothing is refreshed or trained.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from dmlx.data.base import Dataset
from dmlx.methods.base import HostContext
from dmlx.train import run as run_lib
from dmlx.train import step as step_lib
from dmlx.train.state import TrainState


@dataclasses.dataclass
class Restored:
  """A restored run: its parts, state and host state at ``step``."""
  run: run_lib.Run
  state: TrainState
  host: Any
  step: int

  def context(self) -> HostContext:
    """The :class:`HostContext` at the restored step."""
    return run_lib.host_context(self.run, self.state, self.step)

  def embed(self, dataset: Dataset | None = None,
            layers: tuple[str, ...] = ("embedding",)) -> dict[str, np.ndarray]:
    """``{layer: [N, D]}`` features of ``dataset`` (default: the test set)
    in inference mode."""
    variables = {"params": self.state.params["model"],
                 "batch_stats": self.state.batch_stats}
    ds = self.run.test if dataset is None else dataset
    return step_lib.extract_features(self.run.features, variables, ds.images,
                                     self.run.mesh, self.run.config.eval.batch_size,
                                     tuple(layers))

  def close(self) -> None:
    self.run.checkpointer.close()
    self.run.writer.close()


def restore(config: Any, workdir: str, step: int | None = None, *,
            quiet: bool = True) -> Restored:
  """The run of ``config`` in ``workdir`` at its latest checkpoint (or
  ``step``).

  Raises:
    FileNotFoundError: ``workdir`` has no checkpoint.
  """
  run = run_lib.build(config, workdir, quiet=quiet)
  if run.checkpointer.latest_step() is None:
    run.checkpointer.close()
    run.writer.close()
    raise FileNotFoundError(f"No checkpoint in {run.checkpointer.directory}; "
                            "train first with launch/train.py and the same --workdir.")
  state, host = run_lib.restore_state(run, step)
  return Restored(run=run, state=state, host=host,
                  step=int(jax.device_get(state.step)))
