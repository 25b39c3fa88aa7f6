"""DML-DA with the triplet loss (DML-DA_tri) on Stanford Online Products.

The paper's settings (Sec. IV-A); see configs/dmlda.py.

  python launch/train.py --config=configs/dmlda_triplet_sop.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/dmlda.py (argument 'triplet,sop').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "dmlda.py"))
  return shared["get_config"]("triplet,sop")
