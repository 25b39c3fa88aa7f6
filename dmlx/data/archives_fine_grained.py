"""Loaders of the fine-grained DML benchmarks from their original archives:
CUB-200-2011, Cars196, Stanford Online Products and In-Shop Clothes (see
``dmlx.data.archives`` for the split each records)."""
from __future__ import annotations

import numpy as np

from dmlx.data import base
from dmlx.data import images as images_lib
from dmlx.data.archives_common import (PathLike, TEST, TRAIN, _Source, _decode,
                                       _ints, _key, _loadmat, _locate,
                                       _options, _strings, _table)
from dmlx.data.splits import SPLIT_CODES


def load_cub200(data_dir: PathLike, *, image_size, channels: int = 3,
                resize: str = "shorter_crop", crop_to_bbox: bool = False,
                cache_dir: PathLike | None = None,
                num_workers: int | None = None) -> base.Dataset:
  """CUB-200-2011 (Wah et al. 2011) from ``CUB_200_2011/{images.txt,
  image_class_labels.txt, classes.txt, images/}``; ``"split"``: first half of
  the classes train, the rest test (Song et al. 2016, Sec. 5); optional
  ``train_test_split.txt`` becomes attribute ``"official_split"`` and
  ``bounding_boxes.txt`` is used with ``crop_to_bbox``."""
  src = _locate(data_dir, ["image_class_labels.txt"], "CUB-200-2011",
                "CUB_200_2011/images.txt, image_class_labels.txt, classes.txt "
                "and images/<class>/<file>.jpg (CUB_200_2011.tgz)",
                "https://www.vision.caltech.edu/datasets/cub_200_2011/")
  opts = _options(image_size, channels, resize, crop_to_bbox=crop_to_bbox)

  def build():
    paths = _table(src, "images.txt")
    labels = _table(src, "image_class_labels.txt")
    classes = sorted((int(i), n) for i, n in
                     _table(src, "classes.txt").items())
    class_index = {i: k for k, (i, _) in enumerate(classes)}
    ids = sorted(paths, key=int)
    y = np.array([class_index[int(labels[i])] for i in ids], np.int64)
    attributes = {"split": np.where(y < len(classes) // 2, TRAIN, TEST)}
    if src.exists("train_test_split.txt"):
      is_train = _table(src, "train_test_split.txt")
      attributes["official_split"] = np.array(
          [TRAIN if is_train[i] == "1" else TEST for i in ids])
    boxes = None
    if crop_to_bbox:
      bb = {r[0]: [float(v) for v in r[1:5]] for r in
            (line.split() for line in src.text("bounding_boxes.txt"))}
      boxes = [(x, y0, x + w, y0 + h) for x, y0, w, h in (bb[i] for i in ids)]
    x = _decode(src, ["images/" + paths[i] for i in ids], image_size,
                channels=channels, resize=resize, num_workers=num_workers,
                boxes=boxes)
    return base.make_dataset(x, y, tuple(n for _, n in classes), attributes,
                             name="cub200")

  return images_lib.cached(
      cache_dir, _key("cub200", src, "image_class_labels.txt", opts), build)


def load_cars196(data_dir: PathLike, *, image_size, channels: int = 3,
                 resize: str = "shorter_crop", crop_to_bbox: bool = False,
                 cache_dir: PathLike | None = None,
                 num_workers: int | None = None) -> base.Dataset:
  """Stanford Cars196 (Krause et al. 2013) from ``cars_annos.mat`` and
  ``car_ims/``, the layout the DML papers use; ``"split"``: classes 1-98
  train, 99-196 test (Song et al. 2016); the .mat's ``test`` flag becomes
  ``"official_split"``. Needs scipy."""
  src = _locate(data_dir, ["cars_annos.mat"], "Cars196",
                "cars_annos.mat next to car_ims/<nnnnnn>.jpg (car_ims.tgz)",
                "https://ai.stanford.edu/~jkrause/cars/car_dataset.html "
                "(mirrors: Kaggle 'stanford-cars-dataset')")
  opts = _options(image_size, channels, resize, crop_to_bbox=crop_to_bbox)

  def build():
    mat = _loadmat(src, "cars_annos.mat")
    ann = np.atleast_1d(mat["annotations"])
    paths = _strings(ann["relative_im_path"])
    if paths and not src.exists(paths[0]):
      raise FileNotFoundError(
          f"Cars196 images not found: {paths[0]!r} is not in {src}; unpack "
          f"car_ims.tgz next to cars_annos.mat.")
    class_names = _strings(mat["class_names"])
    y = _ints(ann["class"]) - 1
    attributes = {"split": np.where(y < len(class_names) // 2, TRAIN, TEST),
                  "official_split": np.where(_ints(ann["test"]) == 1, TEST,
                                             TRAIN)}
    boxes = None
    if crop_to_bbox:
      boxes = list(zip(_ints(ann["bbox_x1"]) - 1, _ints(ann["bbox_y1"]) - 1,
                       _ints(ann["bbox_x2"]), _ints(ann["bbox_y2"])))
    x = _decode(src, paths, image_size, channels=channels, resize=resize,
                num_workers=num_workers, boxes=boxes)
    return base.make_dataset(x, y, tuple(class_names), attributes,
                             name="cars196")

  return images_lib.cached(
      cache_dir, _key("cars196", src, "cars_annos.mat", opts), build)


def load_sop(data_dir: PathLike, *, image_size, channels: int = 3,
             resize: str = "shorter_crop", cache_dir: PathLike | None = None,
             num_workers: int | None = None) -> base.Dataset:
  """Stanford Online Products (Song et al. 2016) from
  ``Stanford_Online_Products/Ebay_{train,test}.txt`` (``image_id class_id
  super_class_id path``); ``"split"`` from the two files (11,318 / 11,316
  classes); ``super_class_id`` kept as attribute ``"super_class"``."""
  src = _locate(data_dir, ["Ebay_train.txt"], "Stanford Online Products",
                "Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt and "
                "<category>_final/<image>.JPG (Stanford_Online_Products.zip)",
                "https://cvgl.stanford.edu/projects/lifted_struct/")
  opts = _options(image_size, channels, resize)

  def build():
    rows = []
    for fname, split in (("Ebay_train.txt", TRAIN), ("Ebay_test.txt", TEST)):
      for line in src.text(fname)[1:]:  # First line is the header.
        _, class_id, super_id, path = line.split()
        rows.append((int(class_id), int(super_id), path, split))
    num = max(r[0] for r in rows)
    names = [str(c) for c in range(1, num + 1)]
    for class_id, _, path, _ in rows:
      product = path.split("/")[-1].rsplit("_", 1)[0]
      category = path.split("/")[0].removesuffix("_final")
      names[class_id - 1] = f"{category}/{product}"
    x = _decode(src, [r[2] for r in rows], image_size, channels=channels,
                resize=resize, num_workers=num_workers)
    return base.make_dataset(
        x, np.array([r[0] - 1 for r in rows]), tuple(names),
        {"split": np.array([r[3] for r in rows]),
         "super_class": np.array([r[1] - 1 for r in rows])}, name="sop")

  return images_lib.cached(
      cache_dir, _key("sop", src, "Ebay_train.txt", opts), build)


def _inshop_images(src: _Source, first: str) -> _Source:
  candidates = [src, src.sub("Img/")]
  if not src.is_zip:
    for rel in ("img.zip", "Img/img.zip"):
      if (src.location / rel).is_file():
        candidates.append(_Source(src.location / rel))
  for cand in candidates:
    if cand.exists(first):
      return cand
  raise FileNotFoundError(
      f"In-Shop images not found: {first!r} is in none of "
      f"{[str(c) for c in candidates]}; unpack Img/img.zip next to "
      f"list_eval_partition.txt (or leave img.zip there).")


def load_inshop(data_dir: PathLike, *, image_size, channels: int = 3,
                resize: str = "shorter_crop", cache_dir: PathLike | None = None,
                num_workers: int | None = None) -> base.Dataset:
  """DeepFashion In-Shop Clothes Retrieval (Liu et al. 2016) from
  ``list_eval_partition.txt`` (or ``Eval/...``) and ``img/...``; ``"split"``:
  train / query / gallery (3,997 train items; 3,985 test items in 14,218
  query and 12,612 gallery images, Roth et al. 2019 Sec. 4); attribute
  ``"category"`` indexes the sorted ``<gender>/<category>`` folders."""
  src = _locate(data_dir, ["list_eval_partition.txt",
                           "Eval/list_eval_partition.txt"],
                "In-Shop Clothes", "list_eval_partition.txt (or "
                "Eval/list_eval_partition.txt) and img/<gender>/<category>/"
                "<item>/<file>.jpg (Img/img.zip)",
                "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/"
                "InShopRetrieval.html")
  listing = ("list_eval_partition.txt" if src.exists("list_eval_partition.txt")
             else "Eval/list_eval_partition.txt")
  opts = _options(image_size, channels, resize)

  def build():
    rows = [line.split() for line in src.text(listing)]
    rows = [r for r in rows if len(r) == 3 and r[2] in SPLIT_CODES]
    if not rows:
      raise ValueError(f"{listing} in {src} lists no images.")
    items = sorted({r[1] for r in rows})
    item_index = {it: k for k, it in enumerate(items)}
    categories = sorted({"/".join(r[0].split("/")[1:3]) for r in rows})
    cat_index = {c: k for k, c in enumerate(categories)}
    img_src = _inshop_images(src, rows[0][0])
    x = _decode(img_src, [r[0] for r in rows], image_size, channels=channels,
                resize=resize, num_workers=num_workers)
    return base.make_dataset(
        x, np.array([item_index[r[1]] for r in rows]), tuple(items),
        {"split": np.array([SPLIT_CODES[r[2]] for r in rows]),
         "category": np.array([cat_index["/".join(r[0].split("/")[1:3])]
                               for r in rows])}, name="inshop")

  return images_lib.cached(cache_dir, _key("inshop", src, listing, opts),
                           build)
