"""Embeddings with what they belong to, saved to and loaded from one file."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

FORMAT = "dmlx.embeddings/1"


@dataclasses.dataclass(frozen=True)
class Embeddings:
  """``vectors`` ``[N, D]`` float32 with, per row, its image ``names`` and
  (when known) ``labels`` into ``class_names``; ``layer`` and ``metric``
  (``'l2'`` or ``'cosine'``: how the run compares them), the ``source``
  folder / zip the names are relative to, and the ``model`` (``workdir@step``)."""
  vectors: np.ndarray
  names: tuple[str, ...]
  labels: np.ndarray | None = None
  class_names: tuple[str, ...] = ()
  layer: str = "embedding"
  metric: str = "l2"
  source: str = ""
  model: str = ""

  def __post_init__(self):
    v = np.asarray(self.vectors)
    if v.ndim != 2:
      raise ValueError(f"vectors must be [N, D], got shape {v.shape}.")
    if len(self.names) != len(v):
      raise ValueError(f"{len(self.names)} names for {len(v)} vectors.")
    if self.labels is not None and len(self.labels) != len(v):
      raise ValueError(f"{len(self.labels)} labels for {len(v)} vectors.")
    if self.metric not in ("l2", "cosine"):
      raise ValueError(f"metric must be 'l2' or 'cosine', got {self.metric!r}.")

  def __len__(self) -> int:
    return len(self.vectors)

  def save(self, path: str) -> str:
    """Writes one ``.npz`` (atomically); returns its path."""
    if not path.endswith(".npz"):
      path += ".npz"
    meta = dict(format=FORMAT, names=list(self.names), class_names=list(self.class_names),
                layer=self.layer, metric=self.metric, source=self.source,
                model=self.model)
    arrays = {"vectors": np.asarray(self.vectors, np.float32),
              "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    if self.labels is not None:
      arrays["labels"] = np.asarray(self.labels, np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str) -> "Embeddings":
    """Reads a file written by :meth:`save`."""
    with np.load(path) as z:
      if "meta" not in z or "vectors" not in z:
        raise ValueError(f"{path!r} is not a dmlx embeddings file (written by "
                         "Embeddings.save / launch/embed.py).")
      meta = json.loads(z["meta"].tobytes().decode())
      labels = z["labels"] if "labels" in z else None
      vectors = z["vectors"]
    if meta.get("format") != FORMAT:
      raise ValueError(f"{path!r} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    return cls(vectors=vectors, names=tuple(meta["names"]), labels=labels,
               class_names=tuple(meta["class_names"]), layer=meta["layer"],
               metric=meta["metric"], source=meta["source"], model=meta["model"])
