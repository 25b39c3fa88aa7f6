"""The in-memory dataset record every dmlx loader returns.

Datasets in the seed papers are small enough (CUB: 11,788 images; SOP: 120k at
reduced size) to hold as one uint8 array resized to a fixed size, which keeps
the input pipeline a set of pure array operations that run inside the jitted
step (see ``dmlx.data.augment``).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images with integer class labels and optional per-example attributes.

  Attributes:
    images: ``[N, H, W, C]`` uint8 array.
    labels: ``[N]`` int32 class ids, contiguous from 0 to ``num_classes - 1``.
    class_names: one name per class id.
    attributes: named ``[N]`` integer arrays of per-example latent attributes
      (colour, orientation, alphabet, ...), used by analyses such as Magnet's
      attribute concentration and MIC's shared characteristics.
    name: dataset name for logs.
    preprocessing: normalisation the network expects, ``mean``/``std`` in
      0..1 RGB units (overridden by pretrained backbones).
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  attributes: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  name: str = "dataset"

  def __post_init__(self):
    if self.images.ndim != 4:
      raise ValueError(
          f"Dataset {self.name!r}: images must be [N, H, W, C], got shape "
          f"{self.images.shape}.")
    if self.images.dtype != np.uint8:
      raise TypeError(f"Dataset {self.name!r}: images must be uint8, got "
                      f"{self.images.dtype}.")
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(
          f"Dataset {self.name!r}: labels shape {self.labels.shape} does not "
          f"match {self.images.shape[0]} images.")
    for key, value in self.attributes.items():
      if len(value) != len(self.labels):
        raise ValueError(f"Dataset {self.name!r}: attribute {key!r} has "
                         f"{len(value)} entries for {len(self.labels)} images.")
    if len(self.labels) and (self.labels.min() < 0 or
                             self.labels.max() >= len(self.class_names)):
      raise ValueError(
          f"Dataset {self.name!r}: label {int(self.labels.max())} out of range "
          f"for {len(self.class_names)} classes.")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def subset(self, index: np.ndarray, relabel: bool = True,
             name: str | None = None) -> "Dataset":
    """Returns the examples at ``index``; with ``relabel`` the classes present
    are renumbered 0..C-1 in increasing order of their old ids."""
    index = np.asarray(index)
    labels = self.labels[index]
    class_names = self.class_names
    if relabel:
      present = np.unique(labels)
      remap = np.full(self.num_classes, -1, np.int32)
      remap[present] = np.arange(len(present), dtype=np.int32)
      labels = remap[labels]
      class_names = tuple(self.class_names[c] for c in present)
    return Dataset(
        images=self.images[index],
        labels=labels.astype(np.int32),
        class_names=class_names,
        attributes={k: v[index] for k, v in self.attributes.items()},
        name=name or self.name)


def make_dataset(images: np.ndarray, labels: np.ndarray,
                 class_names: tuple[str, ...] | None = None,
                 attributes: Mapping[str, np.ndarray] | None = None,
                 name: str = "dataset") -> Dataset:
  """Builds a :class:`Dataset`, renumbering arbitrary labels to 0..C-1 and
  adding a channel axis to grey images."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray(labels)
  uniq, labels = np.unique(labels, return_inverse=True)
  if class_names is None:
    class_names = tuple(str(u) for u in uniq)
  elif len(class_names) != len(uniq):
    class_names = tuple(class_names[int(u)] for u in uniq) if np.issubdtype(
        uniq.dtype, np.integer) else tuple(str(u) for u in uniq)
  return Dataset(images=images.astype(np.uint8), labels=labels.astype(np.int32),
                 class_names=tuple(class_names),
                 attributes={k: np.asarray(v) for k, v in (attributes or {}).items()},
                 name=name)
