"""MIC + margin loss on CUB-200-2011 with the paper's settings (configs/mic.py:cub).

  python launch/train.py --config=configs/mic_margin_cub.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/mic.py (argument 'cub').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "mic.py"))
  return shared["get_config"]("cub")
