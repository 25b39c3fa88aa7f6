"""A pretrained start: a backbone trained as a softmax classifier on classes
no fine-tuning run is validated or tested on (the papers' ImageNet start, at
this machine's scale).

  python launch/train.py --config=configs/pretrain.py --workdir=workdirs/pretrain_tin40
  python launch/convert_weights.py --from_workdir=workdirs/pretrain_tin40 \\
      --dst=workdirs/pretrained/tinyimagenet40_small_cnn.msgpack
  python launch/train.py \\
      --config=configs/real_data.py:dataset=tinyimagenet,method=nngk,start=pretrained

Data: ``tiny-imagenet-101x500.zip`` (the 101 classes of the study with all
500 training images), classes 0-39 only (``data.class_range``), 90 % of each
class's images train and 10 % measure the classifier. Those 40 classes train
the fine-tuning runs too (as ImageNet's birds are among CUB's), but every
class any fine-tuning run is validated (40-49) or tested (50-100) on is left
out, so nothing the study measures was seen in pretraining.

Network: the study's Tiny ImageNet CNN (``configs/real_data.py``: four
conv–BN–ReLU–pool blocks of 32-64-128-128 channels, 32 px crops of 36 px
images), so each method fine-tunes the same network it trains from scratch
and the two regimes differ only by the start. Why not ResNet-18 at 64 px:
on this 2-core CPU it trains at ~47 images/s, 18,000 images × 30 epochs ≈ 3.2
CPU-hours, and every fine-tuning run would cost 10× the study's. The
classifier is a softmax on the globally pooled 128-d features
(``model.embedding_dim = 0``); only the backbone is exported, the fine-tuning
runs' embedding head is new.

Budget: 30 epochs of 141 steps of 128 images (Adam 1e-3, cosine decay,
weight decay 5e-4 on the network), random crops and flips; its cost is
measured in ``docs/results_pretrained.md``. ``runlocal`` shrinks it.
"""
from ml_collections import ConfigDict

from configs import common
from configs import real_data

VARIANTS = ("", "runlocal")
PRETRAIN_CLASSES = (0, 40)


def get_config(arg: str | None = None):
  """The pretraining run (``arg``: ``runlocal``)."""
  a = common.parse_arg(arg, runlocal=False)
  c = common.base_config()
  c.data.name = "tinyimagenet"
  c.data.data_dir = real_data.TINYIMAGENET_500
  c.data.options = ConfigDict({})
  c.data.class_range = PRETRAIN_CLASSES
  c.data.split = "classification"
  c.data.train_fraction = 0.9
  c.data.image_size = 36
  c.data.crop_size = 32
  c.data.flip = True
  c.data.mean = (0.484, 0.448, 0.396)   # the study's Tiny ImageNet statistics
  c.data.std = (0.256, 0.249, 0.263)
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ConfigDict(real_data.TINYIMAGENET_CNN)
  c.model.embedding_dim = 0             # the classifier sits on 'pooled'
  c.model.normalise = False
  common.set_method(c, "loss")
  c.loss.name = "softmax"
  c.loss.kwargs = ConfigDict({})
  c.sampler.name = "random"
  c.sampler.batch_size = 128
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 5e-4
  c.train.epochs = 30
  c.train.log_every = 50
  c.train.tensorboard = False
  c.eval.batch_size = 512
  c.eval.train_subset = 1000
  c.eval.metrics = ("recall",)
  c.eval.ks = (1,)
  c.eval.evaluators = "loss_classifier"
  c.eval.untrained_baseline = False
  return common.runlocal(c) if a.runlocal else c
