"""Readers for the checkpoint files ImageNet weights come in, to NumPy.

Every reader returns a flat ``{name: np.ndarray}`` state dict with the
file's own tensor names (``layer1.0.conv1.weight``), nothing converted:

* safetensors (timm, Hugging Face): an 8-byte little-endian header length, a
  JSON header ``{name: {dtype, shape, data_offsets}}`` and one raw
  little-endian buffer. Read with the ``safetensors`` package when installed,
  else by :func:`read_safetensors`'s own ~20 lines.
* PyTorch ``torch.save`` pickles (torchvision, Cadene's ``pretrainedmodels``):
  with ``torch.load(weights_only=True)`` when torch is installed, else by a
  pure reader of both layouts: the zip archive of torch >= 1.6 (``data.pkl`` +
  ``data/<key>`` storages) and the legacy stream of older releases (magic
  number, pickles, then the storages back to back), which old checkpoints
  such as Cadene's ``bn_inception-52deb4733.pth`` use. The pickle is read by a
  restricted ``Unpickler``: tensors are rebuilt from the storages, every other
  global becomes an inert stub, so no code from the file is ever run.
* Keras ``.h5`` through ``h5py`` (optional); ``.npz`` through NumPy.

A training checkpoint holding the state dict under ``state_dict`` / ``model``
(and DataParallel's ``module.`` prefixes) is unwrapped.

The readers live in ``safetensors_reader`` and ``pth_reader`` (dtypes in
``weight_dtypes``); this module recognises the format and gathers them under
their one import path.
"""
from __future__ import annotations

import sys
import zipfile

import numpy as np

# pylint: disable=unused-import
from dmlx.models.pth_reader import _STATE_DICT_KEYS
from dmlx.models.pth_reader import _TORCH_DTYPES
from dmlx.models.pth_reader import _SAFE_GLOBALS
from dmlx.models.pth_reader import _Storage
from dmlx.models.pth_reader import _Stub
from dmlx.models.pth_reader import _TensorRef
from dmlx.models.pth_reader import _Unpickler
from dmlx.models.pth_reader import _load_torch_legacy
from dmlx.models.pth_reader import _load_torch_zip
from dmlx.models.pth_reader import _rebuild_parameter
from dmlx.models.pth_reader import _rebuild_tensor
from dmlx.models.pth_reader import _rebuild_tensor_v3
from dmlx.models.pth_reader import _state_dict_of
from dmlx.models.pth_reader import _stub_class
from dmlx.models.pth_reader import _torch_to_numpy
from dmlx.models.pth_reader import _walk
from dmlx.models.pth_reader import read_torch
from dmlx.models.safetensors_reader import _SAFETENSORS_DTYPES
from dmlx.models.safetensors_reader import read_safetensors
from dmlx.models.weight_dtypes import _BF16
from dmlx.models.weight_dtypes import StateDict
from dmlx.models.weight_dtypes import _numpy_dtype
# pylint: enable=unused-import


def read_state_dict(path: str) -> StateDict:
  """Reads any supported checkpoint file into ``{name: np.ndarray}``.

  The format is recognised from the file's first bytes, not its extension.

  Raises:
    ValueError: the file is none of the supported formats, or holds no
      tensors.
  """
  with open(path, "rb") as f:
    head = f.read(16)
  if head.startswith(b"PK\x03\x04"):
    with zipfile.ZipFile(path) as zf:
      names = zf.namelist()
    is_npz = (not any(n.endswith("data.pkl") for n in names) and
              any(n.endswith(".npy") for n in names))
    return _state_dict_of(dict(np.load(path)) if is_npz else read_torch(path),
                          path)
  if head.startswith(b"\x89HDF\r\n\x1a\n"):
    return read_h5(path)
  if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
    return read_torch(path)
  if len(head) >= 9 and head[8:9] == b"{":
    return read_safetensors(path)
  raise ValueError(
      f"{path!r} is not a safetensors, PyTorch (.pth), Keras (.h5) or .npz "
      f"checkpoint (first bytes {head[:8]!r}).")


# ------------------------------------------------------------------ Keras h5


def read_h5(path: str) -> StateDict:
  """Reads every dataset of a Keras ``.h5`` file, named by its h5 path
  (``conv1_conv/conv1_conv/kernel:0``); kernels stay Keras-shaped."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"{path!r} is a Keras .h5 file; reading it needs h5py "
                     "(pip install h5py).") from e
  out = {}
  with h5py.File(path, "r") as f:
    f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj))
                 if isinstance(obj, h5py.Dataset) else None)
  return out


__all__ = ["read_h5", "read_safetensors", "read_state_dict", "read_torch"]

if sys.byteorder != "little":  # pragma: no cover
  raise ImportError("dmlx.models.weight_files assumes a little-endian host")
