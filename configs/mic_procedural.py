"""MIC + margin loss on the offline procedural dataset (small, runs on a CPU).

  python launch/train.py --config=configs/mic_procedural.py --workdir=/tmp/mic

48 procedural object classes (24 train, 24 unseen test) whose colour,
orientation, scale and background are shared across classes, the structure
MIC's auxiliary encoder E_β is meant to capture. Everything is defined in
configs/mic.py (argument 'procedural').
"""
import os
import runpy


def get_config():
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "mic.py"))
  return shared["get_config"]("procedural")
