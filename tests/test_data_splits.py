"""Tests of dmlx.data.splits against plain-loop references."""
from __future__ import annotations

import numpy as np
import pytest

from dmlx.data import base
from dmlx.data import splits


def make(labels, attributes=None, split=None):
  """A dataset whose image k holds the value k (mod 256) so subsets can be
  traced back to the original examples."""
  labels = np.asarray(labels)
  n = len(labels)
  images = (np.arange(n) % 256).astype(np.uint8)[:, None, None, None]
  images = np.broadcast_to(images, (n, 2, 2, 1)).copy()
  attributes = dict(attributes or {})
  if split is not None:
    attributes["split"] = np.asarray(split)
  return base.make_dataset(images, labels,
                           tuple(f"c{c}" for c in range(labels.max() + 1)),
                           attributes, name="toy")


def origin(ds):
  return ds.images[:, 0, 0, 0].astype(int)


def test_zero_shot_split_first_classes_train():
  labels = [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
  ds = make(labels)
  train, test = splits.zero_shot_split(ds)  # 6 classes -> 3 / 3.
  ref_train = [k for k, y in enumerate(labels) if y < 3]
  ref_test = [k for k, y in enumerate(labels) if y >= 3]
  np.testing.assert_array_equal(origin(train), ref_train)
  np.testing.assert_array_equal(origin(test), ref_test)
  np.testing.assert_array_equal(test.labels, [labels[k] - 3 for k in ref_test])
  assert train.class_names == ("c0", "c1", "c2")
  assert test.class_names == ("c3", "c4", "c5")
  assert train.name == "toy/train"
  train, test = splits.zero_shot_split(ds, num_train_classes=5)
  assert (train.num_classes, test.num_classes) == (5, 1)
  with pytest.raises(ValueError, match="num_train_classes"):
    splits.zero_shot_split(ds, num_train_classes=6)
  with pytest.raises(ValueError, match="fraction"):
    splits.zero_shot_split(ds, fraction=1.0)


def test_split_by_attribute():
  labels = np.arange(8)
  alphabet = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  ds = make(labels, {"alphabet": alphabet, "drawer": labels % 2})
  train, test = splits.split_by_attribute(ds, "alphabet", [3, 1])
  np.testing.assert_array_equal(origin(train), [2, 3, 6, 7])
  np.testing.assert_array_equal(origin(test), [0, 1, 4, 5])
  np.testing.assert_array_equal(train.labels, [0, 1, 2, 3])
  np.testing.assert_array_equal(train.attributes["alphabet"], [1, 1, 3, 3])
  np.testing.assert_array_equal(test.attributes["drawer"], [0, 1, 0, 1])
  with pytest.raises(ValueError, match="'script'"):
    splits.split_by_attribute(ds, "script", [0])
  with pytest.raises(ValueError, match=r"\[7\]"):
    splits.split_by_attribute(ds, "alphabet", [0, 7])
  with pytest.raises(ValueError, match="nothing is left"):
    splits.split_by_attribute(ds, "alphabet", [0, 1, 2, 3])


@pytest.mark.parametrize("train_fraction,val_fraction", [(0.75, 0.0),
                                                         (0.5, 0.25)])
def test_classification_split_is_stratified(train_fraction, val_fraction):
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(5), [4, 8, 12, 3, 20])
  rng.shuffle(labels)
  ds = make(labels)
  train, val, test = splits.classification_split(
      ds, train_fraction, val_fraction, seed=3)
  seen = np.concatenate([origin(train), origin(val), origin(test)])
  np.testing.assert_array_equal(np.sort(seen), np.arange(len(labels)))
  for c in range(5):
    n = int((labels == c).sum())
    n_train = int(round(train_fraction * n))
    n_val = min(n - n_train, int(round(val_fraction * n)))
    assert (train.labels == c).sum() == n_train
    assert (val.labels == c).sum() == n_val
    assert (test.labels == c).sum() == n - n_train - n_val
  # Labels keep their ids: each example's label is its original one.
  for part in (train, val, test):
    np.testing.assert_array_equal(part.labels, labels[origin(part)])
    assert part.class_names == ds.class_names
  if val_fraction == 0.0:
    assert len(val) == 0 and val.images.shape[1:] == ds.images.shape[1:]
  again = splits.classification_split(ds, train_fraction, val_fraction, seed=3)
  np.testing.assert_array_equal(origin(again[0]), origin(train))
  other = splits.classification_split(ds, train_fraction, val_fraction, seed=4)
  assert not np.array_equal(origin(other[0]), origin(train))
  with pytest.raises(ValueError, match="val_fraction"):
    splits.classification_split(ds, 0.8, 0.3)
  with pytest.raises(ValueError, match="train_fraction"):
    splits.classification_split(ds, 0.0)


def test_validation_split_of_classes():
  labels = np.repeat(np.arange(10), 3)
  ds = make(labels)
  train, val = splits.validation_split_of_classes(ds, fraction=0.3, seed=0)
  assert (train.num_classes, val.num_classes) == (7, 3)
  held = {ds.class_names[labels[k]] for k in origin(val)}
  kept = {ds.class_names[labels[k]] for k in origin(train)}
  assert not held & kept and len(held | kept) == 10
  assert set(val.class_names) == held
  for part in (train, val):  # Relabelled 0..C-1 in old-id order.
    np.testing.assert_array_equal(
        [part.class_names[y] for y in part.labels],
        [ds.class_names[labels[k]] for k in origin(part)])
  _, val2 = splits.validation_split_of_classes(ds, num_val_classes=2, seed=0)
  assert val2.num_classes == 2
  _, val_b = splits.validation_split_of_classes(ds, fraction=0.3, seed=1)
  _, val_a = splits.validation_split_of_classes(ds, fraction=0.3, seed=0)
  assert val_a.class_names == val.class_names
  with pytest.raises(ValueError, match="num_val_classes"):
    splits.validation_split_of_classes(ds, num_val_classes=10)
  assert val_b.num_classes == 3


def test_standard_split_groups_parts_sharing_classes():
  codes = splits.SPLIT_CODES
  labels = [0, 0, 1, 2, 2, 3, 3, 4]
  part = ["train", "train", "train", "query", "gallery", "query", "gallery",
          "gallery"]
  ds = make(labels, split=[codes[p] for p in part])
  out = splits.standard_split(ds)
  assert set(out) == {"train", "query", "gallery"}
  np.testing.assert_array_equal(origin(out["train"]), [0, 1, 2])
  np.testing.assert_array_equal(out["train"].labels, [0, 0, 1])
  # Query and gallery share classes 2, 3 (and gallery alone has 4): one
  # renumbering c2 -> 0, c3 -> 1, c4 -> 2 for both.
  np.testing.assert_array_equal(out["query"].labels, [0, 1])
  np.testing.assert_array_equal(out["gallery"].labels, [0, 1, 2])
  assert out["query"].class_names == out["gallery"].class_names == (
      "c2", "c3", "c4")
  assert out["query"].name == "toy/query"
  with pytest.raises(ValueError, match="no split attribute"):
    splits.standard_split(make(labels))
  with pytest.raises(ValueError, match="codes"):
    splits.standard_split(make(labels, split=[9] * 8))
