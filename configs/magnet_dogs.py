"""Magnet loss (Rippel et al., 2016) on Stanford Dogs (Khosla et al., 2011): Appendix B's configuration.

  python launch/train.py --config=configs/magnet_dogs.py \
      --workdir=workdirs/magnet_dogs --config.data.data_dir=/path/to/stanford_dogs \
      --config.model.pretrained=/path/to/bn_inception_imagenet.npz

``c.data.data_dir``: the folder (or zip) of the original archive, laid out as
``dmlx.data.archives.load_dogs`` reads it (``Images/<wnid>-<breed>/*.jpg`` and ``lists/{train,test}_list.mat``; needs scipy); the official
train / test split is used (``data.split='predefined'``).

``c.model.pretrained``: where the converted ImageNet weights go (the file
``launch/convert_weights.py`` writes). The paper warm-starts every objective
from GoogLeNet-with-BatchNorm (BN-Inception) trained on ImageNet for only 3
epochs ("a partly-trained standard softmax classifier", section 4); left
empty the backbone trains from scratch.

Paper settings (section 4 and Appendix B, Table 1, column "Dogs"):
BN-Inception + one FC layer to a 1024-d representation (not normalised);
M=12 clusters × D=4 examples per neighbourhood, K=1 cluster(s) per class,
gap α=0.71, learning rate 0.00292 with momentum 0.9 and no annealing (the
"N/A" of the smaller datasets), index refreshed every epoch, kNC with L=128.
Table 1 also lists a "global scaling" of 3.03 for this dataset; the paper
does not define it and eq. 5 is invariant to a global scale of the
representation (σ̂² scales with it), so it is recorded here only.
Augmentation: the paper rescales inputs by up to 30 % and jitters back to
224×224, and averages 16 augmented samples at test time; here: resize to
256, random 224 crop and flip in training, centre crop at test.
The epoch count is not given in the paper (40 epochs ≈ 10k
iterations of 48 images here).
"""
from dmlx.config import base_config


def get_config():
  c = base_config()
  c.data.name = "dogs"
  c.data.data_dir = ""              # the archive folder: pass --config.data.data_dir
  c.data.split = "predefined"
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = (0.485, 0.456, 0.406)  # ImageNet statistics
  c.data.std = (0.229, 0.224, 0.225)

  c.model.backbone = "bn_inception"   # "GoogLeNet with batch normalization"
  c.model.backbone_kwargs = {}
  c.model.embedding_dim = 1024
  c.model.normalise = False
  c.model.pretrained = ""           # converted ImageNet weights (see above)

  c.method.name = "magnet"
  c.method.M = 12
  c.method.D = 4
  c.method.K = 1
  c.method.alpha = 0.71
  c.method.refresh_every = 1
  c.method.L = 128
  c.method.variance_standardise = True
  c.method.leave_one_out_means = False
  c.method.sigma_momentum = 0.99
  c.method.kmeans_iters = 20
  c.method.knn_k = 0                # 0 = L
  c.method.steps_per_epoch = 0      # 0 = ⌈N / (M·D)⌉

  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.lr = 0.00292
  c.optim.schedule = "constant"

  c.train.epochs = 40
  c.train.log_every = 50
  c.eval.batch_size = 128
  return c
