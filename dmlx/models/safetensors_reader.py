"""Reader of ``.safetensors`` files (timm, Hugging Face) into NumPy: the
``safetensors`` package when installed, else a pure reader of the 8-byte
header length, the JSON header and the raw little-endian buffer."""
from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np

from dmlx.models.weight_dtypes import StateDict, _numpy_dtype

_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?", "U16": "<u2",
    "U32": "<u4", "U64": "<u8",
}


def read_safetensors(path: str, use_package: bool | None = None) -> StateDict:
  """Reads a ``.safetensors`` file (the format of timm / Hugging Face).

  Args:
    path: the file.
    use_package: use the ``safetensors`` package (``None``: if installed);
      ``False`` always uses the pure reader below.
  """
  if use_package is None:
    use_package = importlib.util.find_spec("safetensors") is not None
  if use_package:
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    try:
      with safe_open(path, framework="numpy") as f:
        return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
    except Exception:  # pylint: disable=broad-except
      pass  # e.g. bfloat16, which NumPy lacks: the pure reader handles it
  with open(path, "rb") as f:
    raw = f.read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + n])
  base, out = 8 + n, {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _numpy_dtype(_SAFETENSORS_DTYPES.get(info["dtype"], None) or
                         ("bf16" if info["dtype"] == "BF16" else None),
                         f"safetensors dtype {info['dtype']!r} of {name!r}")
    begin, end = info["data_offsets"]
    array = np.frombuffer(raw, dtype, count=(end - begin) // dtype.itemsize,
                          offset=base + begin)
    out[name] = array.reshape(info["shape"]).copy()
  return out
