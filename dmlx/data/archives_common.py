"""Plumbing shared by the archive loaders of ``dmlx.data.archives``.

Finding a dataset's root in a folder or zip, decoding its images
(``dmlx.data.images``), checking the decoding options, reading index files
and ``.mat`` files, and the ``.npz`` cache key of a loader.
"""
from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np

from dmlx.data import images as images_lib
from dmlx.data.splits import SPLIT_CODES

TRAIN, TEST, VAL = SPLIT_CODES["train"], SPLIT_CODES["test"], SPLIT_CODES["val"]
PathLike = str | os.PathLike
_Source = images_lib.FileSource


def _missing(dataset: str, data_dir: PathLike, expected: str, url: str):
  return FileNotFoundError(
      f"{dataset} not found at '{data_dir}'. Expected {expected}, unpacked in "
      f"that folder (or one sub-folder of it) or inside a .zip there. "
      f"Get it from {url}.")


def _locate(data_dir: PathLike, markers: Sequence[str], dataset: str,
            expected: str, url: str) -> _Source:
  src = images_lib.find_root(data_dir, markers)
  if src is None:
    raise _missing(dataset, data_dir, expected, url)
  return src


def _decode(src: _Source, paths: Sequence[str], image_size, *, channels: int,
            resize: str, num_workers: int | None, invert: bool = False,
            boxes=None) -> np.ndarray:
  return images_lib.decode_many(paths, src.read, image_size, channels=channels,
                                resize=resize, invert=invert, boxes=boxes,
                                num_workers=num_workers)


def _options(image_size, channels, resize, **extra) -> dict[str, Any]:
  """Checks the decoding options (ValueError) and returns them for the cache
  key."""
  images_lib.check_options(channels, resize)
  return {"image_size": images_lib.image_shape(image_size),
          "channels": channels, "resize": resize, **extra}


def _loadmat(src: _Source, rel: str) -> dict[str, Any]:
  try:
    import scipy.io  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {rel} needs scipy: pip install scipy") from e
  return scipy.io.loadmat(io.BytesIO(src.read(rel)), squeeze_me=True)


def _ints(values) -> np.ndarray:
  return np.atleast_1d(np.asarray(values)).astype(np.int64).ravel()


def _strings(values) -> list[str]:
  return [str(v) for v in np.atleast_1d(np.asarray(values, dtype=object))]


def _key(loader: str, src: _Source, marker: str,
         opts: dict[str, Any]) -> dict[str, Any]:
  """The cache key: loader, source identity and decoding options."""
  return {"loader": loader, **src.identity(marker), **opts}


def _table(src: _Source, rel: str) -> dict[str, str]:
  """``first column -> rest of the line`` of an index file like images.txt."""
  return dict(line.split(maxsplit=1) for line in src.text(rel))
