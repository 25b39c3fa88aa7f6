"""Reader of PyTorch ``torch.save`` files into NumPy, with or without torch.

``torch.load(weights_only=True)`` when torch is installed, else a pure
reader of the zip layout of torch >= 1.6 (``data.pkl`` + ``data/<key>``
storages) and the legacy stream of older releases, through a restricted
``Unpickler`` that rebuilds tensors from the storages and turns every other
global into an inert stub, so no code from the file is ever run. Also the
unwrapping of a loaded checkpoint into its flat state dict
(:func:`_state_dict_of`).
"""
from __future__ import annotations

import collections
import importlib.util
import io
import pickle
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from dmlx.models.weight_dtypes import _BF16, StateDict, _numpy_dtype

# torch storage class / dtype name -> NumPy dtype (little-endian).
_TORCH_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "BFloat16Storage": "bf16", "UntypedStorage": "u1",
    "float32": "<f4", "float": "<f4", "float64": "<f8", "double": "<f8",
    "float16": "<f2", "half": "<f2", "bfloat16": "bf16", "int64": "<i8",
    "long": "<i8", "int32": "<i4", "int": "<i4", "int16": "<i2",
    "short": "<i2", "int8": "i1", "uint8": "u1", "bool": "?",
}

_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net",
                    "network", "params")


def read_torch(path: str, use_torch: bool | None = None) -> StateDict:
  """Reads a ``torch.save`` file (zip or legacy layout) without running it.

  Args:
    path: the file.
    use_torch: use ``torch.load(weights_only=True)`` (``None``: if torch is
      installed, falling back to the pure reader when torch refuses a global
      such as an ``argparse.Namespace`` in a training checkpoint).
  """
  if use_torch is None:
    use_torch = importlib.util.find_spec("torch") is not None
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
      obj = None
    if obj is not None:
      return _state_dict_of(_walk(obj, _torch_to_numpy), path)
  if zipfile.is_zipfile(path):
    obj = _load_torch_zip(path)
  else:
    obj = _load_torch_legacy(path)
  return _state_dict_of(_walk(obj, lambda x: x.numpy()
                              if isinstance(x, _TensorRef) else x), path)


def _torch_to_numpy(x: Any) -> Any:
  import torch  # pylint: disable=g-import-not-at-top
  if not isinstance(x, torch.Tensor):
    return x
  x = x.detach().cpu()
  if x.dtype == torch.bfloat16:
    return x.view(torch.int16).numpy().view(_BF16)
  return x.numpy().copy()


class _Storage:
  """A torch storage: a flat buffer of ``dtype`` filled in from the file."""

  def __init__(self, dtype: np.dtype, numel: int, data: bytes | None = None):
    self.dtype, self.numel, self.data = dtype, numel, data

  def array(self) -> np.ndarray:
    if self.data is None:
      raise ValueError("a tensor refers to a storage missing from the file")
    return np.frombuffer(self.data, self.dtype,
                         count=len(self.data) // self.dtype.itemsize)


class _TensorRef:
  """``torch._utils._rebuild_tensor*``: a strided view into a storage."""

  def __init__(self, storage, offset, size, stride, dtype=None):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(size), tuple(stride)
    self.dtype = dtype

  def numpy(self) -> np.ndarray:
    flat = self.storage.array()
    if self.dtype is not None and self.dtype != flat.dtype:
      flat = flat.view(self.dtype)
    if not self.size or 0 in self.size:
      return flat[self.offset:self.offset + int(np.prod(self.size))].reshape(
          self.size).copy()
    extent = self.offset + 1 + sum((n - 1) * s for n, s in
                                   zip(self.size, self.stride))
    if extent > flat.size:
      raise ValueError(f"tensor of shape {self.size} overruns its storage of "
                       f"{flat.size} elements; the file is corrupt")
    flat = flat[self.offset:]
    return np.lib.stride_tricks.as_strided(
        flat, self.size, [s * flat.itemsize for s in self.stride]).copy()


class _Stub:
  """Base of the classes standing in for globals the reader does not know:
  inert, they absorb construction, calls and state."""
  stub_name = "?"

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, *args, **kwargs):
    return self

  def __setstate__(self, state):
    pass

  def __setitem__(self, key, value):
    pass

  def append(self, value):
    pass

  def extend(self, values):
    pass


def _stub_class(name: str) -> type[_Stub]:
  return type("Stub", (_Stub,), {"stub_name": name})


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks,
                       dtype, *unused):
  del requires_grad, hooks
  return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, *unused):
  return data


_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only tensor-rebuilding globals; everything else is a stub."""

  def __init__(self, f, load_storage: Callable[[tuple], _Storage]):
    super().__init__(f, encoding="utf-8")
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if module in ("torch", "torch.cuda", "torch.storage") and \
        name in _TORCH_DTYPES:
      return _numpy_dtype(_TORCH_DTYPES[name], f"{module}.{name}")
    return _stub_class(f"{module}.{name}")

  def persistent_load(self, pid: Any) -> Any:
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
      raise ValueError(f"unsupported persistent id {kind!r} in torch file")
    return self._load_storage(tuple(pid[1:]))


def _load_torch_zip(path: str) -> Any:
  """torch >= 1.6: ``<prefix>/data.pkl`` and raw ``<prefix>/data/<key>``."""
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if not pkl:
      raise ValueError(f"{path!r} is a zip file without data.pkl (a "
                       "TorchScript archive?); save model.state_dict().")
    prefix = min(pkl, key=len)[:-len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in zf.namelist():
      order = zf.read(prefix + "byteorder").decode()
    storages: dict[str, _Storage] = {}

    def load(pid):
      dtype, key, _, numel = pid[:4]
      key = str(key)
      if key not in storages:
        data = zf.read(f"{prefix}data/{key}")
        if order == "big":
          data = np.frombuffer(data, dtype.newbyteorder(">")).astype(
              dtype).tobytes()
        storages[key] = _Storage(dtype, numel, data)
      return storages[key]

    return _Unpickler(io.BytesIO(zf.read(pkl[0] if len(pkl) == 1 else
                                         prefix + "data.pkl")), load).load()


def _load_torch_legacy(path: str) -> Any:
  """torch < 1.6: magic, protocol, sys info, the object, storage keys, then
  each storage as an int64 element count followed by its raw bytes."""
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path!r} is not a readable torch file: {e}") from e
    if magic != 0x1950a86a20f9469cfc6c:
      raise ValueError(f"{path!r}: bad torch magic number (an old tar-format "
                       "checkpoint? re-save it with a recent torch)")
    pickle.load(f)  # protocol version
    sys_info = pickle.load(f)
    little = sys_info.get("little_endian", True) if isinstance(
        sys_info, dict) else True
    roots: dict[str, _Storage] = {}
    views: list[tuple[_Storage, str, int]] = []

    def load(pid):
      dtype, key, _, numel = pid[:4]
      view = pid[4] if len(pid) > 4 else None
      key = str(key)
      if key not in roots:
        roots[key] = _Storage(dtype, numel)
      if view is None:
        return roots[key]
      view_storage = _Storage(dtype, int(view[2]))
      views.append((view_storage, key, int(view[1])))
      return view_storage

    obj = _Unpickler(f, load).load()
    keys = pickle.load(f)
    for key in keys:
      storage = roots[str(key)]
      (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
      nbytes = numel * storage.dtype.itemsize
      data = f.read(nbytes)
      if len(data) != nbytes:
        raise ValueError(f"{path!r} is truncated")
      if not little:
        data = np.frombuffer(data, storage.dtype.newbyteorder(">")).astype(
            storage.dtype).tobytes()
      storage.data = data
    for view, key, offset in views:
      size = view.dtype.itemsize
      view.data = roots[key].data[offset * size:(offset + view.numel) * size]
  return obj


def _walk(obj: Any, fn: Callable[[Any], Any]) -> Any:
  """Applies ``fn`` to every leaf of nested dicts / lists / tuples."""
  if isinstance(obj, dict):
    return {k: _walk(v, fn) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_walk(v, fn) for v in obj)
  return fn(obj)


def _state_dict_of(obj: Any, path: str) -> StateDict:
  """The flat tensor dict inside a loaded object (unwrapping ``state_dict``,
  ``model``, ... and DataParallel's ``module.`` prefix)."""
  if isinstance(obj, _Stub):
    raise ValueError(f"{path!r} holds a pickled {obj.stub_name} object, not a "
                     "state dict; save model.state_dict() instead.")
  if not isinstance(obj, dict):
    raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state "
                     "dict of tensors.")
  arrays = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
  if not arrays:
    for key in _STATE_DICT_KEYS:
      if isinstance(obj.get(key), dict):
        return _state_dict_of(obj[key], path)
    raise ValueError(f"{path!r} holds no tensors (top-level keys: "
                     f"{sorted(map(str, obj))[:10]}).")
  if all(k.startswith("module.") for k in arrays):
    arrays = {k[len("module."):]: v for k, v in arrays.items()}
  return arrays
