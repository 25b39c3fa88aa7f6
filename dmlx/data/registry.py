"""Dataset loaders found by name, for configs (``config.data.name``).

``load(name, data_dir, image_size, **options)`` dispatches to the loader
registered under ``name`` in :data:`LOADERS`. Loaders are named by import
path (``"module:function"``) in a :class:`dmlx.registry.Registry` and
imported only when used, so importing this file never imports scipy, PIL or
tensorflow-datasets. To add a dataset, add one line to :data:`LOADERS`. A name ``"tfds:<name>"`` reads the same dataset
through its prepared TFDS builder (``dmlx.data.tfds_loaders``).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable

from dmlx import registry as registry_lib
from dmlx.data.base import Dataset


@dataclasses.dataclass(frozen=True)
class LoaderSpec:
  """Where a loader lives and how it is called.

  Attributes:
    target: ``"package.module:function"``.
    takes_data_dir: whether the loader's first argument is the data folder
      (archive loaders) or it makes its data itself (digits, procedural).
  """
  target: str
  takes_data_dir: bool = True


_ARCHIVES = "dmlx.data.archives"
LOADERS = registry_lib.Registry("dataset", {
    "cub200": LoaderSpec(f"{_ARCHIVES}:load_cub200"),
    "cars196": LoaderSpec(f"{_ARCHIVES}:load_cars196"),
    "sop": LoaderSpec(f"{_ARCHIVES}:load_sop"),
    "inshop": LoaderSpec(f"{_ARCHIVES}:load_inshop"),
    "flowers102": LoaderSpec(f"{_ARCHIVES}:load_flowers102"),
    "pets": LoaderSpec(f"{_ARCHIVES}:load_pets"),
    "dogs": LoaderSpec(f"{_ARCHIVES}:load_dogs"),
    "omniglot": LoaderSpec(f"{_ARCHIVES}:load_omniglot"),
    "tinyimagenet": LoaderSpec(f"{_ARCHIVES}:load_tinyimagenet"),
    "folder": LoaderSpec(f"{_ARCHIVES}:load_image_folder"),
    "digits": LoaderSpec("dmlx.data.digits:load_digits", takes_data_dir=False),
    "procedural": LoaderSpec("dmlx.data.procedural:load_procedural",
                             takes_data_dir=False),
}, aliases={
    "cub": "cub200", "cub200_2011": "cub200", "caltech_birds2011": "cub200",
    "cars": "cars196", "stanford_online_products": "sop",
    "inshop_clothes": "inshop", "oxford_flowers102": "flowers102",
    "oxford_iiit_pet": "pets", "stanford_dogs": "dogs",
    "tiny_imagenet": "tinyimagenet", "image_folder": "folder",
}, normalise=True)


def names() -> tuple[str, ...]:
  """The registered dataset names."""
  return LOADERS.names()


def resolve(name: str) -> Callable[..., Dataset]:
  """Imports and returns the loader function registered under ``name``."""
  return registry_lib.import_target(LOADERS.get(name).target)


def load(name: str, data_dir: str | os.PathLike | None = None,
         image_size: int | None = None, **options: Any) -> Dataset:
  """Loads dataset ``name`` as one :class:`Dataset` (all splits; see
  ``dmlx.data.splits.standard_split``).

  Args:
    name: a key of :data:`LOADERS` or an alias (case-insensitive).
    data_dir: folder or zip holding the dataset; ignored by loaders that
      make their own data (``digits``, ``procedural``).
    image_size: side of the square images; None keeps the loader's default
      (loaders reading archives have none and require it).
    **options: further keyword arguments of the loader (``channels``,
      ``resize``, ``cache_dir``, ``archives``, ...).

  Raises:
    ValueError: unknown name, missing ``data_dir``, or an option the loader
      does not take.
  """
  if name.lower().startswith("tfds:"):
    spec = LoaderSpec("dmlx.data.tfds_loaders:load_tfds")
    loader = functools.partial(registry_lib.import_target(spec.target),
                               name[len("tfds:"):])
    key = name
  else:
    key = LOADERS.canonical(name)
    spec = LOADERS.get(key)
    loader = registry_lib.import_target(spec.target)
  params = dict(inspect.signature(loader).parameters)
  if spec.takes_data_dir:
    params.pop(next(iter(params)))  # The data folder, passed positionally.
  kwargs = dict(options)
  if image_size is not None:
    kwargs["image_size"] = image_size
  unknown = sorted(k for k in kwargs if k not in params)
  if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
    raise ValueError(f"Dataset {key!r} does not take options {unknown}; its "
                     f"loader {spec.target} takes "
                     f"{list(params)}.")
  if not spec.takes_data_dir:
    return loader(**kwargs)
  if not data_dir:
    raise ValueError(f"Dataset {key!r} needs data_dir (the folder or zip "
                     f"holding it), got {data_dir!r}.")
  return loader(data_dir, **kwargs)
