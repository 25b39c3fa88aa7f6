"""Margin loss with distance-weighted sampling (Wu et al. 2017) on Tiny ImageNet (101-class subset, zero-shot; ':cls' = classification split).

  python launch/train.py --config=configs/tinyimagenet_margin.py
  python launch/train.py --config=configs/tinyimagenet_margin.py:val   # validation classes

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
  return shared["get_config"](",".join(["tinyimagenet", "margin"] +
                                       ([arg] if arg else [])))
