"""AlexNet (Krizhevsky et al., 2012) as torchvision builds it, with fc6/fc7.

NNGK (Meyer et al., 2018, Sec. 4 and Table 3) fine-tunes an ImageNet AlexNet
and uses "the FC7 layer (4096 dimensions), with dropout and without a ReLU" as
the embedding, so this backbone keeps the two pretrained fully connected
layers; only the 1000-way ImageNet classifier is dropped. Parameter names
follow the papers' layers; the torchvision state dict maps onto them as

  torchvision alexnet               dmlx
  features.{0,3,6,8,10}.weight      conv{1..5}/kernel   ([O,I,kh,kw] -> [kh,kw,I,O])
  features.{0,3,6,8,10}.bias        conv{1..5}/bias
  classifier.1.{weight,bias}        fc6/{kernel,bias}   (rows reordered, see below)
  classifier.4.{weight,bias}        fc7/{kernel,bias}   ([out,in] -> [in,out])
  classifier.6.*                    (none: the ImageNet classifier)

torchvision flattens the ``[C, 6, 6]`` pool5 map in channel-major order;
dmlx flattens ``[6, 6, C]``, so fc6's input rows are permuted on conversion
(``dmlx.models.pretrained``).

Features returned (forward order): ``conv1``, ``pool1``, ``conv2``, ``pool2``,
``conv3``, ``conv4``, ``conv5``, ``pool5`` (maps after ReLU), then with
``include_top`` ``fc6``, ``fc6_relu``, ``fc7``, ``fc7_relu`` and ``pooled`` =
``fc7`` (linear output, no ReLU: NNGK's embedding layer); without it,
``pooled`` is the global pooling of ``conv5``.
"""
from __future__ import annotations

import collections
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmlx.models import layers

Array = jax.Array

# (channels, kernel, stride, padding, max pool after) per conv; torchvision.
ALEXNET_CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True),
                 (384, 3, 1, 1, False), (256, 3, 1, 1, False),
                 (256, 3, 1, 1, True))
# torchvision's ``features.<n>`` index of each conv.
TORCHVISION_ALEXNET_INDEX = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8,
                             "conv5": 10}
POOL5_SIZE = 6  # torchvision's AdaptiveAvgPool2d((6, 6)) before fc6


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """PyTorch ``AdaptiveAvgPool2d((size, size))`` on ``[B, H, W, C]``.

  Output cell ``i`` averages input rows ``floor(i H / size)`` ..
  ``ceil((i + 1) H / size) - 1`` (likewise columns); the identity when
  ``H = W = size`` (224 px inputs).
  """
  def cells(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]

  h, w = x.shape[-3], x.shape[-2]
  if (h, w) == (size, size):
    return x
  rows = jnp.stack([jnp.mean(x[..., a:b, :, :], axis=-3)
                    for a, b in cells(h)], axis=-3)
  return jnp.stack([jnp.mean(rows[..., a:b, :], axis=-2)
                    for a, b in cells(w)], axis=-2)


class AlexNet(nn.Module):
  """AlexNet feature extractor (Krizhevsky et al., 2012; torchvision layout).

  Attributes:
    width: multiplier on every conv and fc width (1.0 = torchvision's).
    include_top: keep fc6 and fc7 (NNGK's embedding is fc7).
    dropout: dropout before fc6 and fc7 in training (torchvision's 0.5).
    pooling: global pooling of conv5 for ``pooled`` without ``include_top``.
    small_inputs: conv1 stride 1 instead of 4 (32-96 px images); parameters
      unchanged.
    dtype: computation dtype.
    im2col_max_size: see ``layers.Conv``.
  """
  width: float = 1.0
  include_top: bool = True
  dropout: float = 0.5
  pooling: str = "avg"
  small_inputs: bool = False
  dtype: Any = jnp.float32
  im2col_max_size: int = layers.DEFAULT_IM2COL_MAX_SIZE

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    """Maps normalised images ``[B, H, W, C]`` to a dict of named features."""
    if x.ndim != 4:
      raise ValueError(f"AlexNet expects [B, H, W, C] images, got {x.shape}")
    layers.check_pooling(self.pooling)
    if self.width <= 0:
      raise ValueError(f"width must be positive, got {self.width}")
    f: dict[str, Array] = collections.OrderedDict()
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    for i, (c, k, s, p, pool) in enumerate(ALEXNET_CONVS, start=1):
      if i == 1 and self.small_inputs:
        s = 1
      x = layers.Conv(layers.scaled(c, self.width), k, s, padding=p,
                      dtype=self.dtype, kernel_init=init,
                      im2col_max_size=self.im2col_max_size,
                      name=f"conv{i}")(x)
      f[f"conv{i}"] = x = nn.relu(x)
      if pool:
        name = "pool5" if i == 5 else f"pool{i}"
        f[name] = x = layers.max_pool(x, 3, 2)
    if not self.include_top:
      f["pooled"] = layers.global_pool(f["conv5"], self.pooling)
      return f
    h = adaptive_avg_pool(x, POOL5_SIZE).reshape(x.shape[0], -1)
    fc = layers.scaled(4096, self.width)
    for name in ("fc6", "fc7"):
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h = nn.Dense(fc, dtype=self.dtype, name=name,
                   kernel_init=nn.initializers.normal(0.01))(h)
      f[name] = h
      f[f"{name}_relu"] = h = nn.relu(h)
    f["pooled"] = f["fc7"]
    return f

