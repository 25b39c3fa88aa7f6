"""The strided window slices ("taps") of a padded NHWC input.

One piece for the three places that read a sliding window as shifted
strided slices: the slice-form pools and im2col (:mod:`dmlx.models.layers`)
and the per-tap kernel gradient (:mod:`dmlx.models.conv_grad`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def window_taps(x: Array, window: Sequence[int], stride: Sequence[int],
                pads: Sequence[Sequence[int]], fill: float = 0.0,
                out_size: Optional[Sequence[int]] = None) -> list[Array]:
  """The ``window[0] * window[1]`` strided slices of ``x`` padded with
  ``fill``: tap ``(u, v)`` holds ``x_pad[..., i*s0 + u, j*s1 + v, :]`` at
  output ``(i, j)``, taps in row-major ``(u, v)`` order.

  ``x`` is ``[..., H, W, C]``; ``pads`` is ``[(lo, hi), (lo, hi)]``. A
  negative ``hi`` (pooling's floor mode leaving input rows unused) pads
  nothing. ``out_size`` (``(H_out, W_out)``) defaults to the number of
  whole windows in the padded input.
  """
  pads = [(int(lo), max(int(hi), 0)) for lo, hi in pads]
  xp = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [pads[0], pads[1], (0, 0)],
               constant_values=fill)
  s0, s1 = (int(s) for s in stride)
  if out_size is None:
    h, w = xp.shape[-3], xp.shape[-2]
    out_size = ((h - window[0]) // s0 + 1, (w - window[1]) // s1 + 1)
  ho, wo = (int(o) for o in out_size)
  return [xp[..., u:u + (ho - 1) * s0 + 1:s0, v:v + (wo - 1) * s1 + 1:s1, :]
          for u in range(int(window[0])) for v in range(int(window[1]))]


def pair(x: int | Sequence[int], what: str) -> tuple[int, int]:
  """``x`` as an ``(int, int)`` pair; ``what`` names it in the error."""
  if isinstance(x, (int, np.integer)):
    return int(x), int(x)
  x = tuple(int(v) for v in x)
  if len(x) != 2:
    raise ValueError(f"{what} must be an int or a pair, got {x!r}")
  return x


def single_cpu_device() -> bool:
  """Whether the CPU-only slice forms apply (one XLA:CPU device)."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1
