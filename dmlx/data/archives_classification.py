"""Loaders of classification datasets used for DML from their original
archives: Oxford 102 Flowers, Oxford-IIIT Pet and Stanford Dogs (see
``dmlx.data.archives`` for the split each records)."""
from __future__ import annotations

import numpy as np

from dmlx.data import base
from dmlx.data import images as images_lib
from dmlx.data.archives_common import (PathLike, TEST, TRAIN, VAL, _decode,
                                       _ints, _key, _loadmat, _locate,
                                       _options, _strings)


def load_flowers102(data_dir: PathLike, *, image_size, channels: int = 3,
                    resize: str = "shorter_crop",
                    cache_dir: PathLike | None = None,
                    num_workers: int | None = None) -> base.Dataset:
  """Oxford 102 Flowers (Nilsback & Zisserman 2008) from ``jpg/``,
  ``imagelabels.mat`` and ``setid.mat``; ``"split"``: the official train /
  val / test (``trnid`` / ``valid`` / ``tstid``), the splits Meyer et al.
  2018 (Sec. 3.2) use. Classes are named ``class_001`` ... Needs scipy."""
  src = _locate(data_dir, ["imagelabels.mat"], "Oxford 102 Flowers",
                "jpg/image_NNNNN.jpg (102flowers.tgz), imagelabels.mat and "
                "setid.mat",
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/")
  opts = _options(image_size, channels, resize)

  def build():
    labels = _ints(_loadmat(src, "imagelabels.mat")["labels"])
    split = np.full(len(labels), TRAIN)
    if src.exists("setid.mat"):
      setid = _loadmat(src, "setid.mat")
      for key, code in (("trnid", TRAIN), ("valid", VAL), ("tstid", TEST)):
        split[_ints(setid[key]) - 1] = code
    x = _decode(src, [f"jpg/image_{i:05d}.jpg" for i in
                      range(1, len(labels) + 1)], image_size,
                channels=channels, resize=resize, num_workers=num_workers)
    num = int(labels.max())
    return base.make_dataset(
        x, labels - 1, tuple(f"class_{c:03d}" for c in range(1, num + 1)),
        {"split": split}, name="flowers102")

  return images_lib.cached(
      cache_dir, _key("flowers102", src, "imagelabels.mat", opts), build)


def load_pets(data_dir: PathLike, *, image_size, channels: int = 3,
              resize: str = "shorter_crop", cache_dir: PathLike | None = None,
              num_workers: int | None = None) -> base.Dataset:
  """Oxford-IIIT Pet (Parkhi et al. 2012) from ``images/`` and
  ``annotations/{trainval,test}.txt`` (or ``list.txt``); 37 breeds;
  ``"split"``: trainval as train, test as test; attribute ``"species"``
  (0 cat, 1 dog)."""
  src = _locate(data_dir, ["annotations/trainval.txt", "annotations/list.txt"],
                "Oxford-IIIT Pet", "images/<Breed>_<n>.jpg (images.tar.gz) and "
                "annotations/trainval.txt, test.txt or list.txt "
                "(annotations.tar.gz)",
                "https://www.robots.ox.ac.uk/~vgg/data/pets/")
  marker = ("annotations/trainval.txt" if src.exists("annotations/trainval.txt")
            else "annotations/list.txt")
  opts = _options(image_size, channels, resize)

  def build():
    files = [(marker, TRAIN)]
    if marker.endswith("trainval.txt"):
      files.append(("annotations/test.txt", TEST))
    rows = []
    for fname, split in files:
      if src.exists(fname):
        rows += [line.split()[:3] + [split] for line in src.text(fname)
                 if not line.startswith("#")]
    num = max(int(r[1]) for r in rows)
    names = [str(c) for c in range(1, num + 1)]
    for r in rows:
      names[int(r[1]) - 1] = r[0].rsplit("_", 1)[0]
    x = _decode(src, [f"images/{r[0]}.jpg" for r in rows], image_size,
                channels=channels, resize=resize, num_workers=num_workers)
    attributes = {"species": np.array([int(r[2]) - 1 for r in rows])}
    if marker.endswith("trainval.txt"):
      attributes["split"] = np.array([r[3] for r in rows])
    return base.make_dataset(x, np.array([int(r[1]) - 1 for r in rows]),
                             tuple(names), attributes, name="pets")

  return images_lib.cached(cache_dir, _key("pets", src, marker, opts), build)


def load_dogs(data_dir: PathLike, *, image_size, channels: int = 3,
              resize: str = "shorter_crop", cache_dir: PathLike | None = None,
              num_workers: int | None = None) -> base.Dataset:
  """Stanford Dogs (Khosla et al. 2011) from ``Images/<wnid>-<breed>/*.jpg``
  and ``lists/{train,test}_list.mat`` (or the .mat files at the root);
  ``"split"``: the official train / test lists. Needs scipy."""
  src = _locate(data_dir, ["lists/train_list.mat", "train_list.mat"],
                "Stanford Dogs", "Images/<wnid>-<breed>/<file>.jpg "
                "(images.tar) and lists/train_list.mat, test_list.mat "
                "(lists.tar)",
                "http://vision.stanford.edu/aditya86/ImageNetDogs/")
  lists = "lists/" if src.exists("lists/train_list.mat") else ""
  opts = _options(image_size, channels, resize)

  def build():
    paths, labels, split = [], [], []
    for fname, code in (("train_list.mat", TRAIN), ("test_list.mat", TEST)):
      if src.exists(lists + fname):
        mat = _loadmat(src, lists + fname)
        paths += _strings(mat["file_list"])
        labels += list(_ints(mat["labels"]) - 1)
        split += [code] * len(_ints(mat["labels"]))
    names = [str(c) for c in range(1, max(labels) + 2)]
    for p, y in zip(paths, labels):
      names[y] = p.split("/")[0].split("-", 1)[-1]
    x = _decode(src, ["Images/" + p for p in paths], image_size,
                channels=channels, resize=resize, num_workers=num_workers)
    return base.make_dataset(x, np.array(labels), tuple(names),
                             {"split": np.array(split)}, name="dogs")

  return images_lib.cached(
      cache_dir, _key("dogs", src, lists + "train_list.mat", opts), build)
