"""Images from wherever a user has them, as the network's uint8 input.

:func:`read_images` takes a ``[N, H, W, C]`` or ``[H, W, C]`` uint8 array, a
PIL image, a list of either, an image file, a list of files, a folder
(searched recursively) or a zip, and returns an :class:`ImageSet`: the images
decoded exactly as the run's dataset loader decodes its files (size, grey or
RGB, resize rule, Omniglot's inversion: :class:`DecodeOptions`), their names
and, where every image sits in a class folder (``<root>/<class>/<image>``),
their labels and class names.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import zipfile
from typing import Any, Sequence

import numpy as np

from dmlx.data import images as images_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                    ".tiff", ".ppm", ".pgm")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How a file becomes an input image: ``image_size`` (side), ``channels``
  (1 grey, 3 RGB), ``resize`` (``'shorter_crop'`` or ``'square'``) and
  ``invert`` (``255 - pixel``), as in :func:`dmlx.data.images.decode_image`."""
  image_size: int
  channels: int = 3
  resize: str = "shorter_crop"
  invert: bool = False

  @classmethod
  def from_data_config(cls, data: Any, channels: int | None = None) -> "DecodeOptions":
    """The options the loader of ``config.data.name`` uses: its defaults,
    then ``config.data.options``; ``channels`` (the network's input
    channels, when known) wins over both."""
    from dmlx.data import registry  # pylint: disable=g-import-not-at-top
    defaults: dict[str, Any] = {}
    name = str(data.name)
    if not name.lower().startswith("tfds:"):
      loader = registry.resolve(name)
      defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items()
                  if p.default is not inspect.Parameter.empty}
    options = {**defaults, **dict(data.get("options", {}) or {})}
    return cls(image_size=int(data.image_size),
               channels=int(channels or options.get("channels", 3)),
               resize=str(options.get("resize", "shorter_crop")),
               invert=bool(options.get("invert", False)))


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """``images`` ``[N, H, W, C]`` uint8; ``names`` (file paths relative to
  ``source``, or ``'#<i>'`` for in-memory images); ``labels`` ``[N]`` and
  ``class_names`` when the images came in class folders, else None / ()."""
  images: np.ndarray
  names: tuple[str, ...]
  labels: np.ndarray | None = None
  class_names: tuple[str, ...] = ()
  source: str = ""

  def __len__(self) -> int:
    return len(self.images)


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(
      name).startswith(".")


def _folder_labels(names: Sequence[str]) -> tuple[np.ndarray | None, tuple[str, ...]]:
  """Labels from the first path component when every image is inside one."""
  parts = [n.split("/") for n in names]
  if not parts or any(len(p) < 2 for p in parts):
    return None, ()
  classes = tuple(sorted({p[0] for p in parts}))
  if len(classes) < 2:
    return None, ()
  index = {c: k for k, c in enumerate(classes)}
  return np.array([index[p[0]] for p in parts], np.int32), classes


def _strip_wrapper(names: list[str]) -> list[str]:
  """Drops single top folders that wrap everything (``zip/<top>/<class>/x``)."""
  parts = [n.split("/") for n in names]
  while parts and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1:
    parts = [p[1:] for p in parts]
  return ["/".join(p) for p in parts]


def list_images(path: str) -> list[str]:
  """The image files of a folder (recursive) or a zip, sorted, as paths
  relative to it (``/``-separated)."""
  if os.path.isdir(path):
    out = []
    for root, dirs, files in os.walk(path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      rel = os.path.relpath(root, path)
      out.extend(os.path.join(rel, f).replace(os.sep, "/").removeprefix("./")
                 for f in files if _is_image_name(f))
    return sorted(out)
  with zipfile.ZipFile(path) as z:
    return sorted(n for n in z.namelist() if not n.endswith("/") and _is_image_name(n)
                  and not n.startswith("__MACOSX/"))


def _decode_files(path: str, names: Sequence[str], opts: DecodeOptions,
                  num_workers: int | None = None) -> np.ndarray:
  kwargs = dict(channels=opts.channels, resize=opts.resize, invert=opts.invert,
                num_workers=num_workers)
  if os.path.isdir(path):
    return images_lib.decode_many([os.path.join(path, n) for n in names],
                                  _read_file, opts.image_size, **kwargs)
  with zipfile.ZipFile(path) as z:
    return images_lib.decode_many(list(names), z.read, opts.image_size, **kwargs)


def _from_arrays(arrays: Sequence[np.ndarray], opts: DecodeOptions) -> np.ndarray:
  h = w = opts.image_size
  out = []
  for i, a in enumerate(arrays):
    a = np.asarray(a)
    if a.dtype != np.uint8:
      raise ValueError(f"Image #{i} has dtype {a.dtype}; pass uint8 pixels "
                       "(0..255), as files decode to.")
    if a.ndim == 3 and a.shape == (h, w, opts.channels):
      out.append(a)
    else:  # another size or channel count: resized as a file would be
      out.append(images_lib.resize_array(a, opts.image_size, channels=opts.channels,
                                         resize=opts.resize))
  return np.stack(out) if out else np.zeros((0, h, w, opts.channels), np.uint8)


def read_images(source: Any, opts: DecodeOptions, *,
                num_workers: int | None = None) -> ImageSet:
  """Reads ``source`` (see the module docstring) as an :class:`ImageSet`.

  In-memory arrays are taken as already decoded (no inversion); an array of
  another size or channel count is resized as a file would be.

  Raises:
    FileNotFoundError: a path that does not exist, or a folder / zip with no
      image files.
    ValueError: an array that is not uint8 ``[N, H, W, C]`` / ``[H, W, C]``.
  """
  if isinstance(source, ImageSet):
    return source
  if isinstance(source, np.ndarray):
    if source.ndim == 4:
      arrays = list(source)
    elif source.ndim in (2, 3):
      arrays = [source]
    else:
      raise ValueError(f"Expected images [N, H, W, C] or one image [H, W, C], "
                       f"got shape {source.shape}.")
    return ImageSet(_from_arrays(arrays, opts), tuple(f"#{i}" for i in range(len(arrays))))
  if _is_pil(source):
    source = [source]
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if not os.path.exists(path):
      raise FileNotFoundError(f"No such image, folder or zip: {path!r}.")
    if os.path.isdir(path) or zipfile.is_zipfile(path):
      names = list_images(path)
      if not names:
        raise FileNotFoundError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                f"in {path!r}.")
      images = _decode_files(path, names, opts, num_workers)
      rel = _strip_wrapper(names) if not os.path.isdir(path) else names
      labels, classes = _folder_labels(rel)
      return ImageSet(images, tuple(names), labels, classes, os.path.abspath(path))
    source = [path]
  items = list(source)
  if items and all(isinstance(x, (str, os.PathLike)) for x in items):
    for p in items:
      if not os.path.isfile(p):
        raise FileNotFoundError(f"No such image file: {os.fspath(p)!r}.")
    images = images_lib.decode_many(
        [os.fspath(p) for p in items], _read_file,
        opts.image_size, channels=opts.channels, resize=opts.resize,
        invert=opts.invert, num_workers=num_workers)
    return ImageSet(images, tuple(os.path.abspath(p) for p in items))
  arrays = [np.asarray(x.convert("L" if opts.channels == 1 else "RGB"))
            if _is_pil(x) else x for x in items]
  return ImageSet(_from_arrays(arrays, opts), tuple(f"#{i}" for i in range(len(arrays))))


def _read_file(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _is_pil(x: Any) -> bool:
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    return False
  return isinstance(x, Image.Image)


def read_named(source: str, names: Sequence[str], opts: DecodeOptions) -> np.ndarray:
  """The images ``names`` (relative paths, as :class:`ImageSet` keeps them)
  of the folder or zip ``source``, or absolute file paths when ``source`` is
  empty, decoded with ``opts``."""
  if not source:
    return images_lib.decode_many(list(names), _read_file, opts.image_size,
                                  channels=opts.channels, resize=opts.resize,
                                  invert=opts.invert)
  return _decode_files(source, names, opts)


def write_images(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                 directory: str, opts: DecodeOptions) -> list[str]:
  """Writes decoded ``images`` as PNG files ``<directory>/<class>/<i>.png``
  that :func:`read_images` with ``opts`` decodes back to the same arrays
  (inverted back first where ``opts.invert``; ``/`` in a class name becomes
  ``_``, so each class is one folder). Returns the relative paths."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  images = np.asarray(images, np.uint8)
  if images.ndim != 4 or len(images) != len(labels):
    raise ValueError(f"Expected images [N, H, W, C] with N labels, got "
                     f"{images.shape} and {len(labels)} labels.")
  if images.shape[1] != opts.image_size or images.shape[2] != opts.image_size:
    raise ValueError(f"Images are {images.shape[1]}x{images.shape[2]}; the "
                     f"options decode to {opts.image_size}px.")
  folders = [str(c).replace("/", "_").replace(os.sep, "_") for c in class_names]
  if len(set(folders)) != len(folders):
    raise ValueError("Class names collide once '/' is replaced: "
                     f"{sorted(folders)[:5]}...")
  names = []
  for i, (img, label) in enumerate(zip(images, labels)):
    name = f"{folders[int(label)]}/{i:06d}.png"
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = 255 - img if opts.invert else img
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    names.append(name)
  return names
