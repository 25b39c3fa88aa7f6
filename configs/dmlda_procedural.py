"""DML-DA on the offline procedural dataset (small, runs on a laptop CPU).

  python launch/train.py --config=configs/dmlda_procedural.py
  python launch/train.py --config=configs/dmlda_procedural.py:triplet,gor

The optional argument is '<loss>[,<regularizer>]' (default 'contrastive',
DML-DA with the paper's contrastive loss); everything is defined in
configs/dmlda.py with dataset 'procedural'.

λ is the paper's 10. At this scale that is far too strong for the
pair-averaged contrastive loss: the run ends no better than the untrained
network; λ <= 0.1 is neutral (docs/results_dmlda.md, --config.method.lam=0.1).
"""
import os
import runpy


def get_config(arg=None):
  loss, _, regularizer = (arg or "contrastive").partition(",")
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "dmlda.py"))
  return shared["get_config"](",".join(
      [loss, "procedural"] + ([regularizer] if regularizer else [])))
