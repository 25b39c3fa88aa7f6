"""DML-DA: triplet loss + density regulariser (Li et al.),
on Tiny ImageNet (101-class subset), zero-shot;
':cls' = classification split.

  python launch/train.py --config=configs/tinyimagenet_dmlda_triplet.py
  python launch/train.py --config=configs/tinyimagenet_dmlda_triplet.py:val   # validation classes

The settings and how they were chosen: configs/real_data.py.
"""
from dmlx.config import sibling_config


def get_config(arg=None):
  return sibling_config(__file__, "real_data.py", "tinyimagenet,dmlda_triplet", arg)
