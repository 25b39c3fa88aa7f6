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
* ``max_pool`` / ``avg_pool`` follow PyTorch/Caffe semantics (``ceil_mode``,
  ``count_include_pad``) so that torchvision / Caffe models port exactly.
* ``global_pool`` reduces ``[B, H, W, C]`` maps to ``[B, C]`` vectors.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dmlx.models.conv_grad import dw_chunk_images  # pylint: disable=unused-import (re-exported)
from dmlx.models.conv_grad import kernel_gradient_plan, lax_conv, xla_conv2d
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

POOLINGS = ("avg", "max")


def _pair(x: int | Sequence[int], what: str) -> tuple[int, int]:
  if isinstance(x, (int, np.integer)):
    return int(x), int(x)
  x = tuple(int(v) for v in x)
  if len(x) != 2:
    raise ValueError(f"{what} must be an int or a pair, got {x!r}")
  return x


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


def _single_cpu_device() -> bool:
  """Whether the CPU-only slice forms apply (one XLA:CPU device)."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1


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


def scaled(channels: int, width: float) -> int:
  """Channel count ``channels`` times a width multiplier, at least 1."""
  return max(1, int(round(channels * width)))

