"""DML-DA with the N-pair loss (DML-DA_np) on Stanford Online Products.

The paper's settings (Sec. IV-A); see configs/dmlda.py.

  python launch/train.py --config=configs/dmlda_npair_sop.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/dmlda.py (argument 'npair,sop').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "dmlda.py"))
  return shared["get_config"]("npair,sop")
