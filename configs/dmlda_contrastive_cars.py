"""DML-DA with the contrastive loss (DML-DA_con) on Cars196.

The paper's settings (Sec. IV-A); see configs/dmlda.py.

  python launch/train.py --config=configs/dmlda_contrastive_cars.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/dmlda.py (argument 'contrastive,cars').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "dmlda.py"))
  return shared["get_config"]("contrastive,cars")
