"""The data-parallel training loop, its state, optimiser and checkpoints.

  from dmlx import train
  final = train.train_and_evaluate(config, workdir)
  restored = train.restore(config, workdir)        # no refresh, no training
  metrics = train.evaluate_run(config, workdir)    # == final_metrics.json
"""
from dmlx.train.loop import evaluate_run
from dmlx.train.loop import train_and_evaluate
from dmlx.train.restore import Restored
from dmlx.train.restore import restore

__all__ = ["Restored", "evaluate_run", "restore", "train_and_evaluate"]
