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


def build_model(cfg) -> EmbeddingNet:
  """The :class:`EmbeddingNet` described by ``config.model``."""
  backbone = get_backbone(cfg.backbone, **dict(cfg.backbone_kwargs))
  return EmbeddingNet(
      backbone=backbone,
      embedding_dim=cfg.embedding_dim,
      fc_layers=tuple(cfg.fc_layers),
      normalise=cfg.normalise,
      scale=cfg.scale,
      dropout=cfg.dropout,
      aux_embedding_dim=cfg.aux_embedding_dim,
      input_layer=cfg.input_layer)


__all__ = ["BACKBONES", "EmbeddingNet", "SmallCNN", "build_model",
           "get_backbone", "l2_normalise"]
