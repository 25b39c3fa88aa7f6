"""MIC + margin loss on In-Shop Clothes with the paper's settings (configs/mic.py:inshop).

  python launch/train.py --config=configs/mic_margin_inshop.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/mic.py (argument 'inshop').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "mic.py"))
  return shared["get_config"]("inshop")
