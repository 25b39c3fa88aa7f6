"""Vo & Hays's NetE on Stanford Online Products (configs/vohays.py:nete,sop).

  python launch/train.py --config=configs/vohays_nete_sop.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/vohays.py.
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "vohays.py"))
  return shared["get_config"]("nete,sop")
