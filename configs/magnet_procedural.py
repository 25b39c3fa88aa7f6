"""Magnet loss (Rippel et al., 2016) on the procedural object dataset.

Offline and small: 40 object classes × 60 images at 32 px, split for
*classification* (the same classes in train and test, 75 % / 25 % of each
class's images), so the paper's k-nearest-cluster (kNC, eq. 6) and soft kNN
accuracies are meaningful; they are printed after the retrieval table.

  python launch/train.py --config=configs/magnet_procedural.py --workdir=/tmp/magnet_procedural

The zero-shot retrieval variant (first 20 classes train, 20 unseen test; kNC /
kNN are skipped because the test classes have no clusters):

  python launch/train.py --config=configs/magnet_procedural.py \
      --workdir=/tmp/magnet_procedural_zs --config.data.split=zero_shot

Magnet settings follow section 4.1 / Appendix B: M=12 clusters × D=4 examples
per neighbourhood, gap α≈1, index refreshed every epoch, L=128 for kNC. K=4
clusters per class suits 45 training images per class (the paper varies K
with class cardinality: Pet 8 with ~100 images per class). The embedding is
not L2-normalised (the paper's representation is a plain FC layer; eq. 5 is
invariant to its global scale anyway).
"""
import os
import runpy

from dmlx.config import base_config


def get_config():
  c = base_config()
  c.data.name = "procedural"
  c.data.split = "classification"
  c.data.train_fraction = 0.75
  c.data.image_size = 32
  c.data.crop_size = 0
  c.data.flip = True
  c.data.options.num_classes = 40
  c.data.options.per_class = 60
  c.data.mean = (0.45, 0.45, 0.45)
  c.data.std = (0.3, 0.3, 0.3)

  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.width = 32
  c.model.backbone_kwargs.num_blocks = 3
  c.model.embedding_dim = 64
  c.model.normalise = False

  runpy.run_path(os.path.join(os.path.dirname(__file__), "magnet.py"))[
      "method"](c, M=12, D=4, K=4, alpha=1.0)

  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.train.epochs = 10
  c.train.log_every = 25
  c.eval.metrics = ("recall", "nmi")
  return c
