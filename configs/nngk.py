"""NNGK (Meyer, Harwood & Drummond, ICIP 2018): every NNGK config in one place.

Arguments (``--config=configs/nngk.py:dataset=cub,cls,dims=512``):

* ``dataset``: ``cub`` (CUB-200-2011), ``cars`` (Cars196), ``flowers``
  (Oxford 102 Flowers, classification only), ``folder`` (any class-per-folder
  image set, e.g. Leafsnap *field*; classification only), or the offline
  ``procedural`` (default) and ``digits``;
* ``cls``: the classification protocol of Section 3.2 (same classes in train
  and test; accuracy of the eq. 3 classifier) instead of the zero-shot metric
  learning protocol of Section 3.1 (train on the first half of the classes,
  Recall@K / NMI / MAP@R on the unseen rest);
* ``dims``: the embedding dimension for the metric learning runs (64, 128,
  256, 512 or 1024 as in Tables 1-2; default 64), which also picks σ;
* ``runlocal``: a few steps only.

  python launch/train.py --config=configs/nngk.py:dataset=cub \\
      --config.data.data_dir=/path/to/CUB_200_2011 \\
      --config.model.pretrained=weights/googlenet_imagenet.msgpack
  python launch/train.py --config=configs/nngk.py:dataset=cub,cls \\
      --config.data.data_dir=/path/to/CUB_200_2011
  python launch/train.py --config=configs/nngk.py:dataset=cars,dims=512 \\
      --config.data.data_dir=/path/to/cars196

``configs/nngk_cub.py`` and ``configs/default.py`` (the main job: the
procedural run) call this one.

Paper settings used as defaults (Section 3.1, metric learning): GoogLeNet
pretrained on ImageNet; 256 px images, random crops (224) and horizontal flips
in training; SGD, base learning rate 1e-5, weight decay 2e-4, batch size 20;
100 nearest neighbours; the centre bank refreshed every 10 epochs
("update interval"); unnormalised embeddings (the kernel is on raw distances)
and σ "between 10 and 30" depending on the dimension: here σ = 10, 12, 15, 20,
30 for 64, 128, 256, 512, 1024 dimensions (an interpolation of that range; the
paper gives no per-dimension values). Section 3.2 (classification): the same
batch, update interval and learning rate; the final ResNet pooling layer
(2048-d) followed by dropout is the embedding (the paper's VGG16 FC7 needs the
ImageNet fully connected layers, which dmlx's conv-only VGG does not carry);
Birds200 and Cars196 images are cropped to their bounding boxes; σ "around
100" is the paper's value for 4096-d VGG16 FC7; for 2048-d ResNet-50 pooled
features σ = 10 is an unmeasured starting point: every bank refresh logs the
mean squared distance to the nearest centre and its kernel value (Fig. 4b/c),
and σ should be tuned on validation data (Section 3.2 picks it by validation
loss). Not stated in the paper and chosen here: SGD momentum 0.9, the number
of epochs (50 metric learning, 30 classification), dropout 0.5, weight decay
2e-4 for classification too, and Leafsnap's 50 / 50 train / test split (the
paper's 50 / 20 / 30 train / val / test; dmlx's classification split has no
image-level validation part).

``model.pretrained`` is left empty: set it to ImageNet weights converted for
dmlx (``python launch/convert_weights.py --arch=googlenet`` (or ``resnet50``)
``--src=<torchvision .pth> --dst=weights/googlenet_imagenet.msgpack``; see
docs/pretrained.md). The trainer then takes ``data.mean`` / ``data.std`` from
the weights file; the values set here are the same (0.5 / 0.5 for GoogLeNet,
ImageNet statistics for ResNet-50).
Without them the backbone starts from random weights, which the paper never
does (Table 5: random initial weights give 1.35% Birds200 accuracy before
training). CUB / Cars: the zero-shot split trains on the first 100 / 98
classes; the classification runs use the official train / test lists
(``official_split``), Flowers its official train / test.

Hyper-parameters of the offline runs are chosen on held-out *training*
classes (``data.validation_classes``), never the test classes; see
:func:`_procedural`.
"""
from __future__ import annotations

from ml_collections import ConfigDict

from configs import common
from dmlx.data.splits import SPLIT_CODES

IMAGENET_MEAN = common.IMAGENET_MEAN
IMAGENET_STD = common.IMAGENET_STD
GOOGLENET_MEAN_STD = common.GOOGLENET_MEAN_STD

# Section 3.1: "values between 10 and 30 work well", growing with dimension.
SIGMA_BY_DIM = {64: 10.0, 128: 12.0, 256: 15.0, 512: 20.0, 1024: 30.0}

# dataset -> (loader, split for metric learning, train classes) for Section
# 3.1, and (split, split attribute, loader options) for Section 3.2.
DML = {
    "cub": dict(name="cub200", train_classes=100),
    "cars": dict(name="cars196", train_classes=98),
}
CLS = {
    "cub": dict(name="cub200", split="by_attribute",
                attribute="official_split", options={"crop_to_bbox": True}),
    "cars": dict(name="cars196", split="by_attribute",
                 attribute="official_split", options={"crop_to_bbox": True}),
    "flowers": dict(name="flowers102", split="predefined", attribute="",
                    options={}),
    "folder": dict(name="folder", split="classification", attribute="",
                   options={}),
}
OFFLINE = ("procedural", "digits")
VARIANTS = ("dataset=procedural", "dataset=procedural,cls", "dataset=digits",
            "dataset=digits,cls", "dataset=cub", "dataset=cub,dims=512",
            "dataset=cars", "dataset=cub,cls", "dataset=cars,cls",
            "dataset=flowers,cls", "dataset=folder,cls")


def method(c: ConfigDict, *, sigma: float, num_neighbours: int = 100,
           update_interval: int = 10, learn_weights: bool = True,
           bank_bn: str = "batch") -> None:
  """NNGK (:class:`dmlx.methods.nngk.Config`) with σ of eq. 1, k of 𝒩
  (eq. 3), the epochs between bank refreshes and learned w_i; exact k-NN
  (N ≲ 20k here), the paper's summed loss, the centres embedded in the
  loss's BatchNorm mode; random batches."""
  common.set_method(c, "nngk", sigma=float(sigma), num_neighbours=num_neighbours,
                    update_interval=update_interval, learn_weights=learn_weights,
                    min_weight=1e-4, index_type="auto", feature="embedding",
                    reduction="sum", bank_bn=bank_bn)
  c.sampler.name = "random"                     # NNGK needs no P×K batches
  c.model.normalise = False                     # kernels on raw distances
  c.model.scale = 1.0


def _paper(c: ConfigDict, dataset: str, classification: bool,
           dims: int) -> None:
  """Sections 3.1 / 3.2 on the real data sets (see the module docstring)."""
  c.data.data_dir = ""                  # set on the command line
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  c.model.pretrained = ""               # ImageNet weights: see the docstring
  c.optim.name = "sgd"
  c.optim.lr = 1e-5
  c.optim.momentum = 0.9
  c.optim.weight_decay = 2e-4
  c.optim.schedule = "constant"
  c.sampler.batch_size = 20
  c.eval.batch_size = 100
  c.train.log_every = 100
  if classification:
    p = CLS[dataset]
    c.data.name = p["name"]
    c.data.split = p["split"]
    c.data.split_attribute = p["attribute"]
    c.data.train_attribute_values = ((SPLIT_CODES["train"],)
                                     if p["attribute"] else ())
    c.data.train_fraction = 0.5         # 'folder' only (Leafsnap)
    c.data.options = ConfigDict(p["options"])
    c.model.backbone = "resnet50"
    c.model.backbone_kwargs = ConfigDict({"pooling": "avg"})
    c.model.embedding_dim = 0           # embedding = pooled 2048-d ...
    c.model.dropout = 0.5               # ... followed by dropout
    method(c, sigma=10.0)
    c.train.epochs = 30
  else:
    if dims not in SIGMA_BY_DIM:
      raise ValueError(f"configs/nngk.py: embedding dims {dims} not one of "
                       f"{sorted(SIGMA_BY_DIM)}.")
    p = DML[dataset]
    c.data.name = p["name"]
    c.data.split = "zero_shot"
    c.data.num_train_classes = p["train_classes"]
    c.model.backbone = "googlenet"
    c.model.backbone_kwargs = ConfigDict({"pooling": "avg"})
    # torchvision's GoogLeNet weights expect (x - 0.5) / 0.5, not ImageNet
    # statistics (dmlx.models.pretrained.PREPROCESSING['googlenet']; the
    # trainer reads them from model.pretrained when it is set).
    c.data.mean = GOOGLENET_MEAN_STD
    c.data.std = GOOGLENET_MEAN_STD
    c.model.embedding_dim = dims
    c.model.dropout = 0.0
    method(c, sigma=SIGMA_BY_DIM[dims])
    c.train.epochs = 50


def _procedural(c: ConfigDict, classification: bool) -> None:
  """The offline main job: procedural objects on this machine's 2 CPU cores.

  48 object classes × 30 images at 24 px (random crops of 28 px images), a
  3-block small CNN (width 16), 64-d unnormalised embedding, batches of 20
  (the paper's), 30 epochs. Zero-shot: 24 training classes (720 images), 24
  unseen test classes; ``cls``: all 48 classes, half of each class's images
  train, the other half test.

  Not the paper's values, chosen on held-out *training* classes
  (``data.validation_classes = 8``; the sweep is recorded in
  ``configs/default.py``): Adam at 1e-3 (a randomly initialised network and
  ~1,000 steps, where the paper fine-tunes a pretrained one with SGD at
  1e-5), σ = 1 (unnormalised small-CNN embeddings start with squared
  distances of ~0.3 to the nearest centre, growing to ~2), and an update
  interval of 1 epoch (5 was clearly worse: the bank goes stale while a
  randomly initialised network moves fast; the paper's 1-10 epochs are for
  fine-tuning). k = 100 neighbours as in the paper.
  """
  common.procedural_data(c)
  if classification:
    c.data.split = "classification"
    c.data.train_fraction = 0.5
  else:
    c.data.split = "zero_shot"
    c.data.train_class_fraction = 0.5
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ConfigDict({"width": 16, "num_blocks": 3})
  c.model.embedding_dim = 64
  c.model.dropout = 0.0
  c.model.pretrained = ""
  method(c, sigma=1.0, num_neighbours=100, update_interval=1)
  c.sampler.batch_size = 20
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.train.epochs = 30
  c.train.log_every = 36                # once an epoch (zero-shot)
  c.eval.train_subset = 720             # the whole zero-shot training set


def _digits(c: ConfigDict, classification: bool) -> None:
  """scikit-learn digits (8×8 upsampled to 16 px): tests and smoke runs."""
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.mean = (0.2,)
  c.data.std = (0.35,)
  if classification:
    c.data.split = "classification"
    c.data.train_fraction = 0.5
  else:
    c.data.split = "zero_shot"          # digits 0-4 train, 5-9 test
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ConfigDict({"width": 16, "num_blocks": 2})
  c.model.embedding_dim = 32
  method(c, sigma=1.0, num_neighbours=50, update_interval=1)
  c.sampler.batch_size = 20
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.train.epochs = 3
  c.train.log_every = 20


def get_config(arg: str | None = None) -> ConfigDict:
  """The NNGK run of ``arg`` (see the module docstring)."""
  a = common.parse_arg(arg, dataset="procedural", cls=False, dims=64,
                       runlocal=False)
  dataset, classification, dims = a.dataset, a.cls, a.dims
  c = common.base_config()
  if dataset in OFFLINE:
    if dims != 64:
      raise ValueError(f"configs/nngk.py: dims are only for cub/cars, got "
                       f"{arg!r}.")
    (_procedural if dataset == "procedural" else _digits)(c, classification)
  elif dataset in CLS or dataset in DML:
    if classification and dataset not in CLS:
      raise ValueError(f"configs/nngk.py: no classification set {dataset!r}.")
    if not classification and dataset not in DML:
      raise ValueError(f"configs/nngk.py: {dataset!r} is classification only; "
                       f"use 'dataset={dataset},cls'.")
    _paper(c, dataset, classification, dims)
  else:
    raise ValueError(f"configs/nngk.py: unknown dataset {dataset!r}; expected "
                     f"one of {sorted(set(DML) | set(CLS) | set(OFFLINE))}.")
  return common.runlocal(c) if a.runlocal else c
