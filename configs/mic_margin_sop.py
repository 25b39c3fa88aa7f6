"""MIC + margin loss on Stanford Online Products with the paper's settings (configs/mic.py:sop).

  python launch/train.py --config=configs/mic_margin_sop.py \
      --config.data.data_dir=... --config.model.pretrained=...

Everything is defined in configs/mic.py (argument 'sop').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "mic.py"))
  return shared["get_config"]("sop")
