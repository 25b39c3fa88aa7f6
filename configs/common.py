"""Pieces the config files share: input statistics, the offline data block,
the baselines' hyper-parameters and the ``runlocal`` smoke variant.

Config files import this module like any other (``from configs import
common``); nothing here is a config of its own.
"""
from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from dmlx.config import base_config  # re-exported for the config files
from dmlx.config import parse_arg  # re-exported for the config files
from dmlx.config import set_method  # re-exported for the config files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's GoogLeNet weights expect (x - 0.5) / 0.5.
GOOGLENET_MEAN_STD = (0.5, 0.5, 0.5)

# The baselines' hyper-parameters, written once: loss name -> (the loss's
# kwargs, config overrides). The values their papers use for L2-normalised
# embeddings; none was tuned on test classes.
BASELINES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "triplet_all": ("triplet_all", {"margin": 0.2}, {}),
    "triplet_semihard": ("triplet_semihard", {"margin": 0.2}, {}),
    "triplet_batch_hard": ("triplet_batch_hard", {"margin": 0.2}, {}),
    "contrastive": ("contrastive", {"pos_margin": 0.0, "neg_margin": 0.5}, {}),
    # N-pair (Sohn 2016) works on unnormalised embeddings with an L2 penalty.
    "npair": ("npair", {"l2_reg": 0.002}, {"model.normalise": False}),
    # Margin loss (Wu et al. 2017): β learned at its own rate.
    "margin": ("margin", {"alpha": 0.2, "beta0": 1.2},
               {"optim.method_lr_mult": 10.0}),
    # ProxyNCA (Movshovitz-Attias et al. 2017): proxies learn fast.
    "proxy_nca": ("proxy_nca", {"scale": 3.0}, {"optim.method_lr_mult": 100.0}),
    "lifted_structure": ("lifted_structure", {"margin": 1.0}, {}),
    "nca": ("nca", {"scale": 16.0}, {}),
    "softmax": ("softmax", {}, {}),
    "normalized_softmax": ("normalized_softmax", {"temperature": 0.05}, {}),
    # Vo & Hays (2019) Sec. 3.4: all triplets, log(1 + exp(d_ap − d_an)) on
    # squared distances of unit features times a scale learned from 4 (their
    # code).
    "smooth_triplet": ("smooth_triplet", {"scale": 4.0, "learn_scale": True},
                       {}),
}


def override(c: ConfigDict, updates: dict[str, Any]) -> None:
  """Sets dotted keys (``'optim.lr': 1e-3``) of ``c``."""
  for key, value in updates.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value


def set_baseline(c: ConfigDict, name: str) -> None:
  """The plain method with baseline ``name`` of :data:`BASELINES`."""
  if name not in BASELINES:
    raise ValueError(f"Unknown baseline {name!r}; expected one of "
                     f"{sorted(BASELINES)}.")
  loss, kwargs, overrides = BASELINES[name]
  set_method(c, "loss")
  c.loss.name = loss
  c.loss.kwargs = ConfigDict(dict(kwargs))
  override(c, overrides)


def procedural_data(c: ConfigDict, *, num_classes: int = 48, per_class: int = 30,
                    image_size: int = 28, crop_size: int = 24, seed: int = 0) -> None:
  """Points ``c.data`` at the offline procedural dataset (random crops of
  ``crop_size`` from ``image_size`` images, flips, its normalisation); the
  split is left to the caller."""
  c.data.name = "procedural"
  c.data.options.num_classes = num_classes
  c.data.options.per_class = per_class
  c.data.options.seed = seed
  c.data.image_size = image_size
  c.data.crop_size = crop_size
  c.data.flip = True
  c.data.mean = (0.45, 0.45, 0.45)
  c.data.std = (0.3, 0.3, 0.3)


def runlocal(c: ConfigDict) -> ConfigDict:
  """big_vision's ``runlocal``: the same run shrunk to a few steps (smoke
  tests, a first look at a new set-up): 1 epoch of 3 steps, small
  evaluation batches and subsets, images at most 72 px (crops 64)."""
  c.train.epochs = 1
  c.train.steps_per_epoch = 3
  c.train.log_every = 1
  c.train.eval_every_epochs = 0
  c.train.tensorboard = False
  c.eval.batch_size = 64
  c.eval.train_subset = 200
  if c.data.image_size > 72:
    c.data.image_size = 72
    c.data.crop_size = 64 if c.data.crop_size else 0
  return c
