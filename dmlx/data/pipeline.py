"""From ``config.data`` to the train / test datasets of a run.

``load_splits`` loads the named dataset (offline ones generated or shipped,
real ones from their archive layout) and splits it the way the papers do:
``zero_shot`` (first classes train, the rest — never seen in training — test),
``classification`` (the same classes, held-out images), ``by_attribute``
(e.g. Omniglot's unseen alphabets), or ``predefined`` (the dataset's own
split, e.g. SOP's 11,318/11,316 classes). With ``validation_classes > 0`` the
test set is replaced by held-out *training* classes, so hyper-parameters are
chosen without looking at the test classes.
"""
from __future__ import annotations

from typing import Callable

from absl import logging
import numpy as np

from dmlx.data import bad_images
from dmlx.data import registry
from dmlx.data import splits
from dmlx.data.base import Dataset


def load_dataset(cfg, log: Callable[[str], None] | None = None) -> Dataset:
  """Loads ``cfg.name`` through :func:`dmlx.data.registry.load`; a dataset's
  own standard split is kept in its ``'split'`` attribute.

  An image that does not decode is fatal (``data.on_bad_image='error'``,
  the error names its path) or dropped (``'skip'``); skipped files and files
  with identical bytes (kept) are reported through ``log``."""
  options = dict(cfg.options)
  if cfg.cache_dir:
    options["cache_dir"] = cfg.cache_dir
  log = log or logging.warning
  with bad_images.on_bad_image(cfg.get("on_bad_image", "error")) as bad:
    ds = registry.load(cfg.name, cfg.data_dir or None, cfg.image_size, **options)
  if bad.skipped:
    shown = "; ".join(f"{p} ({why[:80]})" for p, why in bad.skipped[:3])
    log(f"data.on_bad_image='skip': skipped {len(bad.skipped)} images that do not "
        f"decode: {shown}{' ...' if len(bad.skipped) > 3 else ''}")
  if bad.duplicates:
    shown = "; ".join(f"{a} = {b}" for a, b in bad.duplicates[:3])
    log(f"{len(bad.duplicates)} files have the same bytes as another file (kept; "
        f"a duplicate in a test set inflates Recall@K): {shown}"
        f"{' ...' if len(bad.duplicates) > 3 else ''}")
  return ds


def load_splits(cfg, log: Callable[[str], None] | None = None) -> dict[str, Dataset]:
  """Returns ``{'train': Dataset, 'test': Dataset}`` for ``config.data``.

  ``class_range = (lo, hi)`` first keeps classes ``lo..hi-1`` only (in the
  loader's order; relabelled from 0): a pretraining run's own classes."""
  ds = load_dataset(cfg, log)
  class_range = tuple(cfg.get("class_range", ()))
  if class_range:
    lo, hi = (int(v) for v in class_range)
    if not 0 <= lo < hi <= ds.num_classes:
      raise ValueError(f"data.class_range {class_range} must lie in "
                       f"[0, {ds.num_classes}] with lo < hi.")
    keep = np.flatnonzero((ds.labels >= lo) & (ds.labels < hi))
    ds = ds.subset(keep, name=f"{ds.name}[{lo}:{hi}]")
  if cfg.split == "predefined":
    if "split" not in ds.attributes:
      raise ValueError(f"data.split='predefined' but {cfg.name!r} has no "
                       "predefined split; use 'zero_shot' or 'classification'.")
    parts = splits.standard_split(ds)
    train = parts["train"]
    test = parts.get("test") or parts.get("query")
  elif cfg.split == "zero_shot":
    train, test = splits.zero_shot_split(
        ds, num_train_classes=cfg.num_train_classes or None,
        fraction=cfg.train_class_fraction)
  elif cfg.split == "classification":
    train, test = _classification(ds, cfg.train_fraction)
  elif cfg.split == "by_attribute":
    train, test = splits.split_by_attribute(ds, cfg.split_attribute,
                                            tuple(cfg.train_attribute_values))
  elif cfg.split != "predefined":
    raise ValueError(f"Unknown data.split {cfg.split!r}; expected 'zero_shot', "
                     "'classification', 'by_attribute' or 'predefined'.")
  held_out = tuple(cfg.get("validation_attribute_values", ()))
  if held_out:
    if cfg.split != "by_attribute":
      raise ValueError("data.validation_attribute_values needs data.split="
                       f"'by_attribute', got {cfg.split!r}.")
    keep = [v for v in cfg.train_attribute_values if v not in held_out]
    unknown = sorted(set(held_out) - set(cfg.train_attribute_values))
    if unknown or not keep:
      raise ValueError(f"data.validation_attribute_values {held_out} must be a "
                       f"proper subset of data.train_attribute_values "
                       f"{tuple(cfg.train_attribute_values)}.")
    train, test = splits.split_by_attribute(train, cfg.split_attribute, keep)
  if cfg.validation_classes:
    if not 0 < cfg.validation_classes < train.num_classes:
      raise ValueError(f"data.validation_classes = {cfg.validation_classes} must be "
                       f"in [1, {train.num_classes - 1}]: the training split has "
                       f"{train.num_classes} classes.")
    train, test = splits.zero_shot_split(
        train, num_train_classes=train.num_classes - cfg.validation_classes)
  if cfg.get("classify_fraction", 0.0):
    train, test = _classification(test, cfg.classify_fraction)
  return {"train": train, "test": test}


def _classification(ds: Dataset, train_fraction: float):
  out = splits.classification_split(ds, train_fraction=train_fraction, seed=0)
  return out[0], out[-1]
