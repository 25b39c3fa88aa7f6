"""Lifted structured loss (Oh Song et al. 2016),
on Omniglot (background small 1), zero-shot across alphabets.

  python launch/train.py --config=configs/omniglot_lifted_structure.py
  python launch/train.py --config=configs/omniglot_lifted_structure.py:val   # validation classes

The settings and how they were chosen: configs/real_data.py.
"""
from dmlx.config import sibling_config


def get_config(arg=None):
  return sibling_config(__file__, "real_data.py", "omniglot,lifted_structure", arg)
