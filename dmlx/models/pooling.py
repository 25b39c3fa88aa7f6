"""Pooling with PyTorch / Caffe semantics over NHWC maps (re-exported by
:mod:`dmlx.models.layers`).

* ``max_pool`` / ``avg_pool`` follow PyTorch/Caffe semantics (``ceil_mode``,
  ``count_include_pad``) so that torchvision / Caffe models port exactly; on
  one XLA:CPU device they are computed from the window's strided slices.
* ``global_pool`` reduces ``[B, H, W, C]`` maps to ``[B, C]`` vectors.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dmlx.models.windows import pair as _pair
from dmlx.models.windows import single_cpu_device as _single_cpu_device
from dmlx.models.windows import window_taps

Array = jax.Array

POOLINGS = ("avg", "max")


def _pool_padding(size: int, window: int, stride: int, pad: int,
                  ceil_mode: bool) -> tuple[int, int, int]:
  """PyTorch pooling output size and ``(lo, hi)`` padding along one axis."""
  span = size + 2 * pad - window
  if span < 0:
    raise ValueError(
        f"pool window {window} larger than padded input {size + 2 * pad}")
  if ceil_mode:
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad:  # last window must start inside
      out -= 1
  else:
    out = span // stride + 1
  hi = (out - 1) * stride + window - size - pad
  return out, pad, hi


def _pool_pads(x: Array, window, stride, padding, ceil_mode):
  window, stride, padding = (_pair(window, "window"), _pair(stride, "stride"),
                             _pair(padding, "padding"))
  pads = [_pool_padding(x.shape[-3 + a], window[a], stride[a], padding[a],
                        ceil_mode)[1:] for a in range(2)]
  return window, stride, padding, pads


def max_pool(x: Array, window: int | Sequence[int], stride: int | Sequence[int],
             padding: int | Sequence[int] = 0, ceil_mode: bool = False
             ) -> Array:
  """Max pooling over ``[B, H, W, C]`` with PyTorch ``MaxPool2d`` semantics.

  ``padding`` is symmetric (padded with -inf); ``ceil_mode`` rounds the output
  size up as Caffe and ``torch.nn.MaxPool2d(ceil_mode=True)`` do.

  On one XLA:CPU device, computed as the elementwise maximum of the window's
  strided slices with a custom gradient (:func:`_slice_max_pool`), not
  ``lax.reduce_window``, whose ``select_and_scatter`` gradient XLA:CPU runs
  7-17x slower. The gradient is reduce_window's and PyTorch's: where several
  inputs of a window tie for the maximum, it goes to the first of them in
  row-major window order. On other backends, and with several devices,
  ``lax.reduce_window`` is used.
  """
  window, stride, _, pads = _pool_pads(x, window, stride, padding, ceil_mode)
  if not _single_cpu_device():
    # A Python-scalar identity lets JAX recognise the max monoid.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + window + (1,),
                             (1,) + stride + (1,), [(0, 0)] + pads + [(0, 0)])
  return _slice_max_pool(x, window, stride, tuple(map(tuple, pads)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _slice_max_pool(x: Array, window: tuple[int, int], stride: tuple[int, int],
                    pads: tuple[tuple[int, int], ...]) -> Array:
  """Max pool as the maximum of the window's strided slices (:func:`max_pool`).

  The backward pass reads only the index of each window's first maximum
  (int8 or int32, saved by the forward pass) and the output gradient: one
  loop over the input that XLA fuses (the transpose of the slices), where
  differentiating the chain of maxima re-reads every tap through every
  later comparison and recomputes the pooled input's producers for each
  (ResNet-18's stem, BN + ReLU + 3x3/2 pool on [64, 32, 32, 64], fwd+bwd at
  one thread: 163 -> 64 ms; PyTorch 71).
  """
  return _slice_max_pool_fwd(x, window, stride, pads)[0]


def _slice_max_pool_fwd(x, window, stride, pads):
  taps = window_taps(x, window, stride, pads, -jnp.inf)
  index_dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
  out, first = taps[0], jnp.zeros(taps[0].shape, index_dtype)
  for k, tap in enumerate(taps[1:], 1):
    first = jnp.where(tap > out, jnp.asarray(k, index_dtype), first)
    out = jnp.maximum(out, tap)  # NaN propagates, as in PyTorch
  # An empty array carries the input's shape (static) to the backward pass.
  return out, (first, jnp.zeros((0,) + x.shape, x.dtype))


def _slice_max_pool_bwd(window, stride, pads, res, g):
  first, like = res
  shape = like.shape[1:]
  _, transpose = jax.vjp(
      lambda x: window_taps(x, window, stride, pads, -jnp.inf),
      jnp.zeros(shape, g.dtype))
  return transpose([jnp.where(first == k, g, jnp.zeros((), g.dtype))
                    for k in range(window[0] * window[1])])


_slice_max_pool.defvjp(_slice_max_pool_fwd, _slice_max_pool_bwd)


def avg_pool(x: Array, window: int | Sequence[int], stride: int | Sequence[int],
             padding: int | Sequence[int] = 0, ceil_mode: bool = False,
             count_include_pad: bool = True) -> Array:
  """Average pooling with PyTorch ``AvgPool2d`` / Caffe ``AVE`` semantics.

  With ``count_include_pad`` the divisor counts the symmetric zero padding
  (but never the extra cells ``ceil_mode`` adds past it), as PyTorch does.
  """
  window, stride, padding, pads = _pool_pads(x, window, stride, padding,
                                             ceil_mode)
  # The sum of the window's strided slices (see max_pool), on every backend:
  # a sum has no ties, so one and several devices agree up to rounding.
  taps = window_taps(x, window, stride, pads, 0.0)
  total = taps[0]
  for tap in taps[1:]:
    total = total + tap
  counts = []
  for a in range(2):  # the divisor is separable: a product of per-axis counts
    size, out = x.shape[-3 + a], total.shape[-3 + a]
    lo, hi = (0, size + 2 * padding[a]) if count_include_pad else (
        padding[a], padding[a] + size)
    starts = np.arange(out) * stride[a]
    counts.append(np.minimum(starts + window[a], hi) - np.maximum(starts, lo))
  count = np.outer(counts[0], counts[1])[:, :, None]
  return total / jnp.asarray(count, x.dtype)


def global_pool(x: Array, pooling: str = "avg") -> Array:
  """Global pooling of ``[..., H, W, C]`` feature maps to ``[..., C]``.

  ``'avg'``: global average pooling (Lin et al., 2014, "Network in Network");
  ``'max'``: global max pooling (Tolias et al., 2016, MAC), the "simple MAX
  pooling" Vo & Hays (2018) put after VGG-16's conv layers.
  """
  if pooling == "avg":
    return jnp.mean(x, axis=(-3, -2))
  if pooling == "max":
    return jnp.max(x, axis=(-3, -2))
  raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def check_pooling(pooling: str) -> None:
  """Raises ValueError unless ``pooling`` is a known global pooling."""
  if pooling not in POOLINGS:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
