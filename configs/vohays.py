"""Vo & Hays (2019), "Should the embedding layer be the embedding layer?".

One config, arguments ``net`` (default ``neta``) and ``dataset`` (default
``procedural``; ``cars``, ``cub``, ``sop``), ``runlocal``:

  python launch/train.py --config=configs/vohays.py:net=neta,dataset=cars \\
      --config.data.data_dir=/data/cars196 \\
      --config.model.pretrained=/weights/vgg16_bn_imagenet.npz \\
      --workdir=workdirs/vohays_neta_cars
  python launch/train.py --config=configs/vohays.py:net=nete --workdir=/tmp/nete

Variants (the loss position, Sec. 4.3; all new layers have the width of
pool5_3, ReLU between them; ``fcN`` is the linear output, as the authors
extract it):

  neta  VGG16-BN conv → global max pool (pool5_3) → fc6 → loss   (baseline)
  netb  neta with conv5_3 (+ its BatchNorm) re-initialised from scratch
  netc  neta with the whole network from scratch (no pretrained weights)
  netd  loss directly on pool5_3 (no fc layer)
  nete  pool5_3 → fc6 → fc7 → loss
  netf  pool5_3 → fc6 → fc7 → fc8 → loss
  cls   neta's network trained with a classification loss instead (Sec. 4.1,
        Fig. 3-right): a softmax classifier ("classification-output fc7",
        the loss's own parameters) on ReLU(fc6), cross-entropy.

Loss (Sec. 3.4): the mean over *all* valid triplets of the batch of the
smooth triplet loss log(1 + exp(d(a,p) - d(a,n))), d the squared Euclidean
distance (the paper prints d(a,n) - d(a,p), a typo: that form would push
positives apart), on unit features times a scale: "We normalize the image
feature to have unit magnitude and then scale it by 4". The authors' code
*learns* that scale from 4 (``MyTripletLoss(normalize_scale=4.0,
learn_scale=True)``, weight decay 5e-5): ``dmlx.losses.smooth_triplet`` with
``scale=4.0, learn_scale=True`` and ``optim.method_weight_decay=5e-5``
(``learn_scale=False`` is the paper's text). The network's embedding is the
unit feature (``model.normalise=True, model.scale=1``), so every layer is
evaluated on L2-normalised features (cosine, ``eval.l2_normalise``), as
the authors evaluate. Batches: 16 classes × 2 images, classes drawn in
proportion to their size without replacement (the authors' sampler,
``sampler.name='proportional_pk'``). The backbone's learning rate is 0 for
the first 100 iterations (``optim.backbone_frozen_steps``), as the authors'
script does while the new layers start (offline, from random weights: the
same 0.5 % of the steps).

Paper settings (Sec. 5): VGG16-BN conv layers pretrained on ImageNet, SGD
with momentum 0.9, weight decay 5e-4, learning rate 0.01 divided by 10 during
training (the authors' script: after 10k of the 20k iterations), batches of
32 (the script: 16 classes × 2 images), 20k iterations on Cars-196 and
CUB-200-2011, 200k on Stanford Online Products; random scaling (224 ×
U(1, 1.1)), cropping and flipping in training, a centre crop at test.
Cars / CUB train on the first 98 / 100 classes; SOP uses its own split.
Here one dmlx "epoch" is 1000 iterations (10,000 on SOP), and every layer is
evaluated on the training and test sets after each (the authors test every
1000 iterations). Not reproduced: the authors' first 100 iterations train
only the new fc layers (backbone learning rate 0), and their scale is
learned.

Pretrained weights: ``model.pretrained`` is empty here (no ImageNet weights
on this machine). ``model.reinit_layers`` names the layers NetB puts back to
their random initialisation *after* loading pretrained weights
(``dmlx.models.heads.reinitialise_layers``); it only means something once
``model.pretrained`` is set and the trainer applies it after loading. Without
pretrained weights NetA, NetB and NetC are the same network from scratch.
"""
from __future__ import annotations

from ml_collections import ConfigDict

from configs import common

# variant -> number of fc layers on top of pool5_3 (0: the loss on pool5_3).
NETS = {"neta": 1, "netb": 1, "netc": 1, "netd": 0, "nete": 2, "netf": 3,
            "cls": 1}
# NetB: "both conv5.3 and fc6 are initialized from scratch" (fc6 always is).
REINIT = {"netb": "conv5_3,bn5_3"}

# dataset -> loader name, split, zero-shot train classes, iterations,
# iterations per dmlx epoch, Recall@k.
DATASETS = {
    "cars": dict(name="cars196", split="zero_shot", train_classes=98,
                 iterations=20_000, epoch=1_000, ks=(1, 2, 4, 8, 16, 32)),
    "cub": dict(name="cub200", split="zero_shot", train_classes=100,
                iterations=20_000, epoch=1_000, ks=(1, 2, 4, 8, 16, 32)),
    "sop": dict(name="sop", split="predefined", train_classes=0,
                iterations=200_000, epoch=10_000, ks=(1, 10, 100, 1000)),
    "procedural": {},
}
VARIANTS = tuple(f"net={v}" for v in NETS) + tuple(
    f"net={v},dataset={d}" for v in ("neta", "nete") for d in ("cars", "cub", "sop"))


def eval_layers(variant: str) -> str:
  """Layers evaluated for ``variant``: pool5_1..3, the fc stack and the
  (normalised) embedding the loss sees (not for ``cls``: its embedding is
  fc6 itself)."""
  fcs = [f"fc{6 + i}" for i in range(NETS[variant])]
  last = [] if variant == "cls" else ["embedding"]
  return ",".join(["pool5_1", "pool5_2", "pool5_3", *fcs, *last])


def _network(c: ConfigDict, variant: str, width: int) -> None:
  """The head and loss of ``variant`` on a VGG16-BN whose pool5_3 is
  ``width``-d (512 in the paper)."""
  c.model.backbone = "vgg16_bn"
  c.model.input_layer = "pool5_3"
  c.model.fc_layers = (width,) * NETS[variant]
  c.model.embedding_dim = 0            # the last layer is the embedding
  c.model.dropout = 0.0
  c.model.reinit_layers = REINIT.get(variant, "")
  if variant == "cls":
    c.model.normalise = False
    c.model.scale = 1.0
    common.set_method(c, "loss", layer="fc6_relu")   # classifier on ReLU(fc6)
    c.loss.name = "softmax"
    c.loss.kwargs = ConfigDict()
  else:
    c.model.normalise = True           # unit features; the loss scales them
    c.model.scale = 1.0
    common.set_method(c, "loss", layer="embedding")
    c.loss.name = "smooth_triplet"     # ||x|| = s, s learned from 4 (Sec. 3.4)
    c.loss.kwargs = ConfigDict({"scale": 4.0, "learn_scale": True})
  c.eval.layers = eval_layers(variant)
  c.eval.metrics = ("recall",)
  c.eval.l2_normalise = True           # cosine, as the authors evaluate


def _optimiser(c: ConfigDict) -> None:
  """SGD, momentum 0.9, weight decay 5e-4, lr 0.01 / 10 halfway."""
  c.optim.name = "sgd"
  c.optim.lr = 0.01
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.decay_boundaries = (0.5,)
  c.optim.decay_factor = 0.1
  c.optim.backbone_lr_mult = 1.0
  c.optim.head_lr_mult = 1.0
  c.optim.method_lr_mult = 1.0         # the scale (cls: the classifier) too
  c.optim.method_weight_decay = 5e-5   # the authors' decay of the scale


def _paper(c: ConfigDict, dataset: str) -> None:
  p = DATASETS[dataset]
  c.data.name = p["name"]
  c.data.data_dir = ""                 # set on the command line
  c.data.split = p["split"]
  c.data.num_train_classes = p["train_classes"]
  c.data.image_size = 240              # ≈ 224 × U(1, 1.1)
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = common.IMAGENET_MEAN
  c.data.std = common.IMAGENET_STD
  c.sampler.name = "proportional_pk"   # classes ∝ size (the authors)
  c.sampler.classes_per_batch = 16     # 32 = 16 classes × 2 images
  c.sampler.images_per_class = 2
  c.model.backbone_kwargs = ConfigDict({"pooling": "max"})
  c.model.pretrained = ""              # ImageNet VGG16-BN: see the docstring
  c.train.steps_per_epoch = p["epoch"]
  c.train.epochs = p["iterations"] // p["epoch"]
  c.optim.backbone_frozen_steps = 100  # new layers first (the authors' script)
  c.train.eval_every_epochs = 1 if dataset != "sop" else 2
  c.train.log_every = 100
  c.train.max_checkpoints = 2
  c.eval.ks = p["ks"]
  c.eval.batch_size = 128
  c.eval.train_subset = 0              # the whole training set, as Fig. 2


def _procedural(c: ConfigDict) -> None:
  """Offline and small: 60 procedural classes (30 train, 30 unseen test) at
  32 px, a VGG16-BN of 1/8 width (8..64 channels, so pool5_3 and every fc
  layer are 64-d) without its first max pool (conv5 maps stay 4 × 4), from
  scratch, 16 classes × 2 images per batch."""
  common.procedural_data(c, num_classes=60, per_class=40, image_size=36, crop_size=32)
  c.data.split = "zero_shot"
  c.data.train_class_fraction = 0.5
  c.data.num_train_classes = 0
  c.sampler.name = "proportional_pk"
  c.sampler.classes_per_batch = 16
  c.sampler.images_per_class = 2
  c.model.backbone_kwargs = ConfigDict({"num_filters": 8, "small_inputs": True,
                                        "pooling": "max"})
  c.model.pretrained = ""
  c.train.steps_per_epoch = 50
  c.train.epochs = 12
  c.optim.backbone_frozen_steps = 3    # 0.5 % of the steps, as 100 of 20k
  c.train.eval_every_epochs = 1
  c.train.log_every = 25
  c.train.max_checkpoints = 2
  c.eval.ks = (1, 2, 4, 8)
  c.eval.batch_size = 256
  c.eval.train_subset = 0              # all 1200 training images


def get_config(arg: str | None = None) -> ConfigDict:
  """The run of ``net`` on ``dataset`` (see the module docstring)."""
  a = common.parse_arg(arg, net="neta", dataset="procedural", runlocal=False)
  if a.net not in NETS or a.dataset not in DATASETS:
    raise ValueError(f"configs/vohays.py: bad argument {arg!r}; expected "
                     f"net in {sorted(NETS)} and dataset in {sorted(DATASETS)}.")
  c = common.base_config()
  if a.dataset == "procedural":
    _procedural(c)
    width = 8 * c.model.backbone_kwargs.num_filters
  else:
    _paper(c, a.dataset)
    width = 512
  _network(c, a.net, width)
  _optimiser(c)
  return common.runlocal(c) if a.runlocal else c
