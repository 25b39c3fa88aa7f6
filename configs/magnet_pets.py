"""Magnet loss on pets with the paper's Appendix B settings: see configs/magnet.py.

  python launch/train.py --config=configs/magnet_pets.py --config.data.data_dir=/path/to/pets
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "magnet.py"))
  return shared["get_config"]("pets")
