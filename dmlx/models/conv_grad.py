"""The convolution kernel gradient XLA:CPU computes slowly, computed faster.

:func:`xla_conv2d` is ``lax.conv_general_dilated`` (NHWC, HWIO) with a custom
VJP whose kernel gradient is either one matmul per kernel tap (the input
window of that tap against the output gradient, for inputs of
``TAP_DW_MIN_FEATURES`` or more channels) or XLA's own gradient summed over
slices of the batch; :func:`kernel_gradient_plan` picks one from the shapes
and :class:`dmlx.models.layers.Conv` uses it on a single CPU device.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
from jax import lax

from dmlx.models.windows import window_taps

Array = jax.Array

# Output positions (images x H_out x W_out) per slice of the batch when the
# kernel gradient of a lax convolution is computed on XLA:CPU (see
# ``xla_conv2d``), and the most images per slice.
DW_CHUNK_POSITIONS = 8192
DW_CHUNK_MAX_IMAGES = 8
# One matmul per kernel tap from this many input channels and output
# positions up (below, XLA's gradient is as fast or, for the 3-channel
# stems, the batch slices are faster).
TAP_DW_MIN_FEATURES = 64
TAP_DW_MIN_POSITIONS = 2048
# Output positions per image slice of the per-tap kernel gradient (a scan
# over slices keeps each slice's input windows in cache). Batch 64, 3x3,
# ms at 1024 / 2048 / 4096 / no slices: 64->64 on 16x16, one thread 13.9 /
# 13.9 / 15.6 / 19.4, two 15.8 / 14.6 / 16.0 / 15.6; on 32x32, one thread
# 57 / 54 / 59 / 100, two 63 / 55 / 58 / 77.
TAP_DW_SLICE_POSITIONS = 2048


def lax_conv(x: Array, kernel: Array, strides, padding, precision) -> Array:
  """``lax.conv_general_dilated`` with NHWC inputs and HWIO kernels."""
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=precision)


def dw_chunk_images(batch: int, out_size: Sequence[int]) -> int:
  """Images per batch slice of :func:`xla_conv2d`'s kernel gradient: the
  whole batch (no slicing, XLA's own gradient) when it has at most
  ``DW_CHUNK_POSITIONS`` output positions, where slicing gains nothing and
  small runs keep the exact numerics of multi-device runs."""
  per_image = max(1, int(out_size[0]) * int(out_size[1]))
  if batch * per_image <= DW_CHUNK_POSITIONS:
    return int(batch)
  return int(max(1, min(DW_CHUNK_MAX_IMAGES, DW_CHUNK_POSITIONS // per_image,
                        batch)))


def kernel_gradient_plan(batch: int, out_size: Sequence[int],
                         in_features: int) -> int | None:
  """How :func:`xla_conv2d` computes the kernel gradient on one CPU device.

  Returns ``0`` for one matmul per kernel tap (:func:`tap_kernel_gradient`:
  at least ``TAP_DW_MIN_FEATURES`` input channels and
  ``TAP_DW_MIN_POSITIONS`` output positions), a slice size in images for
  XLA's gradient summed over batch slices (more than ``DW_CHUNK_POSITIONS``
  positions, :func:`dw_chunk_images`), or ``None`` for XLA's own gradient
  (small convolutions, where neither gains, keep the numerics of
  multi-device runs).
  """
  positions = int(batch) * max(1, int(out_size[0]) * int(out_size[1]))
  if in_features >= TAP_DW_MIN_FEATURES and positions >= TAP_DW_MIN_POSITIONS:
    return 0
  chunk = dw_chunk_images(batch, out_size)
  return chunk if chunk < batch else None


def tap_kernel_gradient(x: Array, g: Array, kernel_size: Sequence[int],
                        strides: Sequence[int],
                        padding: Sequence[Sequence[int]]) -> Array:
  """The kernel gradient of a stride-``strides`` NHWC convolution as one
  matmul per kernel tap.

  For tap ``(i, j)`` the gradient is ``X_ij^T G``, with ``X_ij`` the
  ``[images x positions, C_in]`` input window that tap sees and ``G`` the
  ``[images x positions, C_out]`` output gradient: a GEMM with a long
  contraction. It is computed as ``G^T X_ij`` with ``G^T`` materialised
  (behind optimization barriers), so that every product is a canonical
  ``[M, K] @ [K, N]`` dot, which XLA:CPU hands to its fast library kernel
  (a dot contracting the first axis of both operands goes to the generic
  GEMM instead), and summed over slices of about ``TAP_DW_SLICE_POSITIONS``
  output positions (a scan), so each slice's windows stay in cache.
  Measured, one thread, batch 64, ms (XLA's gradient / the earlier per-tap
  form / this one, in slices of 2048 positions), on an AVX-512 Xeon: 3x3
  64->64 on 16x16 maps 34.7 / 27.5 / 13.9; on 32x32 137 / 116 / 54;
  128->128 on 8x8 10.1 / 15.3 / 10.8.
  Earlier, on an AVX2 EPYC (XLA's / batch slices / the earlier per-tap
  form): 3x3 128->128 on 16x16, batch 32: 102 / 106 / 63; 64->64 on 32x32,
  batch 32: 783 / 136 / 88. Equal to XLA's up to float rounding.
  """
  kh, kw = (int(k) for k in kernel_size)
  out_features, in_features = g.shape[-1], x.shape[-1]
  batch = x.shape[0]
  per_image = max(1, int(g.shape[1]) * int(g.shape[2]))
  most = max(1, TAP_DW_SLICE_POSITIONS // per_image)
  images = max(d for d in range(1, min(most, batch) + 1) if batch % d == 0)
  barrier = lax.optimization_barrier

  def slice_gradient(x, g):
    g_t = barrier(g.reshape(-1, out_features).T)           # [C_out, P]
    return jax.numpy.stack([
        barrier(g_t @ tap.reshape(-1, in_features))          # [C_out, C_in]
        for tap in window_taps(x, (kh, kw), strides, padding,
                               out_size=g.shape[1:3])])

  if images == batch:
    dw_t = slice_gradient(x, g)
  else:
    split = lambda a: a.reshape((batch // images, images) + a.shape[1:])
    zeros = jax.numpy.zeros((kh * kw, out_features, in_features),
                            jax.numpy.result_type(x, g))
    dw_t, _ = lax.scan(lambda acc, xg: (acc + slice_gradient(*xg), None),
                       zeros, (split(x), split(g)))
  return dw_t.transpose(0, 2, 1).reshape(kh, kw, in_features, out_features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def xla_conv2d(x: Array, kernel: Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], ...], precision: Any,
               dw_chunk: int) -> Array:
  """``lax.conv_general_dilated`` (NHWC, HWIO) with a faster kernel gradient.

  The forward pass and the input gradient are XLA's own. The kernel
  gradient, a contraction over every (image, output position), is what
  XLA:CPU computes slowly: ``dw_chunk == 0`` computes it as one matmul per
  kernel tap (:func:`tap_kernel_gradient`), ``dw_chunk > 0`` as XLA's
  gradient summed over slices of ``dw_chunk`` images (measured fwd /
  kernel-gradient ms, one thread, ResNet-18's 7x7 stem at 64 px, batch 64:
  21 / 254 whole, 43 in slices of 8; the per-tap form, 99, loses on 3 input
  channels). :func:`kernel_gradient_plan` chooses. Either is the same
  gradient up to float rounding.
  """
  return lax_conv(x, kernel, strides, padding, precision)


def _xla_conv2d_fwd(x, kernel, strides, padding, precision, dw_chunk):
  return lax_conv(x, kernel, strides, padding, precision), (x, kernel)


def _xla_conv2d_bwd(strides, padding, precision, dw_chunk, res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x_: lax_conv(x_, kernel, strides, padding,
                                          precision), x)
  (dx,) = vjp_x(g)
  if dw_chunk == 0:
    dw = tap_kernel_gradient(x, g, kernel.shape[:2], strides, padding)
    return dx, dw.astype(kernel.dtype)
  dw = None
  for start in range(0, x.shape[0], dw_chunk):
    xs, gs = x[start:start + dw_chunk], g[start:start + dw_chunk]
    _, vjp_w = jax.vjp(lambda w_, xs=xs: lax_conv(xs, w_, strides, padding,
                                                   precision), kernel)
    (part,) = vjp_w(gs)
    dw = part if dw is None else dw + part
  return dx, dw


xla_conv2d.defvjp(_xla_conv2d_fwd, _xla_conv2d_bwd)
