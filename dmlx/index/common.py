"""Type aliases and argument checks shared by the FAISS helpers of
``dmlx.index``: float32 matrix validation, positive-integer and choice checks,
and the ``use_gpu`` switch."""
from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

IndexType = Literal["flat", "hnsw", "ivf", "ivf_join"]
Metric = Literal["l2", "ip"]
UseGpu = bool | Literal["auto"]

_INDEX_TYPES = ("flat", "hnsw", "ivf")
_METRICS = ("l2", "ip")


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
  """Contiguous finite float32 ``[N, D]`` copy-free view where possible."""
  x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a [N, D] array, got shape {x.shape}.")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} must be non-empty, got shape {x.shape}.")
  if not np.isfinite(x).all():
    bad = int((~np.isfinite(x)).any(axis=1).sum())
    raise ValueError(f"{name} has {bad} rows with NaN or inf values.")
  return x


def _check_positive(value: int, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
      value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def _resolve_gpu(use_gpu: UseGpu) -> bool:
  """``'auto'`` -> whether faiss sees a GPU; ``True`` requires one."""
  has_gpu = (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 and
             hasattr(faiss, "index_cpu_to_all_gpus"))
  if use_gpu == "auto":
    return has_gpu
  if use_gpu is True:
    if not has_gpu:
      raise ValueError("use_gpu=True but faiss sees no GPU (install faiss-gpu "
                       "or pass use_gpu='auto').")
    return True
  if use_gpu is False:
    return False
  raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}.")


def drop_own(distances: np.ndarray, indices: np.ndarray, own: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
  """Removes each row's own id from its ``[b, k + 1]`` neighbour list.

  ``own`` is ``[b]``: row i's own database id. When it is not among the
  k + 1 found (more than k exact duplicates, or an approximate search that
  missed it) the (k+1)-th neighbour is dropped instead. Returns ``[b, k]``
  arrays, nearest first.
  """
  drop = indices == np.asarray(own)[:, None]
  drop[~drop.any(axis=1), -1] = True
  keep = ~drop
  b, m = indices.shape[0], indices.shape[1] - 1
  return distances[keep].reshape(b, m), indices[keep].reshape(b, m)
