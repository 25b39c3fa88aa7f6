"""Train / test splits of a :class:`~dmlx.data.base.Dataset`.

Two protocols appear in the seed papers:

* **Zero-shot retrieval** (Song et al. 2016, "Deep Metric Learning via Lifted
  Structured Feature Embedding", Sec. 5; followed by Proxy-NCA, MIC, Magnet,
  ...): train on the first half of the classes, evaluate Recall@K / NMI on
  the other half, whose classes were never seen. :func:`zero_shot_split`,
  :func:`split_by_attribute` (Omniglot by alphabet, Lake et al. 2015) and
  :func:`validation_split_of_classes` (held-out training classes to choose
  hyper-parameters without touching the test classes).
* **Classification** (Meyer, Harwood & Drummond 2018, "Deep Metric Learning
  and Image Classification with Nearest Neighbour Gaussian Kernels",
  Sec. 3.2: Oxford 102 Flowers' official train / val / test, 30% of the
  Cars196 training set held out for validation): the same classes in train
  and test, split per class. :func:`classification_split`.

Archive loaders record each dataset's official split in the integer
attribute ``"split"`` (codes in :data:`SPLIT_NAMES`); :func:`standard_split`
turns it into named datasets.
"""
from __future__ import annotations

import numpy as np

from dmlx.data.base import Dataset

# Codes of the per-example ``"split"`` attribute written by the loaders.
SPLIT_NAMES = ("train", "test", "val", "query", "gallery")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


def _index(mask: np.ndarray) -> np.ndarray:
  return np.flatnonzero(mask).astype(np.int64)


def zero_shot_split(ds: Dataset, num_train_classes: int | None = None,
                    fraction: float = 0.5) -> tuple[Dataset, Dataset]:
  """Splits by class: the first ``num_train_classes`` class ids train, the
  rest test, each relabelled 0..C-1 (Song et al. 2016, Sec. 5: CUB-200-2011
  100/100, Cars196 98/98).

  Args:
    ds: the full dataset, classes in their official order.
    num_train_classes: number of training classes; if None,
      ``round(fraction * ds.num_classes)``.
    fraction: share of classes used for training when ``num_train_classes``
      is None.

  Returns:
    ``(train, test)`` datasets with disjoint classes.
  """
  if num_train_classes is None:
    if not 0.0 < fraction < 1.0:
      raise ValueError(f"fraction must be in (0, 1), got {fraction!r}.")
    num_train_classes = int(round(fraction * ds.num_classes))
  if not 0 < num_train_classes < ds.num_classes:
    raise ValueError(
        f"num_train_classes must be in [1, {ds.num_classes - 1}] for "
        f"{ds.num_classes} classes, got {num_train_classes!r}.")
  train = ds.labels < num_train_classes
  return (ds.subset(_index(train), name=f"{ds.name}/train"),
          ds.subset(_index(~train), name=f"{ds.name}/test"))


def split_by_attribute(ds: Dataset, attr: str,
                       train_values) -> tuple[Dataset, Dataset]:
  """Splits by a per-example attribute, e.g. Omniglot's ``"alphabet"``: the
  examples whose attribute is in ``train_values`` train, the rest test (Lake
  et al. 2015 background / evaluation alphabets). Both sides are relabelled
  0..C-1.

  Raises:
    ValueError: unknown attribute, or a value of ``train_values`` that no
      example has, or a split that would leave one side empty.
  """
  if attr not in ds.attributes:
    raise ValueError(f"Dataset {ds.name!r} has no attribute {attr!r}; it has "
                     f"{sorted(ds.attributes)}.")
  values = np.asarray(ds.attributes[attr])
  train_values = np.atleast_1d(np.asarray(train_values))
  missing = sorted(set(train_values.tolist()) - set(np.unique(values).tolist()))
  if missing:
    raise ValueError(f"train_values {missing} do not occur in attribute "
                     f"{attr!r} (values {np.unique(values).tolist()}).")
  train = np.isin(values, train_values)
  if train.all():
    raise ValueError(f"train_values {train_values.tolist()} cover every "
                     f"example of attribute {attr!r}; nothing is left to test.")
  return (ds.subset(_index(train), name=f"{ds.name}/train"),
          ds.subset(_index(~train), name=f"{ds.name}/test"))


def classification_split(ds: Dataset, train_fraction: float = 0.75,
                         val_fraction: float = 0.0,
                         seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
  """Per-class stratified split for the classification protocol (Meyer et
  al. 2018, Sec. 3.2): of each class's ``n`` examples,
  ``round(train_fraction * n)`` train, ``round(val_fraction * n)`` validate,
  the rest test. Labels keep their ids in all three parts (same classes).

  Returns:
    ``(train, val, test)``; ``val`` has no examples when ``val_fraction`` is 0.
  """
  if not 0.0 < train_fraction <= 1.0:
    raise ValueError(
        f"train_fraction must be in (0, 1], got {train_fraction!r}.")
  if not 0.0 <= val_fraction < 1.0 or train_fraction + val_fraction > 1.0:
    raise ValueError(
        f"val_fraction must be in [0, 1 - train_fraction], got "
        f"{val_fraction!r} with train_fraction {train_fraction!r}.")
  rng = np.random.default_rng(seed)
  part = np.full(len(ds), 2, np.int8)  # 0 train, 1 val, 2 test.
  for c in range(ds.num_classes):
    members = np.flatnonzero(ds.labels == c)
    rng.shuffle(members)
    n_train = min(len(members), int(round(train_fraction * len(members))))
    n_val = min(len(members) - n_train,
                int(round(val_fraction * len(members))))
    part[members[:n_train]] = 0
    part[members[n_train:n_train + n_val]] = 1
  return tuple(ds.subset(_index(part == p), relabel=False,
                         name=f"{ds.name}/{n}")
               for p, n in enumerate(("train", "val", "test")))  # type: ignore


def validation_split_of_classes(
    train_ds: Dataset, num_val_classes: int | None = None,
    fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
  """Holds out randomly chosen training classes as a zero-shot validation set
  for choosing hyper-parameters without the test classes (the practice
  Musgrave et al. 2020, "A Metric Learning Reality Check", Sec. 4, asks for).

  Args:
    train_ds: the training part of a zero-shot split.
    num_val_classes: classes to hold out; if None,
      ``max(1, round(fraction * num_classes))``.
    fraction: share of classes held out when ``num_val_classes`` is None.
    seed: seed of the class choice.

  Returns:
    ``(train, val)`` with disjoint classes, each relabelled 0..C-1.
  """
  c = train_ds.num_classes
  if num_val_classes is None:
    if not 0.0 < fraction < 1.0:
      raise ValueError(f"fraction must be in (0, 1), got {fraction!r}.")
    num_val_classes = max(1, int(round(fraction * c)))
  if not 0 < num_val_classes < c:
    raise ValueError(f"num_val_classes must be in [1, {c - 1}] for {c} "
                     f"classes, got {num_val_classes!r}.")
  val_classes = np.random.default_rng(seed).choice(c, num_val_classes,
                                                   replace=False)
  val = np.isin(train_ds.labels, val_classes)
  return (train_ds.subset(_index(~val), name=f"{train_ds.name}/train"),
          train_ds.subset(_index(val), name=f"{train_ds.name}/val"))


def standard_split(ds: Dataset, attr: str = "split") -> dict[str, Dataset]:
  """Returns the dataset's official split recorded by its loader in the
  attribute ``attr`` (codes :data:`SPLIT_NAMES`), e.g. SOP's 11,318 / 11,316
  train / test classes (Song et al. 2016) or In-Shop's train / query /
  gallery (Liu et al. 2016, "DeepFashion"; Roth et al. 2019, "MIC", Sec. 4).

  Parts that share classes share one renumbering (query and gallery; the
  train / val / test of a classification split keep common ids); parts whose
  classes are disjoint from all others are renumbered 0..C-1 on their own.
  """
  if attr not in ds.attributes:
    raise ValueError(f"Dataset {ds.name!r} has no split attribute {attr!r}; "
                     f"it has {sorted(ds.attributes)}.")
  codes = np.asarray(ds.attributes[attr])
  present = [int(c) for c in np.unique(codes)]
  bad = [c for c in present if not 0 <= c < len(SPLIT_NAMES)]
  if bad:
    raise ValueError(f"Attribute {attr!r} has split codes {bad} outside "
                     f"0..{len(SPLIT_NAMES) - 1} {SPLIT_NAMES}.")
  classes = {c: set(np.unique(ds.labels[codes == c]).tolist()) for c in present}
  # Union-find of the parts over shared classes.
  group = {c: c for c in present}

  def root(c):
    while group[c] != c:
      c = group[c]
    return c

  for i, a in enumerate(present):
    for b in present[i + 1:]:
      if classes[a] & classes[b]:
        group[root(b)] = root(a)
  out = {}
  for c in present:
    members = [p for p in present if root(p) == root(c)]
    shared = sorted(set().union(*(classes[p] for p in members)))
    remap = np.full(ds.num_classes, -1, np.int32)
    remap[shared] = np.arange(len(shared), dtype=np.int32)
    part = ds.subset(_index(codes == c), relabel=False,
                     name=f"{ds.name}/{SPLIT_NAMES[c]}")
    out[SPLIT_NAMES[c]] = Dataset(
        images=part.images, labels=remap[part.labels],
        class_names=tuple(ds.class_names[k] for k in shared),
        attributes=part.attributes, name=part.name)
  return out
