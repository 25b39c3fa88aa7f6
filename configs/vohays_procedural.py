"""Vo & Hays's variants offline, on the procedural dataset at 32 px.

  python launch/train.py --config=configs/vohays_procedural.py:nete \
      --workdir=/tmp/vohays_nete

Argument: neta | netb | netc | netd | nete | netf | cls (default neta); see
configs/vohays.py for what each means and for the reduced VGG16-BN. Without
pretrained weights neta, netb and netc are the same run.
"""
import os
import runpy


def get_config(arg: str = "neta"):
  shared = runpy.run_path(os.path.join(os.path.dirname(__file__), "vohays.py"))
  return shared["get_config"](f"{arg},procedural")
