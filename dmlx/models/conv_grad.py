"""The convolution kernel gradient XLA:CPU computes slowly, computed in slices.

:func:`xla_conv2d` is ``lax.conv_general_dilated`` (NHWC, HWIO) with a custom
VJP whose kernel gradient is a sum over slices of the batch;
:class:`dmlx.models.layers.Conv` uses it on a single CPU device.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
from jax import lax

Array = jax.Array

# Output positions (images x H_out x W_out) per slice of the batch when the
# kernel gradient of a lax convolution is computed on XLA:CPU (see
# ``xla_conv2d``), and the most images per slice.
DW_CHUNK_POSITIONS = 8192
DW_CHUNK_MAX_IMAGES = 8


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def xla_conv2d(x: Array, kernel: Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], ...], precision: Any,
               dw_chunk: int) -> Array:
  """``lax.conv_general_dilated`` (NHWC, HWIO) whose kernel gradient is
  summed over slices of ``dw_chunk`` images.

  The forward pass and the input gradient are XLA's own. The kernel
  gradient, a contraction over every (image, output position), is what
  XLA:CPU computes slowly when that contraction is long and not in slices:
  measured fwd / kernel-gradient ms, one thread, 3x3 conv 64->64 on 32x32
  maps, batch 32: 36 / 618 whole, 76 in slices of 8 images; ResNet-18's
  7x7 stem at 64 px, batch 64: 21 / 254 whole, 43 in slices of 8. The sum
  is the same gradient up to float rounding.
  """
  return lax_conv(x, kernel, strides, padding, precision)


def _xla_conv2d_fwd(x, kernel, strides, padding, precision, dw_chunk):
  return lax_conv(x, kernel, strides, padding, precision), (x, kernel)


def _xla_conv2d_bwd(strides, padding, precision, dw_chunk, res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x_: lax_conv(x_, kernel, strides, padding,
                                          precision), x)
  (dx,) = vjp_x(g)
  dw = None
  for start in range(0, x.shape[0], dw_chunk):
    xs, gs = x[start:start + dw_chunk], g[start:start + dw_chunk]
    _, vjp_w = jax.vjp(lambda w_, xs=xs: lax_conv(xs, w_, strides, padding,
                                                   precision), kernel)
    (part,) = vjp_w(gs)
    dw = part if dw is None else dw + part
  return dx, dw


xla_conv2d.defvjp(_xla_conv2d_fwd, _xla_conv2d_bwd)
