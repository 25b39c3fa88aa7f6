"""Magnet loss (Rippel et al. 2016) on Omniglot (background small 1, zero-shot across alphabets).

  python launch/train.py --config=configs/omniglot_magnet.py
  python launch/train.py --config=configs/omniglot_magnet.py:val   # validation classes

Optional argument: the protocol (val; default: the unseen test classes).
The data folder defaults to ../shared/data (--config.data.data_dir=PATH
points elsewhere). Network, budget and hyper-parameters, and how they were
chosen on validation classes, are in configs/real_data.py.
"""
import os
import runpy


def get_config(arg=None):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__),
                                       "real_data.py"))
  return shared["get_config"](",".join(["omniglot", "magnet"] +
                                       ([arg] if arg else [])))
