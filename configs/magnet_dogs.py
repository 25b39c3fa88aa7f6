"""Magnet loss on dogs with the paper's Appendix B settings: see configs/magnet.py.

  python launch/train.py --config=configs/magnet_dogs.py --config.data.data_dir=/path/to/dogs
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "magnet.py"))
  return shared["get_config"]("dogs")
