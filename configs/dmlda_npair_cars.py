"""DML-DA with the N-pair loss (DML-DA_np) on Cars196.

The paper's settings (Sec. IV-A); see configs/dmlda.py.

  python launch/train.py --config=configs/dmlda_npair_cars.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/dmlda.py (argument 'npair,cars').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "dmlda.py"))
  return shared["get_config"]("npair,cars")
