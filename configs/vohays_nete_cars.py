"""Vo & Hays's NetE on Cars-196 (configs/vohays.py:nete,cars).

  python launch/train.py --config=configs/vohays_nete_cars.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/vohays.py.
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "vohays.py"))
  return shared["get_config"]("nete,cars")
