"""One way to find a piece by name: losses, methods, backbones, datasets,
samplers and evaluators all live in a :class:`Registry`.

A registry maps a name (and optional aliases) to an entry. An entry is either
the object itself or an import path ``"package.module:attribute"``, imported
the first time it is asked for, so a registry can list pieces whose modules
pull heavy dependencies (FAISS, PIL, TFDS) without importing them. An unknown
name is a ``ValueError`` that names it and lists the valid names.

  from dmlx import registry
  BACKBONES = registry.Registry("model.backbone", {
      "resnet50": "dmlx.models.resnet:ResNet50"})
  cls = BACKBONES.get("resnet50")
"""
from __future__ import annotations

import importlib
from typing import Any, Iterator, Mapping, MutableMapping


def import_target(target: str) -> Any:
  """Imports ``"package.module:attribute"`` and returns the attribute."""
  module_name, sep, attr = target.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"Import target {target!r} must be 'package.module:attribute'.")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise ImportError(f"{target!r} is registered but module {module_name!r} "
                        "does not exist.") from e
    raise
  try:
    return getattr(module, attr)
  except AttributeError:
    raise ImportError(f"Module {module_name!r} has no attribute {attr!r} "
                      f"(registered as {target!r}).") from None


_MISSING = object()


class Registry(MutableMapping[str, Any]):
  """Named entries of one kind, resolved lazily; a mapping (assigning an
  entry replaces it, which tests use to patch one).

  Args:
    kind: what the names are, for error messages (``'loss'``,
      ``'method.name'``, ``'model.backbone'``, ...).
    entries: ``{name: object or "module:attribute"}``.
    aliases: ``{alias: name}``; lookups are also case- and
      ``-``/``_``-insensitive when ``normalise`` is set.
    normalise: lower-case names and map ``-`` to ``_`` before lookup.
  """

  def __init__(self, kind: str, entries: Mapping[str, Any] | None = None, *,
               aliases: Mapping[str, str] | None = None,
               normalise: bool = False):
    self.kind = kind
    self._entries: dict[str, Any] = dict(entries or {})
    self._aliases: dict[str, str] = dict(aliases or {})
    self._normalise = normalise
    self._resolved: dict[str, Any] = {}
    for alias, name in self._aliases.items():
      if name not in self._entries:
        raise ValueError(f"{kind}: alias {alias!r} points at unknown {name!r}.")

  def register(self, name: str, entry: Any = None):
    """Adds ``name``; usable as ``register(name, obj)`` or as a decorator."""
    if entry is None:
      def decorate(obj):
        self.register(name, obj)
        return obj
      return decorate
    if name in self._entries:
      raise ValueError(f"{self.kind}: {name!r} is already registered.")
    self._entries[name] = entry
    return entry

  def canonical(self, name: str) -> str:
    """The registered name ``name`` refers to (aliases resolved).

    Raises:
      ValueError: naming ``name`` and listing the valid names.
    """
    key = name
    if isinstance(key, str) and self._normalise:
      key = key.lower().replace("-", "_")
    if isinstance(key, str):
      key = self._aliases.get(key, key)
    if not isinstance(key, str) or key not in self._entries:
      extra = (f" (aliases: {', '.join(sorted(self._aliases))})"
               if self._aliases else "")
      raise ValueError(f"Unknown {self.kind} {name!r}; valid names: "
                       f"{', '.join(self.names())}{extra}.")
    return key

  def get(self, name: str, default: Any = _MISSING) -> Any:  # pylint: disable=arguments-renamed
    """The entry registered as ``name`` (imported if it is a path).

    Unlike ``dict.get`` an unknown name is an error naming it, unless a
    ``default`` is passed."""
    if default is not _MISSING and name not in self:
      return default
    key = self.canonical(name)
    if key not in self._resolved:
      entry = self._entries[key]
      self._resolved[key] = (import_target(entry) if isinstance(entry, str)
                             else entry)
    return self._resolved[key]

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._entries))

  def __getitem__(self, name: str) -> Any:
    try:
      return self.get(name)
    except ValueError as e:
      raise KeyError(name) from e

  def __setitem__(self, name: str, entry: Any) -> None:
    self._entries[name] = entry
    self._resolved.pop(name, None)

  def __delitem__(self, name: str) -> None:
    del self._entries[name]
    self._resolved.pop(name, None)

  def __contains__(self, name: object) -> bool:
    try:
      self.canonical(name)  # type: ignore[arg-type]
    except ValueError:
      return False
    return True

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {list(self.names())})"
