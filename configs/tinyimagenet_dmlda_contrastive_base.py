"""DML-DA's contrastive base loss without the regulariser (Li et al.) on Tiny ImageNet (101-class subset, zero-shot; ':cls' = classification split).

  python launch/train.py --config=configs/tinyimagenet_dmlda_contrastive_base.py
  python launch/train.py --config=configs/tinyimagenet_dmlda_contrastive_base.py:val   # validation classes

Optional argument: the protocol (val | cls; default: the unseen test classes).
The data folder defaults to ../shared/data (--config.data.data_dir=PATH
points elsewhere). Network, budget and hyper-parameters, and how they were
chosen on validation classes, are in configs/real_data.py.
"""
import os
import runpy


def get_config(arg=None):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__),
                                       "real_data.py"))
  return shared["get_config"](",".join(["tinyimagenet", "dmlda_contrastive_base"] +
                                       ([arg] if arg else [])))
