"""Training methods by name: ``config.method.name`` → ``dmlx.methods.<name>``.

Each module exposes ``make(config) -> Method`` (see :mod:`dmlx.methods.base`).
"""
from __future__ import annotations

import importlib

from dmlx.methods.base import HostContext, Method, ModelInfo

METHODS = ("loss", "nngk", "magnet", "mic", "dmlda")


def make(config) -> Method:
  """Builds the method named by ``config.method.name``."""
  name = config.method.name
  if name not in METHODS:
    raise ValueError(f"Unknown method.name {name!r}; expected one of {METHODS}.")
  return importlib.import_module(f"dmlx.methods.{name}").make(config)


__all__ = ["HostContext", "METHODS", "Method", "ModelInfo", "make"]
