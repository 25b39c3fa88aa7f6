"""Images that do not decode: fatal, or dropped and counted
(``config.data.on_bad_image``).

``with on_bad_image('skip') as bad: ds = loader(...)`` makes
:func:`dmlx.data.images.decode_many` zero-fill and record a file that fails
to decode instead of raising; the loader's dataset is then built without
those rows (:func:`drop_bad_rows`, called by ``images.cached``), and
``bad.skipped`` lists ``(path, reason)``.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator

import numpy as np

from dmlx.data import base

BAD_IMAGE_POLICIES = ("error", "skip")


@dataclasses.dataclass
class BadImages:
  """What :func:`on_bad_image` collected: ``skipped`` ``(item, reason)`` of
  every image that did not decode, ``duplicates`` ``(item, earlier item)``
  of files with identical bytes (kept: a user decides), and ``pending`` -- the rows of the last
  :func:`decode_many` still to be dropped from the dataset built from it."""
  policy: str
  skipped: list = dataclasses.field(default_factory=list)
  duplicates: list = dataclasses.field(default_factory=list)   # (item, same bytes as)
  hashes: dict = dataclasses.field(default_factory=dict)
  pending: tuple[int, list[int]] | None = None   # (rows decoded, failed rows)


_BAD_IMAGES: contextvars.ContextVar[BadImages | None] = contextvars.ContextVar(
    "dmlx_bad_images", default=None)


@contextlib.contextmanager
def on_bad_image(policy: str) -> Iterator[BadImages]:
  """Within the block, an image that does not decode is fatal (``'error'``:
  ValueError naming its path) or dropped from the dataset being loaded
  (``'skip'``: collected with its reason, ``config.data.on_bad_image``)."""
  if policy not in BAD_IMAGE_POLICIES:
    raise ValueError(f"data.on_bad_image must be one of {BAD_IMAGE_POLICIES}, "
                     f"got {policy!r}.")
  state = BadImages(policy)
  token = _BAD_IMAGES.set(state)
  try:
    yield state
  finally:
    _BAD_IMAGES.reset(token)


def current() -> BadImages | None:
  """The collector of the enclosing :func:`on_bad_image` block, if any."""
  return _BAD_IMAGES.get()


def drop_bad_rows(ds: base.Dataset) -> base.Dataset:
  """``ds`` without the rows of the last :func:`decode_many` that failed
  under ``on_bad_image('skip')`` (``ds`` must be that decode's rows, in
  order, as every archive loader builds it)."""
  state = _BAD_IMAGES.get()
  if state is None or state.pending is None:
    return ds
  count, failed = state.pending
  state.pending = None
  if len(ds) != count:
    raise RuntimeError(f"{len(failed)} images failed to decode, but the dataset "
                       f"{ds.name!r} has {len(ds)} rows for {count} decoded: this "
                       "loader cannot skip bad images; fix the files or use "
                       "data.on_bad_image='error'.")
  keep = np.setdiff1d(np.arange(count), failed)
  if not len(keep):
    raise ValueError(f"No image of {ds.name!r} decodes ({count} failed).")
  return ds.subset(keep, relabel=True)
