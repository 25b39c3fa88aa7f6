"""Loaders for the DML datasets in the layout of their original archives.

Each ``load_<name>(data_dir, *, image_size, ...)`` reads the dataset either
unpacked under ``data_dir`` (or one sub-folder of it) or straight from a
``.zip`` there, decodes and resizes every image (``dmlx.data.images``) and
returns ONE :class:`~dmlx.data.base.Dataset` holding all images, classes in
their official order, with the papers' standard split recorded per example
in the integer attribute ``"split"`` (codes ``dmlx.data.splits.SPLIT_NAMES``):

=================  ===========================================================
cub200             first 100 classes train, last 100 test (Song et al. 2016)
cars196            classes 1-98 train, 99-196 test
sop                Ebay_train.txt (11,318 classes) / Ebay_test.txt (11,316)
inshop             train / query / gallery (list_eval_partition.txt)
flowers102         official train / val / test (setid.mat)
pets               trainval ("train") / test
dogs               official train / test lists
omniglot           images_background* train, images_evaluation test
tinyimagenet       train, and val when val/val_annotations.txt exists
=================  ===========================================================

``dmlx.data.splits.standard_split(ds)`` turns that attribute into named
datasets; ``zero_shot_split`` / ``split_by_attribute`` give other splits.
Every loader takes ``channels`` (3 RGB, 1 grey), ``resize`` ('shorter_crop' or
'square'), ``cache_dir`` (``.npz`` cache, keyed by source, size and options)
and ``num_workers`` (decode threads).
"""
from __future__ import annotations

import io
import os
import pathlib
import re
import zipfile
from typing import Any, Sequence

import numpy as np

from dmlx.data import base
from dmlx.data import images as images_lib
from dmlx.data.splits import SPLIT_CODES

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
OMNIGLOT_ARCHIVES = ("images_background", "images_evaluation",
                     "images_background_small1", "images_background_small2")
TRAIN, TEST, VAL = SPLIT_CODES["train"], SPLIT_CODES["test"], SPLIT_CODES["val"]
PathLike = str | os.PathLike
_Source = images_lib.FileSource


def _missing(dataset: str, data_dir: PathLike, expected: str, url: str):
  return FileNotFoundError(
      f"{dataset} not found at '{data_dir}'. Expected {expected}, unpacked in "
      f"that folder (or one sub-folder of it) or inside a .zip there. "
      f"Get it from {url}.")


def _locate(data_dir: PathLike, markers: Sequence[str], dataset: str,
            expected: str, url: str) -> _Source:
  src = images_lib.find_root(data_dir, markers)
  if src is None:
    raise _missing(dataset, data_dir, expected, url)
  return src


def _decode(src: _Source, paths: Sequence[str], image_size, *, channels: int,
            resize: str, num_workers: int | None, invert: bool = False,
            boxes=None) -> np.ndarray:
  return images_lib.decode_many(paths, src.read, image_size, channels=channels,
                                resize=resize, invert=invert, boxes=boxes,
                                num_workers=num_workers)


def _options(image_size, channels, resize, **extra) -> dict[str, Any]:
  """Checks the decoding options (ValueError) and returns them for the cache
  key."""
  images_lib.check_options(channels, resize)
  return {"image_size": images_lib.image_shape(image_size),
          "channels": channels, "resize": resize, **extra}


def _loadmat(src: _Source, rel: str) -> dict[str, Any]:
  try:
    import scipy.io  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {rel} needs scipy: pip install scipy") from e
  return scipy.io.loadmat(io.BytesIO(src.read(rel)), squeeze_me=True)


def _ints(values) -> np.ndarray:
  return np.atleast_1d(np.asarray(values)).astype(np.int64).ravel()


def _strings(values) -> list[str]:
  return [str(v) for v in np.atleast_1d(np.asarray(values, dtype=object))]


def _key(loader: str, src: _Source, marker: str,
         opts: dict[str, Any]) -> dict[str, Any]:
  """The cache key: loader, source identity and decoding options."""
  return {"loader": loader, **src.identity(marker), **opts}


def _table(src: _Source, rel: str) -> dict[str, str]:
  """``first column -> rest of the line`` of an index file like images.txt."""
  return dict(line.split(maxsplit=1) for line in src.text(rel))


# ----------------------------------------------------------- fine-grained DML


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


# ------------------------------------------------------ classification sets


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


# ------------------------------------------------- Omniglot, Tiny ImageNet


_OMNIGLOT_FILE = re.compile(r"(?:^|/)([^/]+)/character(\d+)/(\d+)_(\d+)\.png$")


def _omniglot_sources(data_dir: PathLike) -> dict[str, _Source]:
  path = pathlib.Path(data_dir).expanduser()
  if path.is_file() and zipfile.is_zipfile(path):
    return {path.stem: _Source(path)}
  found = {}
  if path.is_dir():
    for name in OMNIGLOT_ARCHIVES:
      if (path / name).is_dir():
        found[name] = _Source(path / name)
      elif (path / f"{name}.zip").is_file():
        found[name] = _Source(path / f"{name}.zip")
    if not found and any(path.glob("*/character*/*.png")):
      found[path.name] = _Source(path)
  return found


def load_omniglot(data_dir: PathLike, *, image_size,
                  archives: Sequence[str] | None = None,
                  channels: int = 1, invert: bool = True,
                  resize: str = "square", cache_dir: PathLike | None = None,
                  num_workers: int | None = None) -> base.Dataset:
  """Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) read from the official
  zips (``images_background.zip``, ``images_evaluation.zip``,
  ``images_background_small{1,2}.zip``) or their unpacked folders, layout
  ``<archive>/<Alphabet>/character<NN>/<ID>_<drawer>.png``.

  A class is one (alphabet, character); classes are ordered background
  first, then by alphabet and character number. Strokes are bright on black
  (``invert``). Attributes: ``"alphabet"`` (index into the sorted alphabet
  names; class names are ``"<Alphabet>/character<NN>"``), ``"drawer"``
  (0..19) and ``"split"`` (background train, evaluation test).

  Args:
    data_dir: a zip, a folder holding the zips / unpacked archive folders,
      or one unpacked archive folder.
    archives: archive names to read (``"images_background"`` or short
      ``"background"``, ``"evaluation"``, ``"small1"``, ``"small2"``); None
      reads all found, skipping the small subsets when the full background
      set is there (they are subsets of it).
  """
  sources = _omniglot_sources(data_dir)
  if not sources:
    raise _missing("Omniglot", data_dir, "images_background.zip, "
                   "images_evaluation.zip or images_background_small{1,2}.zip "
                   "(or their unpacked folders <Alphabet>/character<NN>/*.png)",
                   "https://github.com/brendenlake/omniglot/tree/master/python")
  if archives is None:
    if "images_background" in sources:
      sources = {k: v for k, v in sources.items() if "_small" not in k}
  else:
    wanted = [a if a.startswith("images_") else
              ("images_background_" + a if a.startswith("small") else
               "images_" + a) for a in archives]
    absent = [a for a in wanted if a not in sources]
    if absent:
      raise FileNotFoundError(f"Omniglot archives {absent} not found in "
                              f"'{data_dir}' (found {sorted(sources)}).")
    sources = {a: sources[a] for a in wanted}
  opts = _options(image_size, channels, resize, invert=invert,
                  archives=sorted(sources))

  def build():
    records = {}
    for archive, src in sources.items():
      split = TEST if "evaluation" in archive else TRAIN
      for rel in src.files():
        m = _OMNIGLOT_FILE.search(rel)
        if m:
          alphabet, char, _, drawer = m.groups()
          key = (alphabet, int(char), rel.rsplit("/", 1)[-1])
          records.setdefault(key, (split, int(drawer) - 1, src, rel))
    if not records:
      raise FileNotFoundError(f"No <Alphabet>/character<NN>/<ID>_<drawer>.png "
                              f"files in {list(sources.values())}.")
    order = sorted(records, key=lambda k: (records[k][0], k))
    classes = sorted({(records[k][0], k[0], k[1]) for k in order})
    class_index = {c: i for i, c in enumerate(classes)}
    alphabets = sorted({k[0] for k in order})
    items = [(records[k][2], records[k][3]) for k in order]
    x = images_lib.decode_many(items, lambda it: it[0].read(it[1]), image_size,
                               channels=channels, resize=resize, invert=invert,
                               num_workers=num_workers)
    return base.make_dataset(
        x, np.array([class_index[(records[k][0], k[0], k[1])] for k in order]),
        tuple(f"{a}/character{c:02d}" for _, a, c in classes),
        {"alphabet": np.array([alphabets.index(k[0]) for k in order]),
         "drawer": np.array([records[k][1] for k in order]),
         "split": np.array([records[k][0] for k in order])}, name="omniglot")

  key = {"loader": "omniglot", **opts,
         "sources": [s.identity("") for s in sources.values()]}
  return images_lib.cached(cache_dir, key, build)


def load_tinyimagenet(data_dir: PathLike, *, image_size,
                      include_val: bool = True, channels: int = 3,
                      resize: str = "shorter_crop",
                      cache_dir: PathLike | None = None,
                      num_workers: int | None = None) -> base.Dataset:
  """Tiny ImageNet (CS231n; 64x64 ImageNet classes) from
  ``tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG}``
  and, with ``include_val``, ``val/val_annotations.txt`` + ``val/images/``,
  from the zip or an unpacked folder. Classes follow wnids.txt and are named
  by the first words.txt synonym; ``"split"``: train, or val."""
  src = _locate(data_dir, ["wnids.txt"], "Tiny ImageNet",
                "tiny-imagenet-200/wnids.txt, words.txt and "
                "train/<wnid>/images/*.JPEG (tiny-imagenet-200.zip)",
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip")
  opts = _options(image_size, channels, resize, include_val=include_val)

  def build():
    wnids = [line.split()[0] for line in src.text("wnids.txt")]
    index = {w: k for k, w in enumerate(wnids)}
    words = {}
    if src.exists("words.txt"):
      for line in src.text("words.txt"):
        wnid, _, text = line.partition("\t")
        if wnid in index:
          words[wnid] = text.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    names = [n if names.count(n) == 1 else f"{n} ({w})"
             for n, w in zip(names, wnids)]
    pattern = re.compile(r"^train/([^/]+)/images/[^/]+\.jpe?g$", re.I)
    rows = []
    for rel in src.files():
      m = pattern.match(rel)
      if m and m.group(1) in index:
        rows.append((rel, index[m.group(1)], TRAIN))
    if include_val and src.exists("val/val_annotations.txt"):
      for line in src.text("val/val_annotations.txt"):
        fname, wnid = line.split()[:2]
        if wnid in index:
          rows.append((f"val/images/{fname}", index[wnid], VAL))
    if not rows:
      raise FileNotFoundError(f"No train/<wnid>/images/*.JPEG for the wnids "
                              f"of wnids.txt in {src}.")
    x = _decode(src, [r[0] for r in rows], image_size, channels=channels,
                resize=resize, num_workers=num_workers)
    return base.make_dataset(x, np.array([r[1] for r in rows]), tuple(names),
                             {"split": np.array([r[2] for r in rows])},
                             name="tinyimagenet")

  return images_lib.cached(
      cache_dir, _key("tinyimagenet", src, "wnids.txt", opts), build)


def load_image_folder(root: PathLike, *, image_size, channels: int = 3,
                      resize: str = "shorter_crop",
                      extensions: Sequence[str] = IMAGE_EXTENSIONS,
                      cache_dir: PathLike | None = None,
                      num_workers: int | None = None,
                      name: str = "folder") -> base.Dataset:
  """Generic class-per-folder dataset ``<root>/<class>/**/*.{jpg,png,...}``
  from a folder or a zip (a single top folder wrapping the class folders in
  the zip is skipped). Classes are sorted by folder name."""
  path = pathlib.Path(root).expanduser()
  if not (path.is_dir() or (path.is_file() and zipfile.is_zipfile(path))):
    raise FileNotFoundError(f"Image folder '{root}' not found: expected a "
                            f"folder <root>/<class>/<image>.jpg or a zip of "
                            f"one.")
  src = _Source(path)
  exts = tuple(e.lower() for e in extensions)
  opts = _options(image_size, channels, resize, extensions=sorted(exts))

  def build():
    files = [f for f in src.files() if f.lower().endswith(exts)]
    parts = [f.split("/") for f in files]
    if path.is_file():  # Strip folders that wrap the class folders in a zip.
      while parts and all(len(p) >= 3 for p in parts) and len(
          {p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    keep = [i for i, p in enumerate(parts) if len(p) >= 2]
    if not keep:
      raise FileNotFoundError(
          f"No images ({', '.join(exts)}) in class folders under '{root}'; "
          f"expected <root>/<class>/<image>.")
    classes = sorted({parts[i][0] for i in keep})
    index = {c: k for k, c in enumerate(classes)}
    x = _decode(src, [files[i] for i in keep], image_size, channels=channels,
                resize=resize, num_workers=num_workers)
    return base.make_dataset(x, np.array([index[parts[i][0]] for i in keep]),
                             tuple(classes), name=name)

  return images_lib.cached(cache_dir, _key(name, src, "", opts), build)
