"""Any baseline loss on offline data: the procedural objects or digits.

  python launch/train.py --config=configs/baselines.py:loss=margin
  python launch/train.py --config=configs/baselines.py:loss=proxy_nca \\
      --config.train.epochs=4
  python launch/train.py --config=configs/baselines.py:dataset=digits,loss=triplet_semihard

Arguments: ``loss`` (default ``triplet_semihard``): triplet_all,
triplet_semihard, triplet_batch_hard, contrastive, npair, margin, proxy_nca,
lifted_structure, nca, softmax, normalized_softmax, smooth_triplet (their
hyper-parameters: ``configs/common.py:BASELINES``); ``dataset``
(``procedural`` or ``digits``); ``runlocal``.

``procedural``: zero-shot, 120 classes × 40 images at 32 px (crops of 36 px),
60 training classes, a 3-block small CNN (width 32), 64-d embedding, 16 × 4
batches, 8 epochs. Every loss shares the data, network, sampler and budget.

``digits``: scikit-learn's digits (8×8 upsampled to 16 px), digits 0-4 train,
5-9 test; a tiny run for tests and smoke checks (5 × 8 batches, 4 epochs,
cosine decay: at a constant rate the near-zero loss spiked and zero-shot
recall drifted back down).
"""
from configs import common

VARIANTS = tuple(f"loss={name}" for name in common.BASELINES) + (
    "dataset=digits,loss=triplet_semihard",)


def get_config(arg: str | None = None):
  """The offline run of ``arg`` (see the module docstring)."""
  a = common.parse_arg(arg, loss="triplet_semihard", dataset="procedural",
                       runlocal=False)
  c = common.base_config()
  if a.dataset == "procedural":
    common.procedural_data(c, num_classes=120, per_class=40, image_size=36,
                           crop_size=32)
    c.sampler.classes_per_batch = 16
    c.sampler.images_per_class = 4
    c.model.backbone = "small_cnn"
    c.model.backbone_kwargs.width = 32
    c.model.backbone_kwargs.num_blocks = 3
    c.model.embedding_dim = 64
    c.optim.lr = 1e-3
    c.train.epochs = 8
    c.train.log_every = 25
  elif a.dataset == "digits":
    c.data.name = "digits"
    c.data.image_size = 16
    c.data.mean = (0.2,)
    c.data.std = (0.35,)
    c.sampler.classes_per_batch = 5
    c.sampler.images_per_class = 8
    c.model.backbone_kwargs.width = 16
    c.model.backbone_kwargs.num_blocks = 2
    c.model.embedding_dim = 32
    c.optim.lr = 3e-3
    c.optim.schedule = "cosine"
    c.train.epochs = 4
    c.train.log_every = 10
  else:
    raise ValueError(f"configs/baselines.py: unknown dataset {a.dataset!r}; "
                     "expected 'procedural' or 'digits'.")
  common.set_baseline(c, a.loss)
  return common.runlocal(c) if a.runlocal else c
