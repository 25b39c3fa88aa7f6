"""GoogLeNet and BN-Inception backbones returning a dict of named features.

GoogLeNet (Szegedy et al., 2015, "Going Deeper with Convolutions") follows
torchvision's ``googlenet`` (BatchNorm after every conv, eps 1e-3, convs
without bias; aux classifiers and fc dropped). Parameter names mirror its
state dict (``.`` -> ``/``, list index ``.i`` -> ``_i``):

  torchvision                                 dmlx
  conv1.conv.weight, conv1.bn.*               conv1/conv/kernel, conv1/bn/*
  conv2.*, conv3.*                            conv2/*, conv3/*
  inception3a.branch1.conv.weight             inception3a/branch1/conv/kernel
  inception3a.branch2.{0,1}.{conv,bn}.*       inception3a/branch2_{0,1}/{conv,bn}/*
  inception3a.branch3.{0,1}.{conv,bn}.*       inception3a/branch3_{0,1}/{conv,bn}/*
  inception3a.branch4.1.{conv,bn}.*           inception3a/branch4_1/{conv,bn}/*
  (bn weight/bias -> params scale/bias; running_mean/var -> batch_stats mean/var;
   conv weights [O,I,kh,kw] -> [kh,kw,I,O])

torchvision's branch3 uses a 3x3 conv where the paper has 5x5 (a documented
quirk kept for its weights); ``branch3_kernel_size=5`` gives the paper's.

BN-Inception (Ioffe & Szegedy, 2015, "Batch Normalization", Sec. 4.1 / Fig. 5;
the Caffe model used by most DML papers, ported to PyTorch as Cadene's
``pretrainedmodels.bninception``) keeps the Caffe layer names. Stem layers
have the same names in dmlx; inception layers nest under their block:

  Caffe / Cadene                              dmlx
  conv1_7x7_s2.{weight,bias}                  conv1_7x7_s2/{kernel,bias}
  conv1_7x7_s2_bn.*                           conv1_7x7_s2_bn/*
  conv2_3x3_reduce[_bn], conv2_3x3[_bn]       same names
  inception_3a_1x1[_bn].*                     inception_3a/1x1[_bn]/*
  inception_3a_3x3_reduce[_bn], _3x3[_bn]     inception_3a/3x3_reduce[_bn], 3x3[_bn]
  inception_3a_double_3x3_reduce[_bn]         inception_3a/double_3x3_reduce[_bn]
  inception_3a_double_3x3_{1,2}[_bn]          inception_3a/double_3x3_{1,2}[_bn]
  inception_3a_pool_proj[_bn]                 inception_3a/pool_proj[_bn]

BN-Inception convs carry a bias (as in Caffe); BatchNorm eps is 1e-5.

Features returned (forward order). GoogLeNet: ``conv1``, ``pool1``, ``conv2``,
``conv3``, ``pool2``, ``inception_3a``, ``inception_3b``, ``pool3``,
``inception_4a`` .. ``inception_4e``, ``pool4``, ``inception_5a``,
``inception_5b``, ``pooled``. BN-Inception: ``conv1``, ``pool1``, ``conv2``,
``pool2``, ``inception_3a`` .. ``inception_3c``, ``inception_4a`` ..
``inception_4e``, ``inception_5a``, ``inception_5b``, ``pooled``. Maps are
``[B, h, w, c]``; ``pooled`` is ``[B, c]`` (global average by default).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmlx.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Norm:
  """Settings every conv + BN pair of a network shares."""
  dtype: Any
  momentum: float
  epsilon: float
  frozen: bool
  im2col_max_size: int
  kernel_init: Any


def _conv_bn_relu(x, features, kernel, strides, padding, cfg: _Norm, train,
                  conv_name, bn_name, use_bias):
  """conv -> BN -> ReLU, modules created in the caller's compact scope."""
  x = layers.Conv(features, kernel, strides, padding=padding,
                  use_bias=use_bias, dtype=cfg.dtype,
                  kernel_init=cfg.kernel_init,
                  im2col_max_size=cfg.im2col_max_size, name=conv_name)(x)
  x = layers.batch_norm(train=train, frozen=cfg.frozen,
                        momentum=cfg.momentum, epsilon=cfg.epsilon,
                        dtype=cfg.dtype, name=bn_name)(x)
  return nn.relu(x)


class BasicConv2d(nn.Module):
  """torchvision's ``BasicConv2d``: conv (no bias) -> BN -> ReLU."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  cfg: _Norm | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    return _conv_bn_relu(x, self.features, self.kernel_size, self.strides,
                         self.padding, self.cfg, train, "conv", "bn",
                         use_bias=False)


class GoogLeNetBlock(nn.Module):
  """Inception module with dimension reductions (Szegedy et al., 2015, Fig. 2b).

  Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3;
  1x1 -> 5x5 (3x3 in torchvision); 3x3 max pool -> 1x1 ``pool_proj``.
  ``channels = (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)``.
  """
  channels: Sequence[int]
  branch3_kernel_size: int = 3
  cfg: _Norm | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c1, c3r, c3, c5r, c5, cp = self.channels
    k5 = self.branch3_kernel_size
    b1 = BasicConv2d(c1, 1, cfg=self.cfg, name="branch1")(x, train)
    b2 = BasicConv2d(c3r, 1, cfg=self.cfg, name="branch2_0")(x, train)
    b2 = BasicConv2d(c3, 3, padding=1, cfg=self.cfg, name="branch2_1")(
        b2, train)
    b3 = BasicConv2d(c5r, 1, cfg=self.cfg, name="branch3_0")(x, train)
    b3 = BasicConv2d(c5, k5, padding=k5 // 2, cfg=self.cfg,
                     name="branch3_1")(b3, train)
    b4 = layers.max_pool(x, 3, 1, padding=1, ceil_mode=True)
    b4 = BasicConv2d(cp, 1, cfg=self.cfg, name="branch4_1")(b4, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


# (name, (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)); torchvision.
GOOGLENET_BLOCKS = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)


class _InceptionBase(nn.Module):
  """Attributes shared by GoogLeNet and BNInception."""
  width: float = 1.0
  pooling: str = "avg"
  small_inputs: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  frozen_bn: bool = False
  im2col_max_size: int = layers.DEFAULT_IM2COL_MAX_SIZE

  def _check(self, x):
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects [B, H, W, C] images, got {x.shape}")
    layers.check_pooling(self.pooling)
    if self.width <= 0:
      raise ValueError(f"width must be positive, got {self.width}")

  def _c(self, channels: int) -> int:
    return layers.scaled(channels, self.width)


class GoogLeNet(_InceptionBase):
  """GoogLeNet / Inception-v1 feature extractor (torchvision variant, with BN).

  Attributes:
    width: multiplier on every channel count (1.0 = the paper's widths).
    pooling: global pooling for ``'pooled'``: ``'avg'`` (paper) or ``'max'``.
    small_inputs: stride 1 in ``conv1`` (for 32-96 px images); parameters
      are unchanged, so ImageNet weights still load.
    branch3_kernel_size: 3 (torchvision weights) or 5 (the paper).
    dtype, bn_momentum, frozen_bn, im2col_max_size: as in ``ResNet``.
  The input is used as given (torchvision's ``transform_input`` re-scaling is
  the data pipeline's job).
  """
  branch3_kernel_size: int = 3
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Maps normalised images ``[B, H, W, C]`` to a dict of named features."""
    self._check(x)
    cfg = _Norm(self.dtype, self.bn_momentum, self.bn_epsilon, self.frozen_bn,
                self.im2col_max_size,
                nn.initializers.truncated_normal(0.01))
    f: dict[str, Array] = collections.OrderedDict()
    stride = 1 if self.small_inputs else 2
    f["conv1"] = x = BasicConv2d(self._c(64), 7, stride, 3, cfg=cfg,
                                 name="conv1")(x, train)
    f["pool1"] = x = layers.max_pool(x, 3, 2, ceil_mode=True)
    f["conv2"] = x = BasicConv2d(self._c(64), 1, cfg=cfg, name="conv2")(
        x, train)
    f["conv3"] = x = BasicConv2d(self._c(192), 3, 1, 1, cfg=cfg,
                                 name="conv3")(x, train)
    f["pool2"] = x = layers.max_pool(x, 3, 2, ceil_mode=True)
    for name, channels in GOOGLENET_BLOCKS:
      if name == "4a":
        f["pool3"] = x = layers.max_pool(x, 3, 2, ceil_mode=True)
      if name == "5a":
        f["pool4"] = x = layers.max_pool(x, 2, 2, ceil_mode=True)
      x = GoogLeNetBlock(tuple(self._c(c) for c in channels),
                         self.branch3_kernel_size, cfg=cfg,
                         name=f"inception{name}")(x, train)
      f[f"inception_{name}"] = x
    f["pooled"] = layers.global_pool(x, self.pooling)
    return f


class BNInceptionBlock(nn.Module):
  """Inception module of BN-Inception (Ioffe & Szegedy, 2015, Sec. 4.1).

  The 5x5 branch of GoogLeNet becomes two stacked 3x3 convs ("double 3x3");
  ``pool`` is ``'avg'`` or ``'max'``. Stride-2 modules (3c, 4e) have no 1x1
  branch and pass their max pool through without projection (``c1 = cp = 0``).
  ``channels = (1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool proj)``.
  """
  channels: Sequence[int]
  pool: str = "avg"
  strides: int = 1
  cfg: _Norm | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    c1, c3r, c3, cdr, cd, cp = self.channels
    s = self.strides

    def cbr(y, c, k, stride, name):
      return _conv_bn_relu(y, c, k, stride, k // 2, self.cfg, train, name,
                           f"{name}_bn", use_bias=True)

    outs = []
    if c1:
      outs.append(cbr(x, c1, 1, 1, "1x1"))
    outs.append(cbr(cbr(x, c3r, 1, 1, "3x3_reduce"), c3, 3, s, "3x3"))
    y = cbr(x, cdr, 1, 1, "double_3x3_reduce")
    y = cbr(y, cd, 3, 1, "double_3x3_1")
    outs.append(cbr(y, cd, 3, s, "double_3x3_2"))
    if s == 1:
      pool = layers.avg_pool if self.pool == "avg" else layers.max_pool
      y = pool(x, 3, 1, padding=1, ceil_mode=True)
    else:
      y = layers.max_pool(x, 3, s, ceil_mode=True)
    if cp:
      y = cbr(y, cp, 1, 1, "pool_proj")
    outs.append(y)
    if len({o.shape[1:3] for o in outs}) != 1:
      raise ValueError(
          f"BN-Inception stride-{s} block got a {x.shape[1:3]} input whose "
          f"branches disagree in size {[o.shape[1:3] for o in outs]}; use an "
          "image size giving even maps here (e.g. 224, 227, 96, 64)")
    return jnp.concatenate(outs, axis=-1)


# (name, channels, pool, strides); from the Caffe BN-Inception prototxt.
BNINCEPTION_BLOCKS = (
    ("3a", (64, 64, 64, 64, 96, 32), "avg", 1),
    ("3b", (64, 64, 96, 64, 96, 64), "avg", 1),
    ("3c", (0, 128, 160, 64, 96, 0), "max", 2),
    ("4a", (224, 64, 96, 96, 128, 128), "avg", 1),
    ("4b", (192, 96, 128, 96, 128, 128), "avg", 1),
    ("4c", (160, 128, 160, 128, 160, 128), "avg", 1),
    ("4d", (96, 128, 192, 160, 192, 128), "avg", 1),
    ("4e", (0, 128, 192, 192, 256, 0), "max", 2),
    ("5a", (352, 192, 320, 160, 224, 128), "avg", 1),
    ("5b", (352, 192, 320, 192, 224, 128), "max", 1),
)


class BNInception(_InceptionBase):
  """BN-Inception feature extractor (Ioffe & Szegedy, 2015), Caffe layout.

  The backbone of most DML papers from 2016-2020 (1024-d ``pooled``).

  Attributes:
    width: multiplier on every channel count (1.0 = the paper's widths).
    pooling: global pooling for ``'pooled'``: ``'avg'`` (paper) or ``'max'``.
    small_inputs: stride 1 in ``conv1_7x7_s2`` (for 32-96 px images).
    dtype, bn_momentum, frozen_bn, im2col_max_size: as in ``ResNet``.
  """
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Maps normalised images ``[B, H, W, C]`` to a dict of named features."""
    self._check(x)
    cfg = _Norm(self.dtype, self.bn_momentum, self.bn_epsilon, self.frozen_bn,
                self.im2col_max_size,
                nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    f: dict[str, Array] = collections.OrderedDict()
    stride = 1 if self.small_inputs else 2
    x = _conv_bn_relu(x, self._c(64), 7, stride, 3, cfg, train,
                      "conv1_7x7_s2", "conv1_7x7_s2_bn", use_bias=True)
    f["conv1"] = x
    f["pool1"] = x = layers.max_pool(x, 3, 2, ceil_mode=True)
    x = _conv_bn_relu(x, self._c(64), 1, 1, 0, cfg, train,
                      "conv2_3x3_reduce", "conv2_3x3_reduce_bn", use_bias=True)
    x = _conv_bn_relu(x, self._c(192), 3, 1, 1, cfg, train, "conv2_3x3",
                      "conv2_3x3_bn", use_bias=True)
    f["conv2"] = x
    f["pool2"] = x = layers.max_pool(x, 3, 2, ceil_mode=True)
    for name, channels, pool, strides in BNINCEPTION_BLOCKS:
      x = BNInceptionBlock(tuple(self._c(c) if c else 0 for c in channels),
                           pool, strides, cfg=cfg,
                           name=f"inception_{name}")(x, train)
      f[f"inception_{name}"] = x
    f["pooled"] = layers.global_pool(x, self.pooling)
    return f
