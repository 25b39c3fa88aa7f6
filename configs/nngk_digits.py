"""NNGK (Meyer et al., ICIP 2018) on scikit-learn's digits, for tests and smoke
runs.

  python launch/train.py --config=configs/nngk_digits.py --workdir=/tmp/nngk
  python launch/train.py --config=configs/nngk_digits.py:cls --workdir=/tmp/c

Offline and tiny (16 px, 2-block small CNN, 32-d embedding, 3 epochs). The
default is the zero-shot split (digits 0-4 train, 5-9 test); the argument
``cls`` gives the classification split (half of each digit's images train,
the rest test, eq. 3 classifier accuracy). Defined in configs/nngk.py.
"""
import os
import runpy


def get_config(arg: str | None = None):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "nngk.py"))
  return shared["get_config"](f"digits,{arg}" if arg else "digits")
