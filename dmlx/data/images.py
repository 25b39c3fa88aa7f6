"""Image files for the dmlx dataset loaders: finding, decoding, resizing,
caching.

The DML papers (Song et al. 2016, "Deep Metric Learning via Lifted Structured
Feature Embedding"; Movshovitz-Attias et al. 2017, "No Fuss Distance Metric
Learning using Proxies"; ...) resize every image to a fixed size (256 then a
224 crop) before training. dmlx keeps whole datasets in memory as one uint8
array (``dmlx.data.base.Dataset``), so loaders decode every file once, resize
it here to ``image_size`` and, with ``cache_dir``, store the result as an
``.npz`` file so a second load only reads one array from disk.

Files are read through :class:`FileSource`, one interface over an unpacked
folder and a ``.zip`` (datasets distributed as zips are read without
unpacking).

Two resize rules are offered:

* ``'shorter_crop'``: scale so the shorter side matches the target, then take
  the centre crop (keeps the aspect ratio; what the papers' 256/224 pipeline
  does at test time).
* ``'square'``: resize directly to the target shape (distorts the aspect ratio,
  keeps the whole object).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import pathlib
import tempfile
import threading
import zipfile
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from dmlx.data import bad_images
from dmlx.data import base

try:
  from PIL import Image
except ImportError:  # pragma: no cover - reported when a loader is called.
  Image = None

RESIZE_MODES = ("square", "shorter_crop")
CACHE_FORMAT_VERSION = 1

T = TypeVar("T")
Box = tuple[float, float, float, float]


def _require_pil():
  if Image is None:
    raise ImportError("dmlx.data image loaders need Pillow: pip install pillow")


def image_shape(image_size: int | Sequence[int]) -> tuple[int, int]:
  """Returns ``(height, width)`` for an ``image_size`` given as an int (square)
  or a pair; raises ValueError on a non-positive size."""
  if isinstance(image_size, (int, np.integer)):
    shape = (int(image_size), int(image_size))
  else:
    shape = tuple(int(s) for s in image_size)
  if len(shape) != 2 or min(shape) <= 0:
    raise ValueError(f"image_size must be a positive int or (height, width), "
                     f"got {image_size!r}.")
  return shape  # type: ignore[return-value]


def check_options(channels: int, resize: str) -> None:
  """Raises ValueError for channels other than 1 / 3 or an unknown resize."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")


def resize_image(img: "Image.Image", image_size: int | Sequence[int],
                 resize: str = "shorter_crop") -> "Image.Image":
  """Resizes a PIL image to ``image_size`` by direct ``'square'`` resize or
  shorter-side resize then centre crop (``'shorter_crop'``), the test-time
  preprocessing of the DML papers (Song et al. 2016, Sec. 5)."""
  check_options(3, resize)
  h, w = image_shape(image_size)
  width, height = img.size
  if resize == "square":
    if (width, height) != (w, h):
      img = img.resize((w, h), Image.Resampling.BILINEAR)
    return img
  scale = max(h / height, w / width)
  new_w = max(w, int(round(width * scale)))
  new_h = max(h, int(round(height * scale)))
  if (new_w, new_h) != (width, height):
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
  left = (new_w - w) // 2
  top = (new_h - h) // 2
  if (left, top, new_w, new_h) != (0, 0, w, h):
    img = img.crop((left, top, left + w, top + h))
  return img


def decode_image(data: bytes | str | os.PathLike,
                 image_size: int | Sequence[int], *, channels: int = 3,
                 resize: str = "shorter_crop", invert: bool = False,
                 box: Box | None = None) -> np.ndarray:
  """Decodes one image file (path or bytes) to a ``[H, W, channels]`` uint8
  array of size ``image_size``.

  Args:
    data: encoded bytes (JPEG, PNG, BMP, ...) or a file path.
    image_size: target size, an int (square) or ``(height, width)``.
    channels: 3 for RGB, 1 for grey.
    resize: ``'shorter_crop'`` or ``'square'`` (see the module docstring).
    invert: return ``255 - pixel``, e.g. so Omniglot's black strokes on white
      become bright foreground on black (Lake et al. 2015).
    box: optional ``(x0, y0, x1, y1)`` pixel box to crop before resizing
      (CUB / Cars bounding boxes).

  Returns:
    ``[H, W, channels]`` uint8 array.
  """
  _require_pil()
  check_options(channels, resize)
  h, w = image_shape(image_size)
  if isinstance(data, (bytes, bytearray, memoryview)):
    img = Image.open(io.BytesIO(data))
  else:
    img = Image.open(data)
  with img:
    if img.format == "JPEG" and box is None:
      # Let libjpeg decode at a reduced scale that is still >= the target.
      img.draft("L" if channels == 1 else "RGB", (w, h))
    mode = "L" if channels == 1 else "RGB"
    if img.mode in ("P", "PA", "LA", "RGBA") and "transparency" in img.info:
      img = img.convert("RGBA")
    img = img.convert(mode)
  if box is not None:
    x0, y0, x1, y1 = (float(b) for b in box)
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(img.size[0]), x1), min(float(img.size[1]), y1)
    if x1 > x0 and y1 > y0:
      img = img.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
  img = resize_image(img, (h, w), resize)
  out = np.asarray(img, dtype=np.uint8)
  if out.ndim == 2:
    out = out[..., None]
  if invert:
    out = 255 - out
  return out


def resize_array(array: np.ndarray, image_size: int | Sequence[int], *,
                 channels: int = 3, resize: str = "shorter_crop",
                 invert: bool = False) -> np.ndarray:
  """Resizes an already decoded ``[H, W]`` or ``[H, W, C]`` uint8 image (as
  TFDS returns it) exactly as :func:`decode_image` does a file."""
  _require_pil()
  check_options(channels, resize)
  array = np.asarray(array, np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3):
    raise ValueError(f"Expected an [H, W] or [H, W, C] image, got shape "
                     f"{array.shape}.")
  img = Image.fromarray(array).convert("L" if channels == 1 else "RGB")
  out = np.asarray(resize_image(img, image_size, resize), dtype=np.uint8)
  out = out[..., None] if out.ndim == 2 else out
  return 255 - out if invert else out


def decode_many(items: Sequence[T], read: Callable[[T], bytes],
                image_size: int | Sequence[int], *, channels: int = 3,
                resize: str = "shorter_crop", invert: bool = False,
                boxes: Sequence[Box | None] | None = None,
                num_workers: int | None = None) -> np.ndarray:
  """Decodes ``items`` in a thread pool into one ``[N, H, W, channels]`` array.

  ``read(item)`` returns the encoded bytes of one item (a file read, a zip
  member read). Pillow releases the GIL while decoding, so threads overlap
  both reading and decoding. A file that fails to decode raises ValueError
  naming it, or under :func:`on_bad_image` ``('skip')`` is zero-filled and
  recorded, so the loader's dataset drops it (:mod:`dmlx.data.bad_images`).
  """
  state = bad_images.current()
  skip = state is not None and state.policy == "skip"
  failed: list[int] = []
  check_options(channels, resize)
  h, w = image_shape(image_size)
  if boxes is not None and len(boxes) != len(items):
    raise ValueError(f"boxes has {len(boxes)} entries for {len(items)} items.")
  out = np.empty((len(items), h, w, channels), np.uint8)
  if num_workers is None:
    num_workers = min(8, os.cpu_count() or 1)
  if num_workers < 1:
    raise ValueError(f"num_workers must be >= 1, got {num_workers}.")

  def work(i: int):
    data = read(items[i])  # A missing file raises its own error here.
    if state is not None:
      first = state.hashes.setdefault(hashlib.blake2b(data, digest_size=16).digest(),
                                      items[i])
      if first is not items[i]:
        state.duplicates.append((str(items[i]), str(first)))
    try:
      out[i] = decode_image(data, (h, w), channels=channels, resize=resize,
                            invert=invert,
                            box=None if boxes is None else boxes[i])
    except (OSError, ValueError, SyntaxError) as e:
      if not skip:
        raise ValueError(f"Could not decode image {items[i]!r}: {e} (skip such "
                         "files with data.on_bad_image='skip').") from e
      out[i] = 0
      failed.append(i)
      state.skipped.append((str(items[i]), str(e)))

  if num_workers == 1 or len(items) < 64:
    for i in range(len(items)):
      work(i)
  else:
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
      for _ in pool.map(work, range(len(items)), chunksize=64):
        pass
  if skip and failed:
    state.pending = (len(items), sorted(failed))
  return out


# ------------------------------------------------------- folders and zips


class FileSource:
  """Read-only files of a folder, or of a zip under a prefix, addressed by
  '/'-separated paths relative to the dataset root. Reads from a zip are
  serialised by a lock, so :func:`decode_many` threads may share one."""

  def __init__(self, location: pathlib.Path, prefix: str = "",
               zf: zipfile.ZipFile | None = None):
    self.location = location
    self.prefix = prefix
    if zf is None and location.is_file():
      zf = zipfile.ZipFile(location)
    self._zip = zf
    self._lock = threading.Lock()
    self._names = (set(self._zip.namelist()) if self._zip is not None else
                   None)

  @property
  def is_zip(self) -> bool:
    return self._zip is not None

  def __repr__(self) -> str:
    return f"{self.location}" + (f"!/{self.prefix}" if self._zip else "")

  def exists(self, rel: str) -> bool:
    if self._zip is not None:
      return self.prefix + rel in self._names
    return (self.location / rel).is_file()

  def read(self, rel: str) -> bytes:
    if self._zip is None:
      return (self.location / rel).read_bytes()
    try:
      with self._lock:
        return self._zip.read(self.prefix + rel)
    except KeyError:
      raise FileNotFoundError(f"{rel!r} is not in {self}") from None

  def text(self, rel: str) -> list[str]:
    """Non-empty stripped lines of a text file."""
    lines = self.read(rel).decode("utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]

  def files(self) -> list[str]:
    """All file paths under the root, sorted."""
    if self._zip is not None:
      n = len(self.prefix)
      return sorted(name[n:] for name in self._names
                    if name.startswith(self.prefix) and not name.endswith("/"))
    out = []
    for dirpath, _, filenames in os.walk(self.location):
      rel = pathlib.Path(dirpath).relative_to(self.location).as_posix()
      out.extend(f if rel == "." else f"{rel}/{f}" for f in filenames)
    return sorted(out)

  def sub(self, prefix: str) -> "FileSource":
    """The sub-folder ``prefix`` (ending in '/') as its own root."""
    if self._zip is None:
      return FileSource(self.location / prefix)
    return FileSource(self.location, self.prefix + prefix, self._zip)

  def identity(self, marker: str) -> dict[str, Any]:
    """What the cache key needs to notice a changed source."""
    path = self.location if self._zip is not None else self.location / marker
    stat = path.stat()
    return {"path": str(self.location.resolve()), "prefix": self.prefix,
            "marker": marker, "size": stat.st_size, "mtime": stat.st_mtime_ns}


def find_root(data_dir: str | os.PathLike,
              markers: Sequence[str]) -> FileSource | None:
  """Finds a dataset root: ``data_dir`` itself or one sub-folder of it holding
  one of the ``markers`` (relative paths), or the shallowest folder holding
  one inside ``data_dir`` when it is a zip, or inside a zip in ``data_dir``.
  Returns None when there is none."""
  path = pathlib.Path(data_dir).expanduser()
  zips = []
  if path.is_dir():
    for folder in [path] + sorted(p for p in path.iterdir() if p.is_dir()):
      if any((folder / m).is_file() for m in markers):
        return FileSource(folder)
    zips = sorted(p for p in path.iterdir() if p.suffix.lower() == ".zip")
  elif path.is_file() and zipfile.is_zipfile(path):
    zips = [path]
  for zip_path in zips:
    zf = zipfile.ZipFile(zip_path)
    prefixes = [name[:len(name) - len(m)] for name in zf.namelist()
                for m in markers if name == m or name.endswith("/" + m)]
    if prefixes:
      return FileSource(zip_path, min(prefixes, key=len), zf)
    zf.close()
  return None


# ----------------------------------------------------------------- .npz cache


def cache_key(**parts: Any) -> str:
  """Returns a short stable hash of the JSON-serialisable ``parts`` (loader
  name, source identity, image size, options) used to name cache files."""
  text = json.dumps({"version": CACHE_FORMAT_VERSION, **parts},
                    sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:16]


def save_npz(ds: base.Dataset, path: str | os.PathLike) -> None:
  """Writes ``ds`` to ``path`` atomically (temporary file then rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {
      "images": ds.images, "labels": ds.labels,
      "class_names": np.asarray(ds.class_names, dtype=str),
      "name": np.asarray(ds.name, dtype=str),
  }
  for key, value in ds.attributes.items():
    arrays[f"attr__{key}"] = np.asarray(value)
  fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_npz(path: str | os.PathLike) -> base.Dataset:
  """Reads a dataset written by :func:`save_npz`."""
  with np.load(path, allow_pickle=False) as z:
    attributes = {k[len("attr__"):]: z[k] for k in z.files
                  if k.startswith("attr__")}
    return base.Dataset(
        images=z["images"], labels=z["labels"].astype(np.int32),
        class_names=tuple(str(c) for c in z["class_names"]),
        attributes=attributes, name=str(z["name"]))


def cached(cache_dir: str | os.PathLike | None, key: Mapping[str, Any],
           build: Callable[[], base.Dataset]) -> base.Dataset:
  """Returns ``build()``, stored in / read from ``cache_dir`` under a file
  named by :func:`cache_key` of ``key`` (no caching when ``cache_dir`` is
  None)."""
  if cache_dir is None:
    return bad_images.drop_bad_rows(build())
  prefix = str(key.get("loader", "dataset"))
  path = pathlib.Path(cache_dir) / f"{prefix}_{cache_key(**key)}.npz"
  if path.is_file():
    return load_npz(path)
  ds = bad_images.drop_bad_rows(build())
  save_npz(ds, path)
  return ds
