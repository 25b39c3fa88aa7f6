"""Softmax cross-entropy,
on Omniglot (background small 1), zero-shot across alphabets.

  python launch/train.py --config=configs/omniglot_softmax.py
  python launch/train.py --config=configs/omniglot_softmax.py:val   # validation classes

The settings and how they were chosen: configs/real_data.py.
"""
from dmlx.config import sibling_config


def get_config(arg=None):
  return sibling_config(__file__, "real_data.py", "omniglot,softmax", arg)
