"""Backbones and embedding heads, built by name from ``config.model``.

Every network maps ``[B, H, W, C]`` images to a dict of named features
(``pooled``, intermediate layers such as ``stage3`` or ``pool5_3``, the head's
``fc6``/``fc7``, and ``embedding``), so any layer can serve as the embedding
(Vo & Hays) and methods read what they need (MIC: ``aux_embedding``; DML-DA:
``pooled``).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dmlx import registry
from dmlx.models.heads import EmbeddingNet, l2_normalise
from dmlx.models.small_cnn import SmallCNN

# name -> "module:attribute", imported when first used.
BACKBONES = registry.Registry("model.backbone", {
    "small_cnn": "dmlx.models.small_cnn:SmallCNN",
    "resnet18": "dmlx.models.resnet:ResNet18",
    "resnet50": "dmlx.models.resnet:ResNet50",
    "vgg16_bn": "dmlx.models.vgg:VGG16BN",
    "googlenet": "dmlx.models.inception:GoogLeNet",
    "bn_inception": "dmlx.models.inception:BNInception",
    "alexnet": "dmlx.models.alexnet:AlexNet",
})


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
  """Instantiates the backbone registered as ``name``."""
  return BACKBONES.get(name)(**kwargs)


# config.model.dtype -> the backbone's computation dtype.
# (no float16: it would need loss scaling, which dmlx does not do).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The computation dtype named by ``config.model.dtype``; ValueError
  naming the value otherwise."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype: {name!r} is not one of "
                     f"{sorted(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[name]


def build_model(cfg) -> EmbeddingNet:
  """The :class:`EmbeddingNet` described by ``config.model``.

  ``cfg.dtype`` (default ``'float32'``) is the backbone's computation dtype:
  ``'bfloat16'`` runs its convolutions, matmuls and BatchNorm arithmetic in
  bfloat16 (parameters, BatchNorm statistics and optimiser state stay
  float32), and the head, the embedding and every feature a method reads are
  float32, so the losses are computed as in float32 training.
  """
  dtype = compute_dtype(cfg.get("dtype", "float32"))
  backbone = get_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
  if dtype != jnp.float32:
    if not hasattr(backbone, "dtype"):
      raise ValueError(
          f"config.model.dtype={cfg.dtype!r}: backbone {cfg.backbone!r} has "
          f"no computation dtype (it runs in float32 only).")
    backbone = backbone.clone(dtype=dtype)
  return EmbeddingNet(
      backbone=backbone,
      embedding_dim=cfg.embedding_dim,
      fc_layers=tuple(cfg.fc_layers),
      normalise=cfg.normalise,
      scale=cfg.scale,
      dropout=cfg.dropout,
      aux_embedding_dim=cfg.aux_embedding_dim,
      input_layer=cfg.input_layer,
      dtype=dtype)


__all__ = ["BACKBONES", "COMPUTE_DTYPES", "EmbeddingNet", "SmallCNN",
           "build_model", "compute_dtype", "get_backbone", "l2_normalise"]
