"""Frozen settings dataclasses read from, and written into, ml_collections.

Each method declares its settings once, as a frozen dataclass whose defaults
are the only defaults (see :mod:`dmlx.methods`). Two helpers connect it to a
run config:

* :func:`to_config_dict` writes the defaults (and overrides) into a
  ``ConfigDict``, so ``--config.method.sigma=2`` is a known key and a
  misspelt one is an error on the command line;
* :func:`from_mapping` reads them back, checking that every key is a field
  and every value has the field's type, and naming ``<prefix>.<key>`` in the
  error, before anything is compiled. A typo in a config *file* therefore
  fails exactly like one on the command line.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import typing
from typing import Any, Mapping, TypeVar

import ml_collections

T = TypeVar("T")

# Field metadata key: the field is not read from ``config.method`` but filled
# by the caller (e.g. the base loss from ``config.loss``).
EXTERNAL = "dmlx_external"


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if isinstance(value, list):
    return tuple(value)
  return value


def _check_type(prefix: str, key: str, hint: Any, value: Any) -> Any:
  """``value`` converted to the field's type, or a ``TypeError`` naming it."""
  origin = typing.get_origin(hint)
  if origin is typing.Union:  # Optional[...] and friends: accept any member.
    for member in typing.get_args(hint):
      if member is type(None) and value is None:
        return None
      try:
        return _check_type(prefix, key, member, value)
      except TypeError:
        continue
    raise TypeError(f"{prefix}.{key} = {value!r} has type "
                    f"{type(value).__name__}; expected {hint}.")
  base = origin or hint
  ok = True
  if base is bool:
    ok = isinstance(value, bool)
  elif base is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif base is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif base is str:
    ok = isinstance(value, str)
  elif base in (tuple, typing.Tuple):
    ok = isinstance(value, (tuple, list))
    value = tuple(value) if ok else value
  elif base in (dict, collections.abc.Mapping):
    ok = isinstance(value, Mapping)
    value = dict(value) if ok else value
  if not ok:
    raise TypeError(f"{prefix}.{key} = {value!r} has type "
                    f"{type(value).__name__}; expected {getattr(base, '__name__', base)}.")
  return value


def fields(cls: type) -> tuple[dataclasses.Field, ...]:
  """The fields of ``cls`` read from a config (not :data:`EXTERNAL`)."""
  return tuple(f for f in dataclasses.fields(cls) if not f.metadata.get(EXTERNAL))


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | Any, *, prefix: str,
                 ignore: tuple[str, ...] = ("name",), **external: Any) -> T:
  """Builds the settings dataclass ``cls`` from ``mapping`` (a ConfigDict).

  Args:
    cls: a frozen dataclass.
    mapping: ``config.method`` (or any mapping); keys in ``ignore`` are
      skipped, every other key must be a field of ``cls``.
    prefix: how the mapping is named in errors (``'config.method'``).
    ignore: keys that are not settings (the method's ``name``).
    **external: values of the :data:`EXTERNAL` fields.

  Raises:
    ValueError: a key that is not a field (the message lists the fields).
    TypeError: a value of the wrong type.
  """
  data = _plain(mapping) if mapping is not None else {}
  known = {f.name: f for f in fields(cls)}
  hints = typing.get_type_hints(cls)
  unknown = sorted(k for k in data if k not in known and k not in ignore)
  if unknown:
    raise ValueError(
        f"{prefix}.{unknown[0]} is not a setting of {cls.__module__}."
        f"{cls.__qualname__}; its settings are: {', '.join(sorted(known))}.")
  values = {k: _check_type(prefix, k, hints[k], _plain(v))
            for k, v in data.items() if k in known}
  return cls(**values, **external)


def to_config_dict(cls: type, *, extra: Mapping[str, Any] | None = None,
                   **overrides: Any) -> ml_collections.ConfigDict:
  """A ``ConfigDict`` of every config field of ``cls`` with its default,
  ``overrides`` applied (unknown names are an error) and ``extra`` keys
  (the method's ``name``) first."""
  unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
  if unknown:
    raise ValueError(f"{cls.__module__}.{cls.__qualname__} has no setting "
                     f"{unknown[0]!r}; its settings are: "
                     f"{', '.join(sorted(f.name for f in fields(cls)))}.")
  out = ml_collections.ConfigDict(dict(extra or {}))
  hints = typing.get_type_hints(cls)
  for f in fields(cls):
    if f.name in overrides:
      value = overrides[f.name]
    elif f.default is not dataclasses.MISSING:
      value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      value = f.default_factory()  # type: ignore[misc]
    else:
      raise ValueError(f"{cls.__qualname__}.{f.name} has no default: pass it.")
    value = _check_type(cls.__qualname__, f.name, hints[f.name], _plain(value))
    if isinstance(value, Mapping):
      value = ml_collections.ConfigDict(dict(value))
    out[f.name] = value
  return out
