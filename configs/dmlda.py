"""DML-DA (Li et al., 2019): one config for every (base loss, dataset) pair.

The argument is ``<loss>,<dataset>[,<regularizer>]``:

* ``<loss>``: ``contrastive`` (the paper's eq. (2), DML-DA_con), ``npair``
  (eq. (4), DML-DA_np) or ``triplet`` (eq. (3), DML-DA_tri);
* ``<dataset>``: ``cars`` (Cars196), ``cub`` (CUB-200-2011), ``sop``
  (Stanford Online Products) with the paper's settings (Sec. IV-A), or
  ``procedural`` (offline, small, for this machine);
* ``<regularizer>`` (optional, default ``density``): ``density`` (DML-DA,
  eq. (8)), ``density_minus`` (DML-DA⁻, eq. (6)), ``gor``, ``entropy`` or
  ``none`` (the plain base loss: the paper's Con / NP / Tri baselines).

  python launch/train.py --config=configs/dmlda.py:contrastive,cars \\
      --config.data.data_dir=/data/cars196 \\
      --config.model.pretrained=/weights/googlenet_imagenet.npz \\
      --workdir=workdirs/dmlda_con_cars

The per-name files (``configs/dmlda_contrastive_cars.py``, ...) call this one.

Paper settings (Sec. IV-A): GoogLeNet pretrained on ImageNet + a randomly
initialised 128-d fc embedding, L2-normalised; Adam (β 0.9/0.999); learning
rate 5e-4 (Cars196), 1e-5 (CUB), 3e-5 (SOP); batches of 100; 30,000
iterations (here ``train.steps_per_epoch × train.epochs``, with the epoch
about one pass of the sampler); α_c initialised to 0.5, η = 0.5, λ = 10, all
margins 1. Batches: 10 classes × 10 images (Cars196, CUB); for SOP (~5 images
a class) whole classes accumulated up to 100 images (``whole_class``).
Splits: the first 98 / 100 classes of Cars196 / CUB train, the rest test;
SOP's own 11,318 / 11,316-class split (all ``data.split='predefined'``: the
loaders store that split). Original densities D⁽⁰⁾ are measured on the
1,024-d global-pooled GoogLeNet features (the paper's ``pool5/7x7_s1``).

``model.pretrained`` is left empty: set it to the ImageNet GoogLeNet weights
converted for dmlx by ``launch/convert_weights.py`` (read by
``dmlx.models.pretrained.load_into``).
Without it the backbone starts from random weights, which neither the paper
nor its numbers assume. ``model.backbone='bn_inception'`` swaps in the
BN-Inception backbone most later DML papers use. Data are read from
``data.data_dir`` (the original archive layout, see ``dmlx/data/archives.py``).
"""
from __future__ import annotations

from ml_collections import ConfigDict

from dmlx.config import base_config
from dmlx.config import procedural_data

LOSSES = ("contrastive", "npair", "triplet")
DATASETS = ("cars", "cub", "sop", "procedural")
REGULARIZERS = ("density", "density_minus", "gor", "entropy", "none")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# dataset -> (loader name, Adam learning rate, steps_per_epoch, epochs).
# steps_per_epoch ≈ one pass of the sampler (Cars196: ~89 P×K batches,
# CUB: ~60, SOP: ~596 whole-class batches); steps × epochs = 30,000.
PAPER_DATA = {
    "cars": ("cars196", 5e-4, 100, 300),
    "cub": ("cub200", 1e-5, 60, 500),
    "sop": ("sop", 3e-5, 600, 50),
}


def parse(arg: str | None) -> tuple[str, str, str]:
  """``'<loss>,<dataset>[,<regularizer>]'`` -> its three parts (checked)."""
  parts = [p.strip() for p in (arg or "contrastive,cars").split(",")]
  if len(parts) == 2:
    parts.append("density")
  if len(parts) != 3:
    raise ValueError(f"configs/dmlda.py: argument {arg!r} must be "
                     "'<loss>,<dataset>[,<regularizer>]'.")
  loss, dataset, regularizer = parts
  for value, valid, what in ((loss, LOSSES, "loss"),
                             (dataset, DATASETS, "dataset"),
                             (regularizer, REGULARIZERS, "regularizer")):
    if value not in valid:
      raise ValueError(f"configs/dmlda.py: unknown {what} {value!r} in "
                       f"{arg!r}; expected one of {valid}.")
  return loss, dataset, regularizer


def _method(c: ConfigDict, loss: str, regularizer: str) -> None:
  """The DML-DA method fields (every field dmlx.methods.dmlda reads) and
  the base loss, with the paper's values."""
  c.method.name = "dmlda"
  c.method.regularizer = regularizer
  c.method.lam = 10.0             # λ, eq. (9)
  c.method.eta = 0.5              # η, eq. (7)
  c.method.alpha_init = 0.5       # α_c at the start
  c.method.correlation = True     # eq. (8)'s penalty (off for density_minus)
  c.method.min_class_size = 2     # a class's density needs two of its images
  c.method.entropy_temperature = 1.0
  if loss == "contrastive":       # eq. (2): D + max(0, m_p - D), m_p = 1
    c.method.base = "dmlda_contrastive"
    c.loss.name = "dmlda_contrastive"
    c.loss.kwargs = ConfigDict({"margin": 1.0})
  elif loss == "npair":           # eq. (4) on L2-normalised embeddings
    c.method.base = "registry"
    c.loss.name = "npair"
    c.loss.kwargs = ConfigDict({"l2_reg": 0.0})   # norms are fixed at 1
  else:                           # eq. (3), m_t = 1, over all triplets
    c.method.base = "registry"
    c.loss.name = "triplet_all"
    c.loss.kwargs = ConfigDict({"margin": 1.0, "squared": True,
                                "reduction": "valid"})


def _paper_data(c: ConfigDict, dataset: str) -> None:
  name, lr, steps_per_epoch, epochs = PAPER_DATA[dataset]
  c.data.name = name
  c.data.data_dir = ""             # set on the command line
  c.data.split = "predefined"
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  if dataset == "sop":
    c.sampler.name = "whole_class"
    c.sampler.batch_size = 100
    c.eval.ks = (1, 10, 100, 1000)
  else:
    c.sampler.name = "pk"
    c.sampler.classes_per_batch = 10
    c.sampler.images_per_class = 10
    c.eval.ks = (1, 2, 4, 8, 16, 32, 64, 128)
  c.model.backbone = "googlenet"   # or "bn_inception"
  c.model.backbone_kwargs = ConfigDict({"width": 1.0, "pooling": "avg"})
  c.model.embedding_dim = 128
  c.model.pretrained = ""          # ImageNet weights: see the module docstring
  c.optim.name = "adam"
  c.optim.lr = lr
  c.train.steps_per_epoch = steps_per_epoch
  c.train.epochs = epochs
  c.train.log_every = 100
  c.train.eval_every_epochs = 0


def _procedural_data(c: ConfigDict) -> None:
  """Small offline stand-in: 48 procedural classes (24 train, 24 unseen test)
  of 30 images at 24 px, a 3-block small CNN, 10 classes × 6 images a batch,
  192 steps (about a minute on a CPU)."""
  procedural_data(c)
  c.data.split = "zero_shot"
  c.sampler.name = "pk"
  c.sampler.classes_per_batch = 10
  c.sampler.images_per_class = 6
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ConfigDict({"width": 16, "num_blocks": 3})
  c.model.embedding_dim = 32
  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.train.steps_per_epoch = 0      # one pass of the sampler (12 steps)
  c.train.epochs = 16
  c.train.log_every = 20
  c.eval.batch_size = 256
  c.eval.train_subset = 720        # the whole training set


def get_config(arg: str | None = None) -> ConfigDict:
  """The run config for ``arg = '<loss>,<dataset>[,<regularizer>]'``."""
  loss, dataset, regularizer = parse(arg)
  c = base_config()
  _method(c, loss, regularizer)
  if dataset == "procedural":
    _procedural_data(c)
  else:
    _paper_data(c, dataset)
  c.model.normalise = True         # the paper L2-normalises every embedding
  c.model.input_layer = "pooled"
  c.optim.method_lr_mult = 1.0     # α_c learn at the network's rate
  return c
