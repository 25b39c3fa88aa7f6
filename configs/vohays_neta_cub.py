"""Vo & Hays's NetA on CUB-200-2011 (configs/vohays.py:neta,cub).

  python launch/train.py --config=configs/vohays_neta_cub.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/vohays.py.
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "vohays.py"))
  return shared["get_config"]("neta,cub")
