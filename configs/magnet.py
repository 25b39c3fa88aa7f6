"""Magnet loss (Rippel et al., ICLR 2016) with Appendix B's per-dataset settings.

  python launch/train.py --config=configs/magnet.py:dogs \
      --workdir=workdirs/magnet_dogs --config.data.data_dir=/path/to/stanford_dogs
  (variants: dogs, pets, flowers; configs/magnet_{dogs,pets,flowers}.py are the same)

Data: the original archives (``dmlx.data.archives.load_dogs`` reads
``Images/<wnid>-<breed>/*.jpg`` and ``lists/{train,test}_list.mat``;
``load_pets`` reads ``images/`` and ``annotations/``; ``load_flowers102`` reads
``jpg/``, ``imagelabels.mat`` and ``setid.mat``) with their official
classification splits (``data.split='predefined'``).

Paper settings (section 4 and Appendix B, Table 1): BN-Inception ("GoogLeNet
with batch normalization") from ImageNet weights, a 1024-d embedding,
M=12 clusters × D=4 examples per neighbourhood, per-dataset K clusters per
class, gap α and learning rate (SGD, momentum 0.9, no annealing), cluster index
refreshed every epoch, kNC evaluation over L=128 nearest clusters. Table 1 also
lists a "global scaling" per dataset that the paper never defines; it is not
implemented. Set ``--config.model.pretrained=`` to weights converted with
``launch/convert_weights.py --arch=bn_inception`` (docs/pretrained.md); the
input normalisation then follows the checkpoint. The epoch counts are ours
(the paper gives none): about 10k iterations of 48 images (6k for Flowers).
"""
from dmlx.config import base_config

# dataset -> (dmlx dataset name, K, α, learning rate, epochs), Appendix B Table 1.
APPENDIX_B = {
    "dogs": ("dogs", 1, 0.71, 0.00292, 40),
    "pets": ("pets", 8, 7.18, 0.00184, 130),
    "flowers": ("flowers102", 1, 2.43, 0.024, 250),
}


def method(c, *, M: int, D: int, K: int, alpha: float) -> None:
  """Sets every ``config.method`` field :mod:`dmlx.methods.magnet` reads:
  M clusters × D examples per neighbourhood (section 3.2), K clusters per
  class, gap α (eq. 5), index refreshed every epoch, L = 128 for kNC (eq. 6),
  σ² for evaluation from a running average of the batch estimates."""
  c.method.name = "magnet"
  c.method.M = M
  c.method.D = D
  c.method.K = K
  c.method.alpha = alpha
  c.method.refresh_every = 1
  c.method.L = 128
  c.method.variance_standardise = True
  c.method.leave_one_out_means = False
  c.method.sigma_momentum = 0.99
  c.method.kmeans_iters = 20
  c.method.knn_k = 0                # 0 = L
  c.method.steps_per_epoch = 0      # 0 = ⌈N / (M·D)⌉ or train.steps_per_epoch


def get_config(arg: str = "dogs"):
  """Magnet on ``arg`` (one of :data:`APPENDIX_B`)."""
  if arg not in APPENDIX_B:
    raise ValueError(f"Unknown variant {arg!r}; expected one of {sorted(APPENDIX_B)}.")
  name, k, alpha, lr, epochs = APPENDIX_B[arg]
  c = base_config()
  c.data.name = name
  c.data.data_dir = ""              # the archive folder: pass --config.data.data_dir
  c.data.split = "predefined"
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = (0.485, 0.456, 0.406)  # replaced by the checkpoint's own normalisation
  c.data.std = (0.229, 0.224, 0.225)

  c.model.backbone = "bn_inception"
  c.model.backbone_kwargs = {}
  c.model.embedding_dim = 1024
  c.model.normalise = False
  c.model.pretrained = ""           # converted ImageNet weights (see above)

  method(c, M=12, D=4, K=k, alpha=alpha)

  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.lr = lr
  c.optim.schedule = "constant"

  c.train.epochs = epochs
  c.train.log_every = 50
  c.eval.batch_size = 128
  return c
