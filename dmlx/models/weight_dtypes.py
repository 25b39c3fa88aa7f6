"""NumPy dtypes of checkpoint tensors for the readers of
``dmlx.models.weight_files``: the state-dict type and the dtype codes
(bfloat16 through ``ml_dtypes``)."""
from __future__ import annotations

import numpy as np

try:  # bfloat16 for NumPy; a JAX dependency, so always present with dmlx.
  import ml_dtypes
  _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
  _BF16 = None

StateDict = dict[str, np.ndarray]


def _numpy_dtype(code: str | None, what: str) -> np.dtype:
  if code == "bf16":
    if _BF16 is None:
      raise ValueError(f"{what}: bfloat16 needs the ml_dtypes package")
    return _BF16
  if code is None:
    raise ValueError(f"unsupported {what}")
  return np.dtype(code)
