"""Layers shared by the dmlx backbones: a CPU-friendly Conv, BatchNorm, pooling.

* ``Conv`` is a drop-in for ``flax.linen.Conv`` (2-D, channels last) with the
  same parameters -- ``'kernel'`` ``[kh, kw, c_in, c_out]`` and ``'bias'``
  ``[c_out]`` -- so checkpoints are interchangeable. A 1x1 convolution is one
  2-D matrix product, and a convolution whose output map is small (both
  spatial sides <= ``im2col_max_size``, known statically at trace time) is
  im2col + one matrix product: XLA:CPU runs
  ``lax.conv_general_dilated`` on maps of 1x1..4x4 at a few GFLOP/s and 1x1
  convolutions (forward and backward) at 9-32, a matmul at ~35-60 (see
  ``DEFAULT_IM2COL_MAX_SIZE``).
* ``batch_norm`` builds an ``nn.BatchNorm`` whose statistics are frozen when
  asked ("freeze BatchNorm statistics", as DML papers fine-tuning ImageNet
  models do); statistics live in the ``'batch_stats'`` collection.
* ``max_pool``, ``avg_pool`` and ``global_pool`` are
  :mod:`dmlx.models.pooling`'s, re-exported here.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dmlx.models.conv_grad import dw_chunk_images  # pylint: disable=unused-import (re-exported)
from dmlx.models.conv_grad import kernel_gradient_plan, lax_conv, xla_conv2d
from dmlx.models.pooling import POOLINGS, avg_pool, check_pooling, global_pool, max_pool  # pylint: disable=unused-import (re-exported)
from dmlx.models.windows import pair as _pair
from dmlx.models.windows import single_cpu_device as _single_cpu_device
from dmlx.models.windows import window_taps

Array = jax.Array
Dtype = Any
PaddingLike = Union[str, int, Sequence[int], Sequence[tuple[int, int]]]

# Largest spatial side of a Conv *output* map computed by im2col + matmul.
# Measured with this repo's Conv on a 2-core XLA:CPU machine (shared, noisy),
# fwd+bwd, batch 32, C_in = C_out = 512, ms per step (lax / im2col):
#   3x3 stride 1, input 1x1: 28 / 8     2x2: 794 / 17    3x3: 35 / 28
#                 4x4: 60 / 47 .. 51 / 45                5x5: 77 / 158 .. 118 / 82
#   3x3 stride 2, input 4x4 (out 2x2): 571 / 31   6x6 (out 3x3): 45 / 30
#                 8x8 (out 4x4): 65 / 50 .. 52 / 45;  C=256: 14 / 18 .. 12 / 13
#   1x1 convs: im2col (= a plain matmul) is 1-1.7x faster at every size <= 8.
# Outputs <= 3x3 are where lax.conv is reliably slower (up to 45x); at 4x4 the
# two are within noise of each other, so the default stops at 3.
# Measured again for ResNet-50 at 128 px (batch 8, one thread, fwd+bwd, ms,
# lax / im2col): every 1x1 conv is 1.6-4.1x faster as a matmul (256->64 @32:
# 64 / 15; 64->256 @32: 86 / 23; 1024->256 @8: 26 / 15; stride 2 512->1024:
# 61 / 27), so 1x1 convs always take the matmul path; 3x3 convs on 32x32
# maps are faster with lax (55 / 86), even at 8x8 (42 / 42), faster as im2col
# at 4x4 (67 / 40); the 7x7 stem is faster with lax (96 / 187). With the
# sliced kernel gradient of ``xla_conv2d`` (below), 3x3 convs on 4x4 maps at
# batch 32, 512 channels: lax 253 / im2col 120; 256 channels, batch 64: 92 /
# 87; on 8x8 maps the two trade places with the channel count (128: 83 / 110,
# 256: 178 / 141), so the default now stops at 4.
DEFAULT_IM2COL_MAX_SIZE = 4

def explicit_padding(
    padding: PaddingLike,
    in_size: tuple[int, int],
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
) -> list[tuple[int, int]]:
  """Returns ``[(lo, hi), (lo, hi)]`` for the two spatial axes.

  Accepts the padding forms of ``flax.linen.Conv``: ``'SAME'``, ``'VALID'``,
  an int, a pair of ints (symmetric per axis) or a pair of ``(lo, hi)`` pairs.
  """
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      raise ValueError(
          f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
    return [tuple(p) for p in lax.padtype_to_pads(
        in_size, kernel_size, strides, padding.upper())]
  if isinstance(padding, (int, np.integer)):
    return [(int(padding), int(padding))] * 2
  padding = list(padding)
  if len(padding) != 2:
    raise ValueError(f"padding must give 2 spatial axes, got {padding!r}")
  out = []
  for p in padding:
    if isinstance(p, (int, np.integer)):
      out.append((int(p), int(p)))
    elif len(p) == 2:
      out.append((int(p[0]), int(p[1])))
    else:
      raise ValueError(f"bad padding entry {p!r} in {padding!r}")
  return out


def im2col_conv2d(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: list[tuple[int, int]],
    precision: Any = None,
) -> Array:
  """2-D convolution as im2col + matrix product.

  Each output pixel gathers its ``kh * kw`` input taps (shifted, strided
  slices of the zero-padded input, stacked on a new axis) and contracts them
  with the kernel: ``y[b,i,j,o] = sum_{u,v,c} x_pad[b, i*sh+u, j*sw+v, c]
  kernel[u,v,c,o]``, the cross-correlation ``lax.conv_general_dilated``
  computes (no kernel flip).

  Args:
    x: ``[B, H, W, C_in]`` input.
    kernel: ``[kh, kw, C_in, C_out]``.
    strides: ``(sh, sw)``.
    padding: explicit ``[(lo, hi), (lo, hi)]``.
    precision: passed to ``jnp.dot``.

  Returns:
    ``[B, H_out, W_out, C_out]``.
  """
  kh, kw, _, _ = kernel.shape
  hp = x.shape[1] + padding[0][0] + padding[0][1]
  wp = x.shape[2] + padding[1][0] + padding[1][1]
  if hp < kh or wp < kw:
    raise ValueError(
        f"kernel {kernel.shape[:2]} larger than padded input {(hp, wp)}")
  out_size = ((hp - kh) // strides[0] + 1, (wp - kw) // strides[1] + 1)
  taps = window_taps(x, (kh, kw), strides, padding, out_size=out_size)
  # [B * ho * wo, kh * kw * C_in] @ [kh * kw * C_in, C_out]: the (tap,
  # channel) order of both operands is their memory order. A 5-D einsum
  # contracts them as (channel, tap), and XLA copies both into that order
  # in the forward and the backward pass (six transposes a convolution).
  patches = jnp.stack(taps, axis=3).reshape(-1, kh * kw * kernel.shape[2])
  y = jnp.dot(patches, kernel.reshape(-1, kernel.shape[3]),
              precision=precision)
  return y.reshape((x.shape[0],) + out_size + (kernel.shape[3],))


def pointwise_conv2d(x: Array, kernel: Array, strides: tuple[int, int],
                     padding: list[tuple[int, int]], precision: Any = None
                     ) -> Array:
  """A 1x1 convolution as one 2-D matrix product: ``[B*H*W, C_in] @ [C_in,
  C_out]`` after the padding and the strided subsampling. Same result as
  :func:`im2col_conv2d`; its backward pass is two plain matmuls (ResNet-50's
  64->256 on 32x32, batch 32, fwd+bwd: 79 ms, 196 through the im2col stack,
  219 as a 4-D einsum)."""
  if any(p != (0, 0) for p in padding):
    x = jnp.pad(x, [(0, 0), padding[0], padding[1], (0, 0)])
  sh, sw = strides
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  b, h, w, c = x.shape
  y = jnp.dot(x.reshape(b * h * w, c), kernel.reshape(c, kernel.shape[-1]),
              precision=precision)
  return y.reshape(b, h, w, kernel.shape[-1])


class Conv(nn.Module):
  """``flax.linen.Conv`` (2-D) with an im2col + matmul path for small maps.

  Same attributes (the subset the backbones use), parameter names, shapes and
  initialisers as ``nn.Conv``; the output is the same convolution whichever
  path runs. Every 1x1 convolution is one matrix product
  (:func:`pointwise_conv2d`); the im2col path is taken when both *output*
  spatial sides are ``<= im2col_max_size``, which covers the slow XLA:CPU
  cases (stride-1 convs on tiny maps and stride-2 convs into them).
  ``im2col_max_size=0`` disables both: ``lax.conv_general_dilated``
  everywhere. On a single XLA:CPU
  device the kernel gradient of a ``lax`` convolution is one matmul per
  kernel tap or a sum over slices of the batch, by shape
  (:func:`dmlx.models.conv_grad.kernel_gradient_plan`); elsewhere XLA's own
  gradient is used.
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  im2col_max_size: int = DEFAULT_IM2COL_MAX_SIZE

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 3:
      raise ValueError(f"Conv expects [..., H, W, C] input, got {x.shape}")
    kernel_size = _pair(self.kernel_size, "kernel_size")
    strides = _pair(self.strides, "strides")
    batch_shape = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    in_size = (x.shape[1], x.shape[2])
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    padding = explicit_padding(self.padding, in_size, kernel_size, strides)
    out_size = [(in_size[a] + sum(padding[a]) - kernel_size[a]) // strides[a]
                + 1 for a in range(2)]
    if min(out_size) < 1:
      raise ValueError(f"Conv kernel {kernel_size} with padding {padding} "
                       f"does not fit input of spatial size {in_size}")
    if self.im2col_max_size > 0 and kernel_size == (1, 1):
      y = pointwise_conv2d(x, kernel, strides, padding, self.precision)
    elif self.im2col_max_size > 0 and max(out_size) <= self.im2col_max_size:
      y = im2col_conv2d(x, kernel, strides, padding, self.precision)
    else:
      plan = kernel_gradient_plan(x.shape[0], out_size, x.shape[-1])
      # One CPU device only: slicing or reshaping a batch sharded over
      # devices would move rows between them (simulated CPU meshes, gloo
      # processes).
      if _single_cpu_device() and plan is not None:
        y = xla_conv2d(x, kernel, strides, tuple(map(tuple, padding)),
                       self.precision, plan)
      else:
        y = lax_conv(x, kernel, strides, padding, self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape(batch_shape + y.shape[1:])


def batch_norm(
    *,
    train: bool,
    frozen: bool = False,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    dtype: Dtype | None = None,
    name: str | None = None,
    **kwargs,
) -> nn.BatchNorm:
  """Batch normalisation (Ioffe & Szegedy, 2015, Alg. 1) with freezable stats.

  In training the batch mean/variance normalise and the running averages in
  ``'batch_stats'`` move by ``momentum`` (flax convention: ``new = momentum *
  old + (1 - momentum) * batch``; PyTorch's momentum 0.1 is flax's 0.9). With
  ``frozen=True`` the running statistics are used and left unchanged even when
  ``train`` is true ("frozen BatchNorm" fine-tuning); the affine scale and
  bias stay trainable parameters.

  Returns the module (call it on the input); built inside a compact method.
  """
  return nn.BatchNorm(use_running_average=(not train) or frozen,
                      momentum=momentum, epsilon=epsilon, dtype=dtype,
                      name=name, **kwargs)


def scaled(channels: int, width: float) -> int:
  """Channel count ``channels`` times a width multiplier, at least 1."""
  return max(1, int(round(channels * width)))

