"""ResNet backbones (He et al., 2016) returning a dict of named features.

Parameter naming mirrors torchvision's ``resnet*`` state dicts so that a
loader can map them one to one (``.`` becomes ``/``, list indices ``_``):

  torchvision                          dmlx (params / batch_stats)
  conv1.weight [O,I,kh,kw]             conv1/kernel [kh,kw,I,O]
  bn1.{weight,bias}                    bn1/{scale,bias}            (params)
  bn1.{running_mean,running_var}       bn1/{mean,var}              (batch_stats)
  layer{s}.{b}.conv{k}.weight          layer{s}_{b}/conv{k}/kernel
  layer{s}.{b}.bn{k}.*                 layer{s}_{b}/bn{k}/*
  layer{s}.{b}.downsample.0.weight     layer{s}_{b}/downsample_conv/kernel
  layer{s}.{b}.downsample.1.*          layer{s}_{b}/downsample_bn/*
  fc.*                                 (none: heads live in dmlx.models.heads)

Convolutions have no bias (as in torchvision); BatchNorm epsilon is 1e-5 and
flax momentum 0.9 equals PyTorch momentum 0.1. Stride sits on the 3x3
convolution of a bottleneck ("ResNet v1.5", torchvision's choice).

Features returned (in forward order): ``'stem'`` (after conv1/bn1/relu and
the stem max pool), ``'stage1'`` .. ``'stage4'`` (outputs of layer1..layer4,
``[B, h, w, c]``) and ``'pooled'`` (``[B, c]``, global pooling of the last
stage, average by default).
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmlx.models import layers

Array = jax.Array

# Kaiming-normal, fan_out (He et al., 2015), torchvision's ResNet conv init.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _BlockBase(nn.Module):
  """Fields shared by BasicBlock and Bottleneck."""
  filters: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  frozen_bn: bool = False
  zero_init_residual: bool = False
  im2col_max_size: int = layers.DEFAULT_IM2COL_MAX_SIZE

  def _conv(self, features, kernel, strides, name):
    pad = kernel // 2
    return layers.Conv(features, kernel, strides, padding=pad, use_bias=False,
                       dtype=self.dtype, kernel_init=_conv_init,
                       im2col_max_size=self.im2col_max_size, name=name)

  def _bn(self, train, name, zero=False):
    kw = {"scale_init": nn.initializers.zeros_init()} if zero else {}
    return layers.batch_norm(train=train, frozen=self.frozen_bn,
                             momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype,
                             name=name, **kw)

  def _shortcut(self, x, out_features, train):
    if self.strides == 1 and x.shape[-1] == out_features:
      return x
    x = self._conv(out_features, 1, self.strides, "downsample_conv")(x)
    return self._bn(train, "downsample_bn")(x)


class BasicBlock(_BlockBase):
  """Two 3x3 convolutions with an identity shortcut (He et al., 2016, Fig. 2).

  ``y = relu(F(x) + shortcut(x))``; the shortcut is a strided 1x1 conv + BN
  ("option B") when the shape changes.
  """
  expansion = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = self._conv(self.filters, 3, self.strides, "conv1")(x)
    y = nn.relu(self._bn(train, "bn1")(y))
    y = self._conv(self.filters, 3, 1, "conv2")(y)
    y = self._bn(train, "bn2", zero=self.zero_init_residual)(y)
    return nn.relu(y + self._shortcut(x, self.filters, train))


class Bottleneck(_BlockBase):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4 (He et al., 2016, Fig. 5)."""
  expansion = 4

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    out = self.filters * self.expansion
    y = self._conv(self.filters, 1, 1, "conv1")(x)
    y = nn.relu(self._bn(train, "bn1")(y))
    y = self._conv(self.filters, 3, self.strides, "conv2")(y)
    y = nn.relu(self._bn(train, "bn2")(y))
    y = self._conv(out, 1, 1, "conv3")(y)
    y = self._bn(train, "bn3", zero=self.zero_init_residual)(y)
    return nn.relu(y + self._shortcut(x, out, train))


class ResNet(nn.Module):
  """ResNet feature extractor (He et al., 2016, "Deep Residual Learning").

  Attributes:
    stage_sizes: residual blocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18).
    block: ``BasicBlock`` or ``Bottleneck``.
    num_filters: width of the first stage (64 in the paper); stage ``s`` has
      ``num_filters * 2**s`` (times 4 at a bottleneck's output).
    pooling: global pooling for ``'pooled'``: ``'avg'`` (paper) or ``'max'``.
    small_inputs: CIFAR-style stem for 32-64 px images: a 3x3 stride-1
      ``conv1`` and no stem max pool (``conv1``'s kernel is then 3x3, so
      ImageNet weights do not load into it).
    dtype: computation dtype (parameters stay float32).
    bn_momentum: running-average momentum of BatchNorm (flax convention).
    bn_epsilon: BatchNorm epsilon.
    frozen_bn: use (and keep) the running BatchNorm statistics even when
      ``train=True``.
    zero_init_residual: initialise each block's last BN scale to zero
      (Goyal et al., 2017), so every block starts as the identity.
    im2col_max_size: see ``layers.Conv`` (0 disables the im2col path).
  """
  stage_sizes: Sequence[int]
  block: type[_BlockBase] = BasicBlock
  num_filters: int = 64
  pooling: str = "avg"
  small_inputs: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  frozen_bn: bool = False
  zero_init_residual: bool = False
  im2col_max_size: int = layers.DEFAULT_IM2COL_MAX_SIZE

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Maps normalised images ``[B, H, W, C]`` to a dict of named features."""
    if x.ndim != 4:
      raise ValueError(f"ResNet expects [B, H, W, C] images, got {x.shape}")
    layers.check_pooling(self.pooling)
    if not self.stage_sizes or min(self.stage_sizes) < 1:
      raise ValueError(f"stage_sizes must be positive, got {self.stage_sizes}")
    features: dict[str, Array] = collections.OrderedDict()
    if self.small_inputs:
      x = layers.Conv(self.num_filters, 3, 1, padding=1, use_bias=False,
                      dtype=self.dtype, kernel_init=_conv_init,
                      im2col_max_size=self.im2col_max_size, name="conv1")(x)
    else:
      x = layers.Conv(self.num_filters, 7, 2, padding=3, use_bias=False,
                      dtype=self.dtype, kernel_init=_conv_init,
                      im2col_max_size=self.im2col_max_size, name="conv1")(x)
    x = layers.batch_norm(train=train, frozen=self.frozen_bn,
                          momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                          dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    if not self.small_inputs:
      x = layers.max_pool(x, 3, 2, padding=1)
    features["stem"] = x
    for s, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        x = self.block(
            filters=self.num_filters * 2**s,
            strides=2 if s > 0 and b == 0 else 1,
            dtype=self.dtype, bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon, frozen_bn=self.frozen_bn,
            zero_init_residual=self.zero_init_residual,
            im2col_max_size=self.im2col_max_size,
            name=f"layer{s + 1}_{b}")(x, train)
      features[f"stage{s + 1}"] = x
    features["pooled"] = layers.global_pool(x, self.pooling)
    return features


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block=Bottleneck)
