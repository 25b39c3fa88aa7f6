"""Any baseline loss on the procedural object dataset, zero-shot split.

One config, one variant per loss (big_vision style ``file.py:variant``):

  python launch/train.py --config=configs/procedural_baseline.py:margin
  python launch/train.py --config=configs/procedural_baseline.py:proxy_nca \
      --config.train.epochs=4

Variants: triplet_all, triplet_semihard, triplet_batch_hard, contrastive,
npair, margin, proxy_nca, lifted_structure, nca, softmax, normalized_softmax.
Every variant shares the data, network, sampler and budget; only the loss and
its hyper-parameters (the values their papers use for L2-normalised
embeddings, not tuned on the test classes) differ.
"""
from dmlx.config import base_config
from dmlx.config import procedural_data

# loss name -> (hyper-parameters, config overrides)
LOSSES = {
    "triplet_all": ({"margin": 0.2}, {}),
    "triplet_semihard": ({"margin": 0.2}, {}),
    "triplet_batch_hard": ({"margin": 0.2}, {}),
    "contrastive": ({"pos_margin": 0.0, "neg_margin": 0.5}, {}),
    # N-pair (Sohn 2016) works on unnormalised embeddings with an L2 penalty.
    "npair": ({"l2_reg": 0.002}, {"model.normalise": False}),
    # Margin loss (Wu et al. 2017): β learned at its own rate.
    "margin": ({"alpha": 0.2, "beta0": 1.2}, {"optim.method_lr_mult": 10.0}),
    "proxy_nca": ({"scale": 3.0}, {"optim.method_lr_mult": 100.0}),
    "lifted_structure": ({"margin": 1.0}, {}),
    "nca": ({"scale": 16.0}, {}),
    "softmax": ({}, {}),
    "normalized_softmax": ({"temperature": 0.05}, {}),
}


def get_config(arg: str = "triplet_semihard"):
  """The procedural-dataset run for loss ``arg``."""
  if arg not in LOSSES:
    raise ValueError(f"Unknown variant {arg!r}; expected one of {sorted(LOSSES)}.")
  c = base_config()
  procedural_data(c, num_classes=120, per_class=40, image_size=36, crop_size=32)
  c.sampler.classes_per_batch = 16
  c.sampler.images_per_class = 4
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs.width = 32
  c.model.backbone_kwargs.num_blocks = 3
  c.model.embedding_dim = 64
  hyper, overrides = LOSSES[arg]
  c.loss.name = arg
  c.loss.kwargs = hyper
  c.optim.lr = 1e-3
  c.train.epochs = 8
  c.train.log_every = 25
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c
