"""A small convolutional backbone for tests, digits and the offline datasets.

``num_blocks`` blocks of 3×3 conv – BatchNorm – ReLU – 2×2 max pool (the
"Conv-4" of few-shot learning when ``num_blocks=4, width=64``), then global
average pooling. Returns named features like every dmlx backbone.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmlx.models import layers


class SmallCNN(nn.Module):
  """Conv–BN–ReLU–pool blocks; features ``block1..blockN`` and ``pooled``."""
  width: int = 32
  num_blocks: int = 3
  widen: bool = True        # double the width every block after the first
  frozen_bn: bool = False
  pooling: str = "avg"
  im2col_max_size: int = layers.DEFAULT_IM2COL_MAX_SIZE  # see layers.Conv

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    feats = {}
    for i in range(self.num_blocks):
      ch = self.width * (2 ** min(i, 2) if self.widen else 1)
      x = layers.Conv(ch, (3, 3), use_bias=False,
                      im2col_max_size=self.im2col_max_size,
                      name=f"conv{i + 1}")(x)
      x = nn.BatchNorm(use_running_average=not train or self.frozen_bn,
                       momentum=0.9, name=f"bn{i + 1}")(x)
      x = nn.relu(x)
      if min(x.shape[1:3]) >= 2:
        x = layers.max_pool(x, 2, 2)
      feats[f"block{i + 1}"] = x
    feats["pooled"] = (jnp.max(x, axis=(1, 2)) if self.pooling == "max"
                       else jnp.mean(x, axis=(1, 2)))
    return feats
