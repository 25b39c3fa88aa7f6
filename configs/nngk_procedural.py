"""NNGK (Meyer et al., ICIP 2018) on the offline procedural object dataset.

  python launch/train.py --config=configs/nngk_procedural.py --workdir=/tmp/p
  python launch/train.py --config=configs/nngk_procedural.py:cls \\
      --workdir=/tmp/p_cls

Without an argument: the zero-shot split, the same run as configs/default.py
(the README's main job). ``cls``: the classification split (all classes, half
of each class's images train, the rest test; the eq. 3 classifier's accuracy
is printed as nngk_accuracy). Defined in configs/nngk.py (``_procedural``),
where the hyper-parameter choices and how they were made are recorded.
"""
import os
import runpy


def get_config(arg: str | None = None):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "nngk.py"))
  return shared["get_config"](f"procedural,{arg}" if arg else "procedural")
