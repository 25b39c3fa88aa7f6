"""Reading the DML datasets through TensorFlow Datasets builders.

An alternative to ``dmlx.data.archives`` for datasets already prepared by
TFDS in a ``data_dir`` (``tfds build <name> --data_dir=... --manual_dir=...``).
It returns the same :class:`~dmlx.data.base.Dataset` as the archive loaders,
with the same ``"split"`` attribute: all TFDS splits are concatenated and, for
CUB-200-2011 and Cars196, whose TFDS splits are the per-image classification
splits, ``"split"`` is the zero-shot class split (first half of the classes
train, Song et al. 2016) and the TFDS split is kept as ``"official_split"``.

Nothing is downloaded or prepared here. Reading without tensorflow works
only for datasets prepared in the ``array_record`` format, through
``builder.as_data_source()``; otherwise the error says to install
tensorflow or use the archive loader.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from dmlx.data import base
from dmlx.data import images as images_lib
from dmlx.data.splits import SPLIT_CODES


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How one TFDS builder's examples map onto a dmlx dataset.

  Attributes:
    builder: the TFDS builder name.
    splits: TFDS split name -> dmlx split name.
    label: feature holding the class id.
    attributes: dmlx attribute name -> feature holding it.
    zero_shot: whether ``"split"`` is the first-half-of-classes split.
    channels: default channels (1 for Omniglot).
    invert: default inversion (Omniglot strokes bright on black, as in
      ``archives.load_omniglot``).
  """
  builder: str
  splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))
  label: str = "label"
  attributes: tuple[tuple[str, str], ...] = ()
  zero_shot: bool = False
  channels: int = 3
  invert: bool = False


TFDS_NAMES: dict[str, TfdsSpec] = {
    "cub200": TfdsSpec("caltech_birds2011", zero_shot=True),
    "cars196": TfdsSpec("cars196", zero_shot=True),
    "sop": TfdsSpec("stanford_online_products", label="class_id",
                    attributes=(("super_class", "super_class_id"),)),
    "flowers102": TfdsSpec("oxford_flowers102", splits=(
        ("train", "train"), ("validation", "val"), ("test", "test"))),
    "pets": TfdsSpec("oxford_iiit_pet", attributes=(("species", "species"),)),
    "dogs": TfdsSpec("stanford_dogs"),
    "omniglot": TfdsSpec("omniglot", attributes=(("alphabet", "alphabet"),),
                         channels=1, invert=True),
}


def spec_for(name: str) -> TfdsSpec:
  """Returns the spec for a dmlx name (``"cub200"``) or a TFDS builder name
  (``"caltech_birds2011"``); ValueError for others."""
  if name in TFDS_NAMES:
    return TFDS_NAMES[name]
  for spec in TFDS_NAMES.values():
    if spec.builder == name:
      return spec
  builders = sorted(s.builder for s in TFDS_NAMES.values())
  raise ValueError(f"No TFDS mapping for dataset {name!r}; known: "
                   f"{sorted(TFDS_NAMES)} / {builders}.")


def _archive_hint(name: str) -> str:
  dmlx_name = next((k for k, s in TFDS_NAMES.items() if s.builder == name or
                    k == name), name)
  return (f"use dmlx.data.archives (registry name {dmlx_name!r}) on the "
          f"original archive, or pip install tensorflow")


def load_tfds(name: str, data_dir: str | os.PathLike, *, image_size,
              channels: int | None = None, resize: str = "shorter_crop",
              invert: bool | None = None) -> base.Dataset:
  """Loads a dataset prepared by TFDS in ``data_dir`` as one dmlx Dataset.

  Args:
    name: dmlx name (``"cub200"``, ``"sop"``, ...) or TFDS builder name.
    data_dir: the TFDS data folder (holding ``<builder>/<version>/``).
    image_size, channels, resize, invert: as in ``dmlx.data.images``;
      ``channels`` / ``invert`` None take the dataset's default (RGB, not
      inverted; Omniglot grey, inverted).

  Raises:
    ValueError: a name without a TFDS mapping.
    FileNotFoundError: the builder is not prepared in ``data_dir``.
    ImportError: TFDS or (for tfrecord-format data) tensorflow is missing.
  """
  spec = spec_for(name)
  channels = spec.channels if channels is None else channels
  invert = spec.invert if invert is None else invert
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {spec.builder!r} through TFDS needs "
                      f"tensorflow-datasets; {_archive_hint(name)}.") from e
  builder = tfds.builder(spec.builder, data_dir=os.fspath(data_dir))
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {spec.builder!r} is not prepared in '{data_dir}' "
        f"(looked in {builder.data_dir}). Prepare it with `tfds build "
        f"{spec.builder} --data_dir=... --manual_dir=...` (needs tensorflow; "
        f"nothing is downloaded here), or {_archive_hint(name)}.")
  features = builder.info.features
  class_names = tuple(features[spec.label].names)
  images, labels, parts = [], [], []
  attributes = {k: [] for k, _ in spec.attributes}
  for tfds_split, dmlx_split in spec.splits:
    if tfds_split not in builder.info.splits:
      continue
    try:
      source = builder.as_data_source(split=tfds_split)
    except (NotImplementedError, ModuleNotFoundError, ImportError) as e:
      raise ImportError(
          f"Cannot read TFDS {spec.builder!r} without tensorflow "
          f"({type(e).__name__}: {e}); prepare it with "
          f"file_format=array_record, or {_archive_hint(name)}.") from e
    for i in range(len(source)):
      example = source[i]
      images.append(images_lib.resize_array(
          example["image"], image_size, channels=channels, resize=resize,
          invert=invert))
      labels.append(int(example[spec.label]))
      parts.append(SPLIT_CODES[dmlx_split])
      for key, feature in spec.attributes:
        attributes[key].append(int(example[feature]))
  if not images:
    raise FileNotFoundError(f"TFDS dataset {spec.builder!r} in '{data_dir}' "
                            f"has none of the splits {spec.splits}.")
  labels = np.asarray(labels, np.int64)
  parts = np.asarray(parts, np.int32)
  attrs = {k: np.asarray(v) for k, v in attributes.items()}
  if spec.zero_shot:
    attrs["official_split"] = parts
    attrs["split"] = np.where(labels < len(class_names) // 2,
                              SPLIT_CODES["train"], SPLIT_CODES["test"])
  else:
    attrs["split"] = parts
  return base.make_dataset(np.stack(images), labels, class_names, attrs,
                           name=next(k for k, s in TFDS_NAMES.items()
                                     if s is spec))
