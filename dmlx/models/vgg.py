"""VGG-16(-BN) convolutional backbone with Vo & Hays' named layers.

Vo & Hays (2019), "Generalization in Metric Learning: Should the Embedding
Layer be the Embedding Layer?", use VGG-16-BN's conv layers only (fc6-8
removed) followed by global MAX pooling, and compare every layer as a feature
after global max pooling; their last three are pool5.1, pool5.2 and pool5.3,
the globally max-pooled outputs of conv5_1, conv5_2 and conv5_3.

Parameter naming (``b`` = block 1..5, ``i`` = conv within the block, 1-based):

  dmlx                    torchvision vgg16_bn ``features.<n>``
  conv{b}_{i}/kernel      features.<n>.weight   (transpose [O,I,kh,kw] -> [kh,kw,I,O])
  conv{b}_{i}/bias        features.<n>.bias
  bn{b}_{i}/{scale,bias}  features.<n+1>.{weight,bias}
  bn{b}_{i}/{mean,var}    features.<n+1>.{running_mean,running_var}  (batch_stats)

``TORCHVISION_VGG16_BN_INDEX`` gives ``<n>`` for every dmlx layer name
(``conv1_1 -> 0``, ``bn1_1 -> 1``, ``conv1_2 -> 3``, ...).

Features returned, in forward order (all after ReLU): ``conv1_1``, ``conv1_2``,
``pool1``, ``conv2_1``, ``conv2_2``, ``pool2``, ``conv3_1..3``, ``pool3``,
``conv4_1..3``, ``pool4`` (``[B, h, w, c]`` maps), then for block 5 each conv
map followed by its global-max-pooled ``[B, c]`` vector: ``conv5_1``,
``pool5_1``, ``conv5_2``, ``pool5_2``, ``conv5_3``, ``pool5_3``; ``pool5`` (the
2x2 max-pooled conv5_3 map) and ``pooled`` (``[B, c]``: global pooling of
conv5_3 with the ``pooling`` attribute; with the default ``'max'`` it equals
``pool5_3``). With ``small_inputs`` the first max pool is skipped and
``pool1`` is absent.
"""
from __future__ import annotations

import collections
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmlx.models import layers

Array = jax.Array

# Convolutions per block and width relative to ``num_filters`` (VGG-16, the
# paper's configuration "D"; Simonyan & Zisserman, 2015, Table 1).
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (3, 4), (3, 8),
                                             (3, 8))


def _torchvision_index(blocks: Sequence[tuple[int, int]],
                       batch_norm: bool) -> dict[str, int]:
  index, n = {}, 0
  for b, (num_convs, _) in enumerate(blocks, start=1):
    for i in range(1, num_convs + 1):
      index[f"conv{b}_{i}"] = n
      if batch_norm:
        index[f"bn{b}_{i}"] = n + 1
      n += 3 if batch_norm else 2  # conv, [bn], relu
    n += 1  # max pool
  return index


TORCHVISION_VGG16_BN_INDEX = _torchvision_index(VGG16_BLOCKS, True)
TORCHVISION_VGG16_INDEX = _torchvision_index(VGG16_BLOCKS, False)

# torchvision's VGG conv init: kaiming normal, fan_out, relu gain.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGG(nn.Module):
  """VGG conv layers as a feature extractor (Simonyan & Zisserman, 2015).

  Attributes:
    blocks: ``(num_convs, width_factor)`` per block; VGG-16 by default.
    num_filters: width of block 1 (64 in the paper); block widths are
      ``num_filters * width_factor``.
    batch_norm: VGG-BN (BatchNorm after every conv), as in Vo & Hays.
    pooling: global pooling of conv5_3 for ``'pooled'``: ``'max'`` (Vo &
      Hays, Sec. 3.1) or ``'avg'``. ``pool5_*`` are always max-pooled.
    small_inputs: skip the first 2x2 max pool (for 32-64 px images), so the
      last block still sees >= 4x4 maps; parameters are unchanged.
    dtype: computation dtype.
    bn_momentum, bn_epsilon: BatchNorm settings (flax momentum convention).
    frozen_bn: use and keep the running BatchNorm statistics in training.
    im2col_max_size: see ``layers.Conv``.
  """
  blocks: Sequence[tuple[int, int]] = VGG16_BLOCKS
  num_filters: int = 64
  batch_norm: bool = True
  pooling: str = "max"
  small_inputs: bool = False
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  frozen_bn: bool = False
  im2col_max_size: int = layers.DEFAULT_IM2COL_MAX_SIZE

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Maps normalised images ``[B, H, W, C]`` to a dict of named features."""
    if x.ndim != 4:
      raise ValueError(f"VGG expects [B, H, W, C] images, got {x.shape}")
    layers.check_pooling(self.pooling)
    if not self.blocks:
      raise ValueError(f"VGG needs at least one block, got {self.blocks!r}")
    features: dict[str, Array] = collections.OrderedDict()
    last = len(self.blocks)
    for b, (num_convs, factor) in enumerate(self.blocks, start=1):
      for i in range(1, num_convs + 1):
        x = layers.Conv(self.num_filters * factor, 3, 1, padding=1,
                        dtype=self.dtype, kernel_init=_conv_init,
                        im2col_max_size=self.im2col_max_size,
                        name=f"conv{b}_{i}")(x)
        if self.batch_norm:
          x = layers.batch_norm(train=train, frozen=self.frozen_bn,
                                momentum=self.bn_momentum,
                                epsilon=self.bn_epsilon, dtype=self.dtype,
                                name=f"bn{b}_{i}")(x)
        x = nn.relu(x)
        features[f"conv{b}_{i}"] = x
        if b == last:
          features[f"pool{b}_{i}"] = layers.global_pool(x, "max")
      if b == last:
        pooled = layers.global_pool(x, self.pooling)
      if not (self.small_inputs and b == 1):
        features[f"pool{b}"] = layers.max_pool(x, 2, 2)
        x = features[f"pool{b}"]
    features["pooled"] = pooled
    return features


def VGG16(**kwargs) -> VGG:  # pylint: disable=invalid-name
  """VGG-16 conv layers (configuration D) without BatchNorm."""
  return VGG(blocks=VGG16_BLOCKS, batch_norm=False, **kwargs)


def VGG16BN(**kwargs) -> VGG:  # pylint: disable=invalid-name
  """VGG-16-BN conv layers, Vo & Hays' backbone."""
  return VGG(blocks=VGG16_BLOCKS, batch_norm=True, **kwargs)
