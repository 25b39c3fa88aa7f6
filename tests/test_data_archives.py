"""Tests of dmlx.data.archives / images / registry / tfds_loaders on tiny fake
archives written in each dataset's original layout, plus (skipped when
absent) the real Omniglot and Tiny ImageNet files in ../shared/data."""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import time
import zipfile

import numpy as np
import pytest

from PIL import Image

from dmlx.data import archives
from dmlx.data import images
from dmlx.data import registry
from dmlx.data import splits

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def colour(c: int, i: int) -> tuple[int, int, int]:
  """A distinct solid colour per (class, image) so tests can tell which file
  ended up where."""
  return (30 + 50 * c % 220, 30 + 40 * i % 220, 200 - 30 * (c % 5))


def write_image(path: pathlib.Path, rgb, size=(24, 16), fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
  Image.new("RGB", size, tuple(int(v) for v in rgb)).save(
      path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def zip_dir(folder: pathlib.Path, zip_path: pathlib.Path, arc_root=None):
  """Zips ``folder`` with entries ``<arc_root>/<relative path>``."""
  arc_root = folder.name if arc_root is None else arc_root
  with zipfile.ZipFile(zip_path, "w") as z:
    for p in sorted(folder.rglob("*")):
      rel = p.relative_to(folder).as_posix()
      z.write(p, f"{arc_root}/{rel}" if arc_root else rel)
  return zip_path


def mean_rgb(ds, k):
  return ds.images[k].reshape(-1, ds.images.shape[-1]).mean(0)


def assert_colour(ds, k, rgb, tol=8.0):
  np.testing.assert_allclose(mean_rgb(ds, k), rgb, atol=tol)


# ----------------------------------------------------------------- images.py


def test_decode_image_resize_modes_grey_and_invert():
  img = np.zeros((20, 40, 3), np.uint8)  # Wide: left red, right blue.
  img[:, :20, 0] = 255
  img[:, 20:, 2] = 255
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "PNG")
  data = buf.getvalue()
  square = images.decode_image(data, 8, resize="square")
  crop = images.decode_image(data, 8, resize="shorter_crop")
  assert square.shape == crop.shape == (8, 8, 3)
  # Square keeps both halves; the centre crop of a 16x8 resize keeps 4+4
  # columns, i.e. still half red and half blue but from the middle.
  assert square[:, 0, 0].min() > 200 and square[:, -1, 2].min() > 200
  assert crop[:, 0, 0].min() > 200 and crop[:, -1, 2].min() > 200
  tall = images.decode_image(data, (8, 4), resize="shorter_crop")
  assert tall.shape == (8, 4, 3)
  grey = images.decode_image(data, 8, channels=1)
  assert grey.shape == (8, 8, 1)
  inv = images.decode_image(data, 8, channels=1, invert=True)
  np.testing.assert_array_equal(inv, 255 - grey)
  # The bbox crop keeps only the blue half.
  blue = images.decode_image(data, 4, box=(20, 0, 40, 20))
  assert blue[..., 2].min() > 200 and blue[..., 0].max() < 30
  np.testing.assert_array_equal(
      images.resize_array(img, 8, resize="square"), square)


def test_decode_bad_options_and_bad_file():
  with pytest.raises(ValueError, match="resize"):
    images.decode_image(b"", 8, resize="stretch")
  with pytest.raises(ValueError, match="channels"):
    images.decode_image(b"", 8, channels=2)
  with pytest.raises(ValueError, match="image_size"):
    images.image_shape(0)
  with pytest.raises(ValueError, match="broken.jpg"):
    images.decode_many(["broken.jpg"], lambda _: b"not an image", 8)


def test_decode_many_threads_match_serial():
  blobs = []
  for i in range(80):
    buf = io.BytesIO()
    Image.new("RGB", (10 + i % 7, 12), colour(i, i)).save(buf, "PNG")
    blobs.append(buf.getvalue())
  serial = images.decode_many(list(range(80)), blobs.__getitem__, 6,
                              num_workers=1)
  threaded = images.decode_many(list(range(80)), blobs.__getitem__, 6,
                                num_workers=4)
  np.testing.assert_array_equal(serial, threaded)
  for i in range(80):
    np.testing.assert_allclose(serial[i].reshape(-1, 3).mean(0), colour(i, i),
                               atol=1)


# ---------------------------------------------------------------- CUB-200


def make_cub(root: pathlib.Path, num_classes=4, per_class=2):
  cub = root / "CUB_200_2011"
  lines = {"classes": [], "images": [], "labels": [], "split": [], "bbox": []}
  k = 0
  for c in range(num_classes):
    cname = f"{c + 1:03d}.Bird_{c}"
    lines["classes"].append(f"{c + 1} {cname}")
    for i in range(per_class):
      k += 1
      rel = f"{cname}/Bird_{c}_{i}.jpg"
      write_image(cub / "images" / rel, colour(c, i))
      lines["images"].append(f"{k} {rel}")
      lines["labels"].append(f"{k} {c + 1}")
      lines["split"].append(f"{k} {1 - i % 2}")
      lines["bbox"].append(f"{k} 2.0 2.0 10.0 8.0")
  for fname, key in (("classes.txt", "classes"), ("images.txt", "images"),
                     ("image_class_labels.txt", "labels"),
                     ("train_test_split.txt", "split"),
                     ("bounding_boxes.txt", "bbox")):
    (cub / fname).write_text("\n".join(lines[key]) + "\n")
  return cub


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_cub200(tmp_path, form):
  cub = make_cub(tmp_path / "src")
  data_dir = tmp_path / "src"
  if form == "zip":
    data_dir = tmp_path / "z"
    data_dir.mkdir()
    zip_dir(cub, data_dir / "CUB_200_2011.zip")
  ds = archives.load_cub200(data_dir, image_size=8)
  assert ds.images.shape == (8, 8, 8, 3) and ds.name == "cub200"
  assert ds.class_names == tuple(f"{c + 1:03d}.Bird_{c}" for c in range(4))
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(ds.attributes["split"], [0] * 4 + [1] * 4)
  np.testing.assert_array_equal(ds.attributes["official_split"],
                                [0, 1] * 4)
  for k in range(8):
    assert_colour(ds, k, colour(k // 2, k % 2))
  parts = splits.standard_split(ds)
  assert parts["train"].num_classes == parts["test"].num_classes == 2
  np.testing.assert_array_equal(parts["test"].labels, [0, 0, 1, 1])
  assert archives.load_cub200(data_dir, image_size=6,
                              crop_to_bbox=True).images.shape == (8, 6, 6, 3)


# --------------------------------------------------------------- Cars196


def make_cars(root: pathlib.Path, classes=(1, 1, 2, 3, 4, 4)):
  scipy_io = pytest.importorskip("scipy.io")
  fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2",
            "class", "test"]
  ann = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
  for i, c in enumerate(classes):
    rel = f"car_ims/{i + 1:06d}.jpg"
    write_image(root / rel, colour(c, i))
    ann[0, i] = (rel, 1, 1, 20, 12, c, i % 2)
  names = np.array([f"Car {c}" for c in range(1, 5)], dtype=object)[None]
  scipy_io.savemat(root / "cars_annos.mat",
                   {"annotations": ann, "class_names": names})


def test_cars196(tmp_path):
  make_cars(tmp_path)
  ds = archives.load_cars196(tmp_path, image_size=8)
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 2, 3, 3])
  assert ds.class_names == ("Car 1", "Car 2", "Car 3", "Car 4")
  np.testing.assert_array_equal(ds.attributes["split"], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(ds.attributes["official_split"],
                                [0, 1, 0, 1, 0, 1])
  for k, c in enumerate((1, 1, 2, 3, 4, 4)):
    assert_colour(ds, k, colour(c, k))
  assert archives.load_cars196(tmp_path, image_size=8,
                               crop_to_bbox=True).images.shape == (6, 8, 8, 3)
  shutil.rmtree(tmp_path / "car_ims")
  with pytest.raises(FileNotFoundError, match="car_ims"):
    archives.load_cars196(tmp_path, image_size=8)


# ------------------------------------------------- Stanford Online Products


def make_sop(root: pathlib.Path):
  sop = root / "Stanford_Online_Products"
  rows = {"Ebay_train.txt": [(1, 1, "bicycle"), (1, 1, "bicycle"),
                             (2, 2, "chair")],
          "Ebay_test.txt": [(3, 1, "bicycle"), (3, 1, "bicycle"),
                            (4, 2, "chair"), (4, 2, "chair")]}
  k = 0
  for fname, entries in rows.items():
    lines = ["image_id class_id super_class_id path"]
    for class_id, super_id, cat in entries:
      k += 1
      rel = f"{cat}_final/{1000 + class_id}_{k}.JPG"
      write_image(sop / rel, colour(class_id, k))
      lines.append(f"{k} {class_id} {super_id} {rel}")
    (sop / fname).write_text("\n".join(lines) + "\n")
  return sop


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_sop(tmp_path, form):
  sop = make_sop(tmp_path / "src")
  data_dir = sop if form == "folder" else zip_dir(
      sop, tmp_path / "Stanford_Online_Products.zip")
  ds = archives.load_sop(data_dir, image_size=8)
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(ds.attributes["split"], [0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(ds.attributes["super_class"],
                                [0, 0, 1, 0, 0, 1, 1])
  assert ds.class_names == ("bicycle/1001", "chair/1002", "bicycle/1003",
                            "chair/1004")
  for k, c in enumerate((1, 1, 2, 3, 3, 4, 4)):
    assert_colour(ds, k, colour(c, k + 1))
  parts = splits.standard_split(ds)
  assert (parts["train"].num_classes, parts["test"].num_classes) == (2, 2)


# ------------------------------------------------------------------ In-Shop


INSHOP = [("WOMEN/Dresses", 1, "train"), ("WOMEN/Dresses", 1, "train"),
          ("MEN/Pants", 2, "train"), ("MEN/Pants", 3, "query"),
          ("MEN/Pants", 3, "gallery"), ("WOMEN/Dresses", 4, "query"),
          ("WOMEN/Dresses", 4, "gallery"), ("WOMEN/Dresses", 4, "gallery")]


def make_inshop(root: pathlib.Path, nested: bool):
  img_root = root / "Img" if nested else root
  lines = [str(len(INSHOP)), "image_name item_id evaluation_status"]
  for k, (cat, item, status) in enumerate(INSHOP):
    rel = f"img/{cat}/id_{item:08d}/{k:02d}_1_front.jpg"
    write_image(img_root / rel, colour(item, k))
    lines.append(f"{rel}   id_{item:08d}   {status}")
  listing = root / ("Eval" if nested else "") / "list_eval_partition.txt"
  listing.parent.mkdir(parents=True, exist_ok=True)
  listing.write_text("\n".join(lines) + "\n")
  if nested:  # As distributed: Img/img.zip holding img/...
    zip_dir(img_root / "img", img_root / "img.zip", arc_root="img")
    shutil.rmtree(img_root / "img")


@pytest.mark.parametrize("nested", [False, True])
def test_inshop(tmp_path, nested):
  make_inshop(tmp_path, nested)
  ds = archives.load_inshop(tmp_path, image_size=8)
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 2, 2, 3, 3, 3])
  codes = splits.SPLIT_CODES
  np.testing.assert_array_equal(ds.attributes["split"],
                                [codes[s] for _, _, s in INSHOP])
  np.testing.assert_array_equal(ds.attributes["category"],
                                [1, 1, 0, 0, 0, 1, 1, 1])
  for k, (_, item, _) in enumerate(INSHOP):
    assert_colour(ds, k, colour(item, k))
  parts = splits.standard_split(ds)
  assert set(parts) == {"train", "query", "gallery"}
  # Query and gallery share one renumbering of the test items.
  np.testing.assert_array_equal(parts["query"].labels, [0, 1])
  np.testing.assert_array_equal(parts["gallery"].labels, [0, 1, 1])
  assert parts["query"].class_names == parts["gallery"].class_names


# ---------------------------------------------- Flowers, Pets, Stanford Dogs


def test_flowers102(tmp_path):
  scipy_io = pytest.importorskip("scipy.io")
  labels = [1, 1, 1, 2, 2, 2, 3, 3, 3]
  for i, c in enumerate(labels):
    write_image(tmp_path / "jpg" / f"image_{i + 1:05d}.jpg", colour(c, i))
  scipy_io.savemat(tmp_path / "imagelabels.mat",
                   {"labels": np.array(labels, np.float64)[None]})
  scipy_io.savemat(tmp_path / "setid.mat", {
      "trnid": np.array([1, 4, 7], np.uint16)[None],
      "valid": np.array([2, 5, 8], np.uint16)[None],
      "tstid": np.array([3, 6, 9], np.uint16)[None]})
  ds = archives.load_flowers102(tmp_path, image_size=8)
  np.testing.assert_array_equal(ds.labels, np.array(labels) - 1)
  np.testing.assert_array_equal(ds.attributes["split"], [0, 2, 1] * 3)
  for k, c in enumerate(labels):
    assert_colour(ds, k, colour(c, k))
  parts = splits.standard_split(ds)
  for name in ("train", "val", "test"):  # Shared classes keep their ids.
    np.testing.assert_array_equal(parts[name].labels, [0, 1, 2])


@pytest.mark.parametrize("lists", ["trainval_test", "list_only"])
def test_pets(tmp_path, lists):
  entries = [("Abyssinian_1", 1, 1), ("Abyssinian_2", 1, 1),
             ("beagle_1", 2, 2), ("beagle_7", 2, 2)]
  for k, (name, c, _) in enumerate(entries):
    write_image(tmp_path / "images" / f"{name}.jpg", colour(c, k))
  ann = tmp_path / "annotations"
  ann.mkdir()
  rows = [f"{n} {c} {s} {k + 1}" for k, (n, c, s) in enumerate(entries)]
  if lists == "trainval_test":
    (ann / "trainval.txt").write_text("\n".join(rows[0::2]) + "\n")
    (ann / "test.txt").write_text("\n".join(rows[1::2]) + "\n")
  else:
    (ann / "list.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n" +
                                  "\n".join(rows) + "\n")
  ds = archives.load_pets(tmp_path, image_size=8)
  assert ds.class_names == ("Abyssinian", "beagle")
  if lists == "trainval_test":
    np.testing.assert_array_equal(ds.labels, [0, 1, 0, 1])
    np.testing.assert_array_equal(ds.attributes["split"], [0, 0, 1, 1])
    np.testing.assert_array_equal(ds.attributes["species"], [0, 1, 0, 1])
    assert_colour(ds, 1, colour(2, 2))
  else:
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    assert "split" not in ds.attributes
    assert_colour(ds, 3, colour(2, 3))


def test_dogs(tmp_path):
  scipy_io = pytest.importorskip("scipy.io")
  breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
  files = {"train": [(0, "a"), (1, "b")],
           "test": [(0, "c"), (1, "d"), (1, "e")]}
  colours = {}
  for part, entries in files.items():
    paths, labels = [], []
    for k, (c, stem) in enumerate(entries):
      rel = f"{breeds[c]}/{breeds[c][:9]}_{stem}.jpg"
      colours[rel] = colour(c, ord(stem))
      write_image(tmp_path / "Images" / rel, colours[rel])
      paths.append(rel)
      labels.append(c + 1)
    (tmp_path / "lists").mkdir(exist_ok=True)
    scipy_io.savemat(tmp_path / "lists" / f"{part}_list.mat", {
        "file_list": np.array(paths, dtype=object)[:, None],
        "labels": np.array(labels, np.float64)[:, None]})
  ds = archives.load_dogs(tmp_path, image_size=8)
  assert ds.class_names == ("Chihuahua", "Japanese_spaniel")
  np.testing.assert_array_equal(ds.labels, [0, 1, 0, 1, 1])
  np.testing.assert_array_equal(ds.attributes["split"], [0, 0, 1, 1, 1])
  for k, rel in enumerate(list(colours)):
    assert_colour(ds, k, colours[rel])


# ----------------------------------------------------------------- Omniglot


def write_omniglot(folder: pathlib.Path, alphabets, drawers=3):
  """Black strokes (one bar whose row encodes the character) on white,
  1-bit PNG, as in the official archives."""
  for a in alphabets:
    for ch in (1, 2):
      for d in range(1, drawers + 1):
        img = np.full((20, 20), 255, np.uint8)
        img[4 * ch: 4 * ch + 4, 2:18] = 0
        name = f"{ch:02d}{len(a):02d}_{d:02d}.png"
        p = folder / a / f"character{ch:02d}" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert("1").save(p)


def test_omniglot_zips_folders_and_subsets(tmp_path):
  bg = tmp_path / "build" / "images_background"
  write_omniglot(bg, ["Greek", "Latin"])
  write_omniglot(tmp_path / "build" / "images_background_small1", ["Greek"])
  zip_dir(bg, tmp_path / "images_background.zip")
  zip_dir(tmp_path / "build" / "images_background_small1",
          tmp_path / "images_background_small1.zip")
  write_omniglot(tmp_path / "images_evaluation", ["Atlantean"])  # Unpacked.
  ds = archives.load_omniglot(tmp_path, image_size=10)
  # small1 is skipped (subset of background): 3 alphabets x 2 chars x 3.
  assert ds.images.shape == (18, 10, 10, 1)
  assert ds.class_names == ("Greek/character01", "Greek/character02",
                            "Latin/character01", "Latin/character02",
                            "Atlantean/character01", "Atlantean/character02")
  np.testing.assert_array_equal(np.bincount(ds.labels), [3] * 6)
  np.testing.assert_array_equal(ds.attributes["split"], [0] * 12 + [1] * 6)
  np.testing.assert_array_equal(ds.attributes["alphabet"],
                                [1] * 6 + [2] * 6 + [0] * 6)
  np.testing.assert_array_equal(ds.attributes["drawer"], [0, 1, 2] * 6)
  # Inverted: background dark, the stroke row of each character bright.
  for k in range(18):
    img = ds.images[k, ..., 0].astype(float)
    ch = ds.labels[k] % 2 + 1
    assert img[0].mean() < 30 and img[2 * ch:2 * ch + 2, 2:8].min() > 200
  only = archives.load_omniglot(tmp_path / "images_background_small1.zip",
                                image_size=10)
  assert only.num_classes == 2 and len(only) == 6
  both = archives.load_omniglot(tmp_path, image_size=10,
                                archives=["background", "small1"])
  assert len(both) == 12  # Duplicated files counted once.
  with pytest.raises(FileNotFoundError, match="images_background_small2"):
    archives.load_omniglot(tmp_path, image_size=10, archives=["small2"])
  train, test = splits.split_by_attribute(ds, "alphabet", [1, 2])
  assert train.class_names == ds.class_names[:4] and test.num_classes == 2


# ------------------------------------------------ Tiny ImageNet, folders


def make_tiny(root: pathlib.Path, wnids=("n01", "n02", "n03"), per_class=2):
  tin = root / "tiny-imagenet-200"
  tin.mkdir(parents=True)
  (tin / "wnids.txt").write_text("\n".join(wnids) + "\n")
  (tin / "words.txt").write_text(
      "n00\tentity\nn01\tgoldfish, Carassius\nn02\tbullfrog\n"
      "n03\tkoala, bear\n")
  for c, w in enumerate(wnids):
    for i in range(per_class):
      write_image(tin / "train" / w / "images" / f"{w}_{i}.JPEG",
                  colour(c, i), size=(16, 16))
    (tin / "train" / w / f"{w}_boxes.txt").write_text("")
  val = ["val_0.JPEG\tn02\t0\t0\t5\t5", "val_1.JPEG\tn09\t0\t0\t5\t5"]
  write_image(tin / "val" / "images" / "val_0.JPEG", colour(1, 9), (16, 16))
  write_image(tin / "val" / "images" / "val_1.JPEG", colour(7, 9), (16, 16))
  (tin / "val" / "val_annotations.txt").write_text("\n".join(val) + "\n")
  return tin


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_tinyimagenet(tmp_path, form):
  tin = make_tiny(tmp_path / "src")
  data_dir = tin if form == "folder" else zip_dir(tin, tmp_path / "tiny.zip")
  ds = archives.load_tinyimagenet(data_dir, image_size=8)
  assert ds.class_names == ("goldfish", "bullfrog", "koala")
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2, 1])
  np.testing.assert_array_equal(ds.attributes["split"], [0] * 6 + [2])
  for k in range(6):
    assert_colour(ds, k, colour(k // 2, k % 2))
  assert_colour(ds, 6, colour(1, 9))
  assert len(archives.load_tinyimagenet(data_dir, image_size=8,
                                        include_val=False)) == 6


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_image_folder(tmp_path, form):
  root = tmp_path / "flowers"
  for c, name in enumerate(["daisy", "rose"]):
    for i in range(2):
      write_image(root / name / f"{i}.png", colour(c, i))
  (root / "README.txt").write_text("not an image")
  write_image(root / "rose" / "sub" / "x.bmp", colour(1, 5), fmt="BMP")
  data = root if form == "folder" else zip_dir(root, tmp_path / "flowers.zip")
  ds = archives.load_image_folder(data, image_size=4)
  assert ds.class_names == ("daisy", "rose")
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1])
  assert_colour(ds, 4, colour(1, 5), tol=1)
  with pytest.raises(FileNotFoundError, match="class folders"):
    archives.load_image_folder(root / "daisy", image_size=4)


# ------------------------------------------------ errors, cache, registry


@pytest.mark.parametrize("loader,needle", [
    (archives.load_cub200, "image_class_labels.txt"),
    (archives.load_cars196, "cars_annos.mat"),
    (archives.load_sop, "Ebay_train.txt"),
    (archives.load_inshop, "list_eval_partition.txt"),
    (archives.load_flowers102, "imagelabels.mat"),
    (archives.load_pets, "annotations/trainval.txt"),
    (archives.load_dogs, "train_list.mat"),
    (archives.load_omniglot, "images_background.zip"),
    (archives.load_tinyimagenet, "wnids.txt"),
])
def test_missing_dataset_raises_one_clear_error(tmp_path, loader, needle):
  (tmp_path / "unrelated.txt").write_text("x")
  with pytest.raises(FileNotFoundError) as err:
    loader(tmp_path, image_size=8)
  message = str(err.value)
  assert needle in message and str(tmp_path) in message and "http" in message


def test_cache_second_load_reads_no_source(tmp_path):
  tin = make_tiny(tmp_path / "src")
  cache = tmp_path / "cache"
  first = archives.load_tinyimagenet(tin, image_size=8, cache_dir=cache)
  assert len(list(cache.glob("*.npz"))) == 1
  other = archives.load_tinyimagenet(tin, image_size=6, cache_dir=cache)
  assert other.images.shape[1] == 6 and len(list(cache.glob("*.npz"))) == 2
  for p in (tin / "train").rglob("*.JPEG"):
    p.unlink()  # Only the index files are left; images come from the cache.
  again = archives.load_tinyimagenet(tin, image_size=8, cache_dir=cache)
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.labels, first.labels)
  assert again.class_names == first.class_names and again.name == first.name
  np.testing.assert_array_equal(again.attributes["split"],
                                first.attributes["split"])
  # Uncached, only the val image is left.
  assert len(archives.load_tinyimagenet(tin, image_size=8)) == 1


def test_registry(tmp_path, monkeypatch):
  root = tmp_path / "f"
  for c in range(2):
    write_image(root / f"c{c}" / "a.png", colour(c, 0))
  ds = registry.load("folder", root, 4)
  assert ds.num_classes == 2 and ds.images.shape == (2, 4, 4, 3)
  grey = registry.load("image_folder", root, 4, channels=1)
  assert grey.images.shape == (2, 4, 4, 1)
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
    registry.load("mnist", root, 4)
  with pytest.raises(ValueError, match="colour_jitter"):
    registry.load("folder", root, 4, colour_jitter=True)
  with pytest.raises(ValueError, match="needs data_dir"):
    registry.load("cub200", None, 4)
  with pytest.raises(FileNotFoundError, match="CUB"):
    registry.load("CUB", root, 4)
  for name in ("cub200", "cars196", "sop", "inshop", "flowers102", "pets",
               "dogs", "omniglot", "tinyimagenet", "folder", "digits",
               "procedural"):
    assert name in registry.names()
  assert not registry.LOADERS["digits"].takes_data_dir
  monkeypatch.setitem(registry.LOADERS, "later",
                      registry.LoaderSpec("dmlx.data.not_written_yet:load"))
  with pytest.raises(ImportError, match="not_written_yet"):
    registry.load("later", root, 4)


def test_tfds_names_and_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from dmlx.data import tfds_loaders  # pylint: disable=g-import-not-at-top
  assert {s.builder for s in tfds_loaders.TFDS_NAMES.values()} == {
      "caltech_birds2011", "cars196", "stanford_online_products",
      "oxford_flowers102", "oxford_iiit_pet", "stanford_dogs", "omniglot"}
  assert tfds_loaders.spec_for("caltech_birds2011").zero_shot
  with pytest.raises(ValueError, match="No TFDS mapping"):
    tfds_loaders.spec_for("mnist")
  with pytest.raises(FileNotFoundError, match="not prepared") as err:
    registry.load("tfds:cub200", tmp_path, 8)
  assert "dmlx.data.archives" in str(err.value)
  assert not any(tmp_path.rglob("*.tfrecord*"))  # Nothing was downloaded.


class _FakeBuilder:
  """Stands in for a prepared TFDS builder (tensorflow is not installed)."""

  def __init__(self, name, data_dir, fmt="array_record"):
    self.name, self.data_dir, self.fmt = name, data_dir, fmt
    label = type("L", (), {"names": ["a", "b", "c", "d"]})()
    self.info = type("I", (), {"features": {"label": label},
                               "splits": {"train": 3, "test": 3}})()

  def is_prepared(self):
    return True

  def as_data_source(self, split):
    if self.fmt == "tfrecord":
      raise NotImplementedError("Random access data source for file format "
                                "FileFormat.TFRECORD is not supported.")
    labels = [0, 1, 2] if split == "train" else [1, 2, 3]
    return [{"image": np.full((12, 10, 3), 10 * y + (split == "test"),
                              np.uint8), "label": y} for y in labels]


def test_tfds_reading_through_a_fake_builder(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  from dmlx.data import tfds_loaders  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tfds, "builder", _FakeBuilder)
  ds = tfds_loaders.load_tfds("caltech_birds2011", tmp_path, image_size=4)
  assert ds.images.shape == (6, 4, 4, 3) and ds.name == "cub200"
  np.testing.assert_array_equal(ds.labels, [0, 1, 2, 1, 2, 3])
  np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [0, 10, 20, 11, 21, 31])
  # CUB: "split" is the zero-shot class split, the TFDS split is kept.
  np.testing.assert_array_equal(ds.attributes["split"], [0, 0, 1, 0, 1, 1])
  np.testing.assert_array_equal(ds.attributes["official_split"],
                                [0, 0, 0, 1, 1, 1])
  dogs = tfds_loaders.load_tfds("dogs", tmp_path, image_size=4)
  np.testing.assert_array_equal(dogs.attributes["split"], [0, 0, 0, 1, 1, 1])
  monkeypatch.setattr(tfds, "builder",
                      lambda n, data_dir: _FakeBuilder(n, data_dir, "tfrecord"))
  with pytest.raises(ImportError, match="tensorflow"):
    tfds_loaders.load_tfds("cub200", tmp_path, image_size=4)


# ------------------------------------------------------ the real files


OMNIGLOT_ZIP = SHARED / "omniglot" / "images_background_small1.zip"
TINY_ZIP = SHARED / "tiny-imagenet" / "tiny-imagenet-subset.zip"


def test_real_omniglot_small1():
  if not OMNIGLOT_ZIP.is_file():
    pytest.skip(f"{OMNIGLOT_ZIP} is absent")
  start = time.perf_counter()
  ds = archives.load_omniglot(OMNIGLOT_ZIP, image_size=28)
  assert time.perf_counter() - start < 30  # Seconds, even on a busy machine.
  assert ds.images.shape == (2720, 28, 28, 1)
  assert ds.num_classes == 136
  np.testing.assert_array_equal(np.bincount(ds.labels), [20] * 136)
  assert len(np.unique(ds.attributes["alphabet"])) == 5
  assert {n.split("/")[0] for n in ds.class_names} == {
      "Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
  np.testing.assert_array_equal(np.bincount(ds.attributes["drawer"]),
                                [136] * 20)
  # Strokes bright on black: most pixels are dark background.
  assert np.median(ds.images) == 0 and ds.images.max() == 255


def test_real_tiny_imagenet_subset():
  if not TINY_ZIP.is_file():
    pytest.skip(f"{TINY_ZIP} is absent")
  ds = archives.load_tinyimagenet(TINY_ZIP, image_size=32)
  assert ds.images.shape == (10100, 32, 32, 3)
  assert ds.num_classes == 101
  np.testing.assert_array_equal(np.bincount(ds.labels), [100] * 101)
  assert ds.class_names[0] == "goldfish"
  assert 40 < ds.images.mean() < 200
