"""Triplet loss (semi-hard mining) on scikit-learn's digits, zero-shot split.

Digits 0-4 train, 5-9 test. A tiny run for tests and smoke checks:

  python launch/train.py --config=configs/digits_triplet.py --workdir=/tmp/digits
"""
from dmlx.config import base_config


def get_config():
  c = base_config()
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.mean = (0.2,)
  c.data.std = (0.35,)
  c.sampler.classes_per_batch = 5
  c.sampler.images_per_class = 8
  c.model.backbone_kwargs.width = 16
  c.model.backbone_kwargs.num_blocks = 2
  c.model.embedding_dim = 32
  c.loss.name = "triplet_semihard"
  c.loss.kwargs.margin = 0.2
  c.optim.lr = 3e-3
  # Five training digits are fitted within a few epochs; at a constant rate
  # the near-zero loss then spikes and zero-shot recall drifts back down.
  c.optim.schedule = "cosine"
  c.train.epochs = 4
  c.train.log_every = 10
  return c
