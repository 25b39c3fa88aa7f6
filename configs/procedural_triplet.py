"""Triplet loss (semi-hard) on the procedural object dataset, zero-shot split.

120 object classes generated offline: 60 train, 60 unseen test classes.

  python launch/train.py --config=configs/procedural_triplet.py
"""
from dmlx.config import base_config


def get_config():
  c = base_config()
  c.data.name = "procedural"
  c.data.image_size = 36
  c.data.crop_size = 32
  c.data.flip = True
  c.data.options.num_classes = 120
  c.data.options.per_class = 40
  c.data.mean = (0.45, 0.45, 0.45)
  c.data.std = (0.3, 0.3, 0.3)
  c.sampler.classes_per_batch = 16
  c.sampler.images_per_class = 4
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.width = 32
  c.model.backbone_kwargs.num_blocks = 3
  c.model.embedding_dim = 64
  c.loss.name = "triplet_semihard"
  c.loss.kwargs.margin = 0.2
  c.optim.lr = 1e-3
  c.train.epochs = 8
  c.train.log_every = 25
  return c
