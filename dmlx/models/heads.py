"""Embedding heads on top of any backbone: the network every method trains.

``EmbeddingNet`` = backbone (a dict of named features, always incl. ``pooled``)
→ optional stack of fully connected layers (Vo & Hays's fc6, fc7, fc8 with ReLU
between, each a named feature) → linear embedding of dimension D, optional L2
normalisation and scale. ``embedding_dim=0`` uses the last layer itself (Vo &
Hays's NetD: the loss directly on pool5_3). ``aux_embedding_dim>0`` adds MIC's
auxiliary encoder E_β beside the class encoder E_α on the same backbone.

Each fc layer ``fcN`` (the linear output, as Vo & Hays extract it) also comes
with ``fcN_relu``, the activation the next layer sees, so a classifier can sit
on ReLU(fc6) (their classification variant, Fig. 3-right).
:func:`reinitialise_layers` puts named layers of a pretrained network back to
their fresh initialisation (their NetB, Sec. 4.2).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

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
  dtype: Any = jnp.float32            # the backbone's; the head runs in float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               dropout: bool | None = None) -> dict[str, jax.Array]:
    """Named features of ``x``; ``train`` puts BatchNorm on batch statistics
    and turns dropout on, unless ``dropout=False`` (NNGK's centres: the
    training mode of the loss, without dropout)."""
    dropout = train if dropout is None else dropout
    feats = dict(self.backbone(x, train=train))
    if self.dtype != jnp.float32:   # a bfloat16 backbone: head and features in float32
      feats = {k: v.astype(jnp.float32) for k, v in feats.items()}
    h = feats[self.input_layer]
    if h.ndim == 4:
      h = jnp.max(h, axis=(1, 2))
    for i, width in enumerate(self.fc_layers):
      if i:
        h = nn.relu(h)
      h = nn.Dense(width, name=self.fc_names[i])(h)
      feats[self.fc_names[i]] = h
      feats[f"{self.fc_names[i]}_relu"] = nn.relu(h)
    if self.dropout:
      h = nn.Dropout(self.dropout, deterministic=not dropout)(h)
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


def reinitialise_layers(pretrained: Mapping[str, Any], fresh: Mapping[str, Any],
                        layers: Sequence[str] | str) -> dict[str, Any]:
  """Vo & Hays (2019), Sec. 4.2: layers "initialized from scratch" in a
  pretrained network (NetB: conv5_3 with its BatchNorm, and fc6).

  Every sub-tree whose key is one of ``layers`` (at any depth, in any
  collection) is taken from ``fresh`` (the network's own initialisation, e.g.
  ``model.init(...)``), everything else from ``pretrained`` (the weights loaded
  from ``config.model.pretrained``). Both are variable dicts with the same
  structure (``{'params': ..., 'batch_stats': ...}``); the result is a new
  dict, the inputs are not modified.

  Args:
    pretrained: variables with pretrained values.
    fresh: variables of the same structure, freshly initialised.
    layers: layer names (``('conv5_3', 'bn5_3')``) or a comma-separated string.

  Returns:
    The merged variables.

  Raises:
    ValueError: a name in ``layers`` is not a key anywhere in ``pretrained``,
      or ``fresh`` lacks a sub-tree that ``pretrained`` has.
  """
  if isinstance(layers, str):
    layers = [s.strip() for s in layers.split(",") if s.strip()]
  names, found = set(layers), set()

  def merge(old, new, path):
    if not isinstance(old, Mapping):
      return old
    out = {}
    for key, value in old.items():
      if not isinstance(new, Mapping) or key not in new:
        raise ValueError(f"fresh variables lack {'/'.join(path + (key,))!r}; "
                         "pass the same network's initialisation.")
      if key in names:
        found.add(key)
        out[key] = new[key]
      else:
        out[key] = merge(value, new[key], path + (key,))
    return out

  merged = merge(pretrained, fresh, ())
  missing = sorted(names - found)
  if missing:
    raise ValueError(f"reinit layers {missing} are not layers of the network.")
  return merged
