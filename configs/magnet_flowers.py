"""Magnet loss on flowers with the paper's Appendix B settings: see configs/magnet.py.

  python launch/train.py --config=configs/magnet_flowers.py --config.data.data_dir=/path/to/flowers
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "magnet.py"))
  return shared["get_config"]("flowers")
