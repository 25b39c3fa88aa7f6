"""Magnet loss (Rippel et al., ICLR 2016): Appendix B's per-dataset settings
and the offline procedural run.

  python launch/train.py --config=configs/magnet.py:dataset=dogs \\
      --workdir=workdirs/magnet_dogs --config.data.data_dir=/path/to/stanford_dogs
  python launch/train.py --config=configs/magnet.py:dataset=procedural

Arguments: ``dataset`` (``dogs`` default, ``pets``, ``flowers``,
``procedural``), ``runlocal``.

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

``procedural``: offline and small, 40 object classes × 60 images at 32 px,
split for *classification* (the same classes in train and test, 75 % / 25 %
of each class's images), so the paper's kNC and soft kNN accuracies are
meaningful; ``--config.data.split=zero_shot`` gives the retrieval variant.
M=12 × D=4, α=1, K=4 clusters per class (45 training images per class; the
paper varies K with class cardinality: Pet 8 with ~100 images per class); the
embedding is not L2-normalised (the paper's representation is a plain FC
layer; eq. 5 is invariant to its global scale anyway).
"""
from configs import common

# dataset -> (dmlx dataset name, K, α, learning rate, epochs), Appendix B Table 1.
APPENDIX_B = {
    "dogs": ("dogs", 1, 0.71, 0.00292, 40),
    "pets": ("pets", 8, 7.18, 0.00184, 130),
    "flowers": ("flowers102", 1, 2.43, 0.024, 250),
}
VARIANTS = tuple(f"dataset={d}" for d in (*APPENDIX_B, "procedural"))


def method(c, *, M: int, D: int, K: int, alpha: float) -> None:  # pylint: disable=invalid-name
  """Magnet (:class:`dmlx.methods.magnet.Config`): M clusters × D examples
  per neighbourhood (section 3.2), K clusters per class, gap α (eq. 5),
  index refreshed every epoch, L = 128 for kNC (eq. 6), σ² for evaluation
  from a running average of the batch estimates."""
  common.set_method(c, "magnet", M=M, D=D, K=K, alpha=alpha, refresh_every=1,
                    L=128)


def _procedural(c) -> None:
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
  method(c, M=12, D=4, K=4, alpha=1.0)
  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.train.epochs = 10
  c.train.log_every = 25
  c.eval.metrics = ("recall", "nmi")


def _paper(c, dataset: str) -> None:
  name, k, alpha, lr, epochs = APPENDIX_B[dataset]
  c.data.name = name
  c.data.data_dir = ""              # the archive folder: pass --config.data.data_dir
  c.data.split = "predefined"
  c.data.image_size = 256
  c.data.crop_size = 224
  c.data.flip = True
  c.data.mean = common.IMAGENET_MEAN   # replaced by the checkpoint's own
  c.data.std = common.IMAGENET_STD
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


def get_config(arg: str | None = None):
  """Magnet on ``dataset`` (see the module docstring)."""
  a = common.parse_arg(arg, dataset="dogs", runlocal=False)
  c = common.base_config()
  if a.dataset == "procedural":
    _procedural(c)
  elif a.dataset in APPENDIX_B:
    _paper(c, a.dataset)
  else:
    raise ValueError(f"configs/magnet.py: unknown dataset {a.dataset!r}; "
                     f"expected one of {(*APPENDIX_B, 'procedural')}.")
  return common.runlocal(c) if a.runlocal else c
