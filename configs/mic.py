"""MIC + margin loss (Roth, Brattoli & Ommer, ICCV 2019): one config per dataset.

Arguments: ``dataset``: ``cub`` (CUB-200-2011), ``cars`` (CARS196), ``sop``
(Stanford Online Products), ``inshop`` (In-Shop Clothes), all with the
paper's settings (Sec. 4.1) and the authors' per-dataset values, or
``procedural`` (default; offline and small, for this machine); ``runlocal``.

  python launch/train.py --config=configs/mic.py:dataset=cub \\
      --config.data.data_dir=/data/cub200 \\
      --config.model.pretrained=/weights/resnet50_imagenet.npz \\
      --workdir=workdirs/mic_margin_cub

Paper settings (Sec. 4.1): ResNet-50 pretrained on ImageNet, class encoder E_α
and auxiliary encoder E_β both 128-d and L2-normalised, on the same pooled
features; 256 px images, random 224 crops and horizontal flips at training,
the centre crop at test; Adam, learning rate 1e-5; margin loss (Wu et al.)
with α = 0.2 and β initialised to 1.2, distance-weighted negatives; batches of
112 = 28 classes × 4 images (for E_β: 28 surrogate clusters × 4); surrogate
labels re-clustered every other epoch; random label switching p = 0.2; γ
"in [100, 2000] by cross-validation". The authors' scripts (``Sample_Runs``
of their code) fix, per dataset:

=======  ======== ===== ======== =====================  =================
dataset  clusters  γ     epochs  lr × 0.3 after epoch    Recall@k
=======  ======== ===== ======== =====================  =================
cub        30     2500    110     52                     1, 2, 4, 8
cars      200      500    110     65                     1, 2, 4, 8
sop        50      250     45     20, 35                 1, 10, 100, 1000
inshop    150      250     70     45                     1, 10, 20, 30, 50
=======  ======== ===== ======== =====================  =================

plus weight decay 4e-4 on the network, β learned at 5e-4 (here
``optim.method_lr_mult = 50``; dmlx has one rate for all method parameters,
so R also learns at 5e-4 where the authors use 1e-5), one β per class
(``beta_per_class``) and frozen BatchNorm statistics in the ResNet-50.

Schedule: the authors alternate a class step (on a class batch) and, with
probability 0.8, an auxiliary step (on a cluster batch) per iteration, i.e.
Algorithm 1. Here ``method.schedule = 'alternate'`` alternates L^α and L^β
steps on one P×K batch each, so one dmlx epoch (one pass of the sampler)
holds half an epoch of updates per task: ``train.epochs`` is twice the
authors' epochs and ``method.refresh_every = 4`` re-clusters every two of
their epochs (the paper's "every other epoch"; their scripts'
``cluster_update_freq 3`` re-clusters every fourth epoch).

``model.pretrained`` is left empty: set it to the ImageNet ResNet-50 weights
converted for dmlx (a path read by ``dmlx.models.pretrained.load_into``).
Without them the backbone starts from random weights, which neither the paper
nor its numbers assume (the first clustering relies on pretrained features).
Data are read from ``data.data_dir`` (the original archive layout, see
``dmlx/data/archives.py``). CUB200 / CARS196 train on the first 100 / 98
classes and test on the rest; SOP and In-Shop use their own splits
(``data.split = 'predefined'``).

Evaluation: E_α (``embedding``) gives the reported numbers; E_β
(``aux_embedding``) is evaluated beside it, and the concatenation [E_α, E_β]
is reported by the method (``concat/recall@1``, ...).
"""
from __future__ import annotations

from ml_collections import ConfigDict

from configs import common

DATASETS = ("cub", "cars", "sop", "inshop", "procedural")
VARIANTS = tuple(f"dataset={d}" for d in DATASETS)

# dataset -> loader, split, train classes (zero-shot), clusters C, γ,
# authors' epochs, epochs after which the learning rate drops, Recall@k.
PAPER = {
    "cub": dict(name="cub200", split="zero_shot", train_classes=100,
                clusters=30, gamma=2500.0, epochs=110, tau=(52,),
                ks=(1, 2, 4, 8)),
    "cars": dict(name="cars196", split="zero_shot", train_classes=98,
                 clusters=200, gamma=500.0, epochs=110, tau=(65,),
                 ks=(1, 2, 4, 8)),
    "sop": dict(name="sop", split="predefined", train_classes=0,
                clusters=50, gamma=250.0, epochs=45, tau=(20, 35),
                ks=(1, 10, 100, 1000)),
    "inshop": dict(name="inshop", split="predefined", train_classes=0,
                   clusters=150, gamma=250.0, epochs=70, tau=(45,),
                   ks=(1, 10, 20, 30, 50)),
}


def method(c: ConfigDict, *, num_clusters: int, gamma: float,
           refresh_every: int, schedule: str) -> None:
  """MIC (:class:`dmlx.methods.mic.Config`): C surrogate clusters, γ of
  l_d (eq. 1), re-clustering every ``refresh_every`` dmlx epochs, the
  ``schedule``; the authors' standardisation ('mean' first, none after),
  label switching p = 0.2, R's hidden width 512; the margin loss of Wu et al.
  """
  common.set_method(c, "mic", num_clusters=num_clusters, gamma=gamma,
                    refresh_every=refresh_every, grl_lambda=1.0,
                    standardise="mean", standardise_refresh="none",
                    switch_prob=0.2, schedule=schedule, projection_dim=512,
                    kmeans_niter=20, kmeans_nredo=1)
  c.loss.name = "margin"
  c.loss.kwargs = ConfigDict({"alpha": 0.2, "beta0": 1.2,
                              "beta_per_class": True, "nu": 0.0})
  c.sampler.name = "pk"
  c.eval.layers = "embedding,aux_embedding"


def _paper(c: ConfigDict, dataset: str) -> None:
  p = PAPER[dataset]
  c.data.name = p["name"]
  c.data.data_dir = ""                 # set on the command line
  c.data.split = p["split"]
  c.data.num_train_classes = p["train_classes"]
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = common.IMAGENET_MEAN
  c.data.std = common.IMAGENET_STD
  c.sampler.classes_per_batch = 28     # 112 = 28 × 4
  c.sampler.images_per_class = 4
  c.model.backbone = "resnet50"
  c.model.backbone_kwargs = ConfigDict({"pooling": "avg", "frozen_bn": True})
  c.model.embedding_dim = 128          # E_α
  c.model.aux_embedding_dim = 128      # E_β
  c.model.pretrained = ""              # ImageNet weights: see the docstring
  method(c, num_clusters=p["clusters"], gamma=p["gamma"], refresh_every=4,
         schedule="alternate")
  c.optim.name = "adam"
  c.optim.lr = 1e-5
  c.optim.weight_decay = 4e-4
  c.optim.method_lr_mult = 50.0        # β at 5e-4
  c.optim.schedule = "step"
  c.optim.decay_boundaries = tuple(t / p["epochs"] for t in p["tau"])
  c.optim.decay_factor = 0.3
  c.train.steps_per_epoch = 0          # one pass of the P×K sampler
  c.train.epochs = 2 * p["epochs"]     # alternating steps: see the docstring
  c.train.log_every = 100
  c.eval.ks = p["ks"]
  c.eval.batch_size = 128


def _procedural(c: ConfigDict) -> None:
  """Offline stand-in: 48 procedural object classes (24 train, 24 unseen
  test) at 24 px with colour / orientation / scale / background shared across
  classes, a 3-block small CNN, 32-d E_α and E_β, 16 classes × 4 images.

  γ: l_d is a mean over D of squared products of unit vectors, so its size
  scales like 1/D²: γ = 15 at D = 32 is γ ≈ 240 at the paper's D = 128 (the
  authors' SOP / In-Shop value 250). Chosen on 8 held-out *training* classes
  with ``experiments/mic.py --gamma_sweep=0,15,50,150`` (best Recall@1 and
  NMI there, see docs/results_mic.md).
  """
  common.procedural_data(c)
  c.data.split = "zero_shot"
  c.data.train_class_fraction = 0.5
  c.sampler.classes_per_batch = 16
  c.sampler.images_per_class = 4
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ConfigDict({"width": 16, "num_blocks": 3})
  c.model.embedding_dim = 32
  c.model.aux_embedding_dim = 32
  c.model.pretrained = ""
  method(c, num_clusters=12, gamma=15.0, refresh_every=2, schedule="joint")
  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.optim.method_lr_mult = 10.0        # β (and R) learn 10x faster
  c.train.steps_per_epoch = 0          # one pass of the sampler, 12 steps
  c.train.epochs = 30
  c.train.log_every = 20
  c.eval.batch_size = 256
  c.eval.train_subset = 720            # the whole training set


def get_config(arg: str | None = None) -> ConfigDict:
  """The MIC + margin-loss run on ``dataset`` (default ``procedural``)."""
  a = common.parse_arg(arg, dataset="procedural", runlocal=False)
  if a.dataset not in DATASETS:
    raise ValueError(f"configs/mic.py: unknown dataset {a.dataset!r}; expected "
                     f"one of {DATASETS}.")
  c = common.base_config()
  if a.dataset == "procedural":
    _procedural(c)
  else:
    _paper(c, a.dataset)
  c.model.normalise = True             # E_α, E_β on the unit sphere
  c.model.input_layer = "pooled"
  return common.runlocal(c) if a.runlocal else c
