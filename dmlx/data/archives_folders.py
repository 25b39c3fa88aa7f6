"""Loaders that read classes off the folder layout of an archive: Omniglot
(``<Alphabet>/character<NN>``), Tiny ImageNet (``train/<wnid>/images``) and
the generic class-per-folder dataset."""
from __future__ import annotations

import pathlib
import re
import zipfile
from typing import Sequence

from absl import logging
import numpy as np

from dmlx.data import base
from dmlx.data import images as images_lib
from dmlx.data.archives_common import (PathLike, TEST, TRAIN, VAL, _Source,
                                       _decode, _key, _locate, _missing,
                                       _options)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
OMNIGLOT_ARCHIVES = ("images_background", "images_evaluation",
                     "images_background_small1", "images_background_small2")


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
    if path.is_dir():
      empty = sorted(d.name for d in path.iterdir() if d.is_dir()
                     and not d.name.startswith(".") and d.name not in classes)
      if empty:
        logging.warning(f"{len(empty)} class folders under '{root}' hold no images "
                        f"({', '.join(exts)}) and are left out: {empty[:5]}")
    index = {c: k for k, c in enumerate(classes)}
    x = _decode(src, [files[i] for i in keep], image_size, channels=channels,
                resize=resize, num_workers=num_workers)
    return base.make_dataset(x, np.array([index[parts[i][0]] for i in keep]),
                             tuple(classes), name=name)

  return images_lib.cached(cache_dir, _key(name, src, "", opts), build)
