"""DML-DA (Li et al., 2019): one config for every (base loss, dataset) pair.

Arguments (``--config=configs/dmlda.py:loss=triplet,dataset=cub``):

* ``loss``: ``contrastive`` (default; the paper's eq. (2), DML-DA_con),
  ``npair`` (eq. (4), DML-DA_np) or ``triplet`` (eq. (3), DML-DA_tri);
* ``dataset``: ``cars`` (default; Cars196), ``cub`` (CUB-200-2011), ``sop``
  (Stanford Online Products) with the paper's settings (Sec. IV-A), or
  ``procedural`` (offline, small, for this machine);
* ``regularizer`` (default ``density``): ``density`` (DML-DA, eq. (8)),
  ``density_minus`` (DML-DA⁻, eq. (6)), ``gor``, ``entropy`` or ``none``
  (the plain base loss: the paper's Con / NP / Tri baselines);
* ``runlocal``.

  python launch/train.py --config=configs/dmlda.py:loss=contrastive,dataset=cars \\
      --config.data.data_dir=/data/cars196 \\
      --config.model.pretrained=/weights/googlenet_imagenet.npz \\
      --workdir=workdirs/dmlda_con_cars

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

from configs import common

LOSSES = ("contrastive", "npair", "triplet")
DATASETS = ("cars", "cub", "sop", "procedural")
REGULARIZERS = ("density", "density_minus", "gor", "entropy", "none")
VARIANTS = tuple(f"loss={loss},dataset={ds}" for loss in LOSSES
                 for ds in DATASETS) + ("loss=triplet,dataset=procedural,"
                                        "regularizer=gor",)

# dataset -> (loader name, Adam learning rate, steps_per_epoch, epochs).
# steps_per_epoch ≈ one pass of the sampler (Cars196: ~89 P×K batches,
# CUB: ~60, SOP: ~596 whole-class batches); steps × epochs = 30,000.
PAPER_DATA = {
    "cars": ("cars196", 5e-4, 100, 300),
    "cub": ("cub200", 1e-5, 60, 500),
    "sop": ("sop", 3e-5, 600, 50),
}


def method(c: ConfigDict, loss: str, regularizer: str) -> None:
  """DML-DA (:class:`dmlx.methods.dmlda.Config`) and its base loss with the
  paper's values: λ = 10 (eq. 9), η = 0.5 (eq. 7), α_c = 0.5 at the start,
  eq. (8)'s correlation penalty, a class's density from >= 2 of its images."""
  common.set_method(c, "dmlda", regularizer=regularizer, lam=10.0, eta=0.5,
                    alpha_init=0.5, correlation=True, min_class_size=2,
                    entropy_temperature=1.0)
  if loss == "contrastive":       # eq. (2): D + max(0, m_p - D), m_p = 1
    c.loss.name = "dmlda_contrastive"
    c.loss.kwargs = ConfigDict({"margin": 1.0})
  elif loss == "npair":           # eq. (4) on L2-normalised embeddings
    c.loss.name = "npair"
    c.loss.kwargs = ConfigDict({"l2_reg": 0.0})   # norms are fixed at 1
  else:                           # eq. (3), m_t = 1, over all triplets
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
  c.data.mean = common.IMAGENET_MEAN
  c.data.std = common.IMAGENET_STD
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
  common.procedural_data(c)
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
  """The run of ``loss``, ``dataset`` and ``regularizer`` (module docstring)."""
  a = common.parse_arg(arg, loss="contrastive", dataset="cars",
                       regularizer="density", runlocal=False)
  for value, valid, what in ((a.loss, LOSSES, "loss"),
                             (a.dataset, DATASETS, "dataset"),
                             (a.regularizer, REGULARIZERS, "regularizer")):
    if value not in valid:
      raise ValueError(f"configs/dmlda.py: unknown {what} {value!r} in "
                       f"{arg!r}; expected one of {valid}.")
  c = common.base_config()
  method(c, a.loss, a.regularizer)
  if a.dataset == "procedural":
    _procedural_data(c)
  else:
    _paper_data(c, a.dataset)
  c.model.normalise = True         # the paper L2-normalises every embedding
  c.model.input_layer = "pooled"
  c.optim.method_lr_mult = 1.0     # α_c learn at the network's rate
  return common.runlocal(c) if a.runlocal else c
