"""Training methods by name: ``config.method.name`` → a :class:`Method`.

Each method module exposes ``METHOD`` (see :mod:`dmlx.methods.base` for the
contract) and its settings dataclass ``Config``.
"""
from __future__ import annotations

from typing import Any

from dmlx import registry
from dmlx.methods.base import HostContext
from dmlx.methods.base import Method
from dmlx.methods.base import MethodState
from dmlx.methods.base import ModelInfo
from dmlx.methods.base import Update

METHODS = registry.Registry("method.name", {
    "loss": "dmlx.methods.loss:METHOD",
    "nngk": "dmlx.methods.nngk:METHOD",
    "magnet": "dmlx.methods.magnet:METHOD",
    "mic": "dmlx.methods.mic:METHOD",
    "dmlda": "dmlx.methods.dmlda:METHOD",
})


def get(name: str) -> Method:
  """The method registered as ``name``."""
  return METHODS.get(name)


def from_config(config: Any) -> tuple[Method, Any]:
  """``(method, settings)`` for ``config.method.name``; the settings are
  checked (unknown keys, types, ranges) before anything is compiled."""
  method = get(config.method.name)
  return method, method.settings(config)


__all__ = ["HostContext", "METHODS", "Method", "MethodState", "ModelInfo",
           "Update", "from_config", "get"]
