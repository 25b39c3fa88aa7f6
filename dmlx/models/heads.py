"""Embedding heads on top of any backbone: the network every method trains.

``EmbeddingNet`` = backbone (a dict of named features, always incl. ``pooled``)
→ optional stack of fully connected layers (Vo & Hays's fc6, fc7, fc8 with ReLU
between, each a named feature) → linear embedding of dimension D, optional L2
normalisation and scale. ``embedding_dim=0`` uses the last layer itself (Vo &
Hays's NetD: the loss directly on pool5_3). ``aux_embedding_dim>0`` adds MIC's
auxiliary encoder E_β beside the class encoder E_α on the same backbone.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x||, safe at 0 (gradients finite)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps))


class EmbeddingNet(nn.Module):
  """Backbone + fc stack + embedding head; returns all named features."""
  backbone: nn.Module
  embedding_dim: int = 128
  fc_layers: Sequence[int] = ()       # e.g. (512,) → 'fc6'; (512, 512) → fc6, fc7
  fc_names: Sequence[str] = ("fc6", "fc7", "fc8", "fc9")
  normalise: bool = True
  scale: float = 1.0
  dropout: float = 0.0
  aux_embedding_dim: int = 0
  input_layer: str = "pooled"         # which backbone feature feeds the head
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    feats = dict(self.backbone(x, train=train))
    h = feats[self.input_layer]
    if h.ndim == 4:
      h = jnp.max(h, axis=(1, 2))
    for i, width in enumerate(self.fc_layers):
      if i:
        h = nn.relu(h)
      h = nn.Dense(width, name=self.fc_names[i])(h)
      feats[self.fc_names[i]] = h
    if self.dropout:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    if self.embedding_dim:
      emb = nn.Dense(self.embedding_dim, name="embedding",
                     kernel_init=nn.initializers.lecun_normal())(h)
    else:
      emb = h
    feats["embedding_raw"] = emb
    feats["embedding"] = self._finish(emb)
    if self.aux_embedding_dim:
      aux = nn.Dense(self.aux_embedding_dim, name="aux_embedding")(h)
      feats["aux_embedding"] = self._finish(aux)
    return feats

  def _finish(self, e: jax.Array) -> jax.Array:
    if self.normalise:
      e = l2_normalise(e)
    return e * self.scale
