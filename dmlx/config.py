"""The base run configuration: every key a dmlx run reads, with its default.

Config files in ``configs/`` call :func:`base_config` and override what they
need, so a misspelt key on the command line (``--config.train.epoch=3``) is an
error naming the key (configs are locked by ``launch/train.py``), and every
method finds every field it reads.
"""
from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
  """Returns the default configuration (a small triplet run on digits)."""
  c = ConfigDict()
  c.seed = 0

  # Data: dmlx.data.pipeline.load_splits.
  c.data = ConfigDict()
  c.data.name = "digits"            # digits | procedural | cub200 | cars196 | sop | inshop | ...
  c.data.data_dir = ""              # where the original archive / TFDS data lives
  c.data.image_size = 16            # stored size (the papers' "resize 256")
  c.data.crop_size = 0              # random crop in training, centre at test (the "224"); 0 = none
  c.data.flip = False
  c.data.split = "zero_shot"        # zero_shot | classification | by_attribute | predefined
  c.data.train_class_fraction = 0.5 # zero_shot: first classes train, rest test
  c.data.num_train_classes = 0      # zero_shot: overrides the fraction when > 0
  c.data.train_fraction = 0.75      # classification: per-class fraction of images to train
  c.data.split_attribute = ""       # by_attribute: e.g. 'alphabet'
  c.data.train_attribute_values = ()  # by_attribute: values that go to train
  c.data.validation_classes = 0     # > 0: evaluate on this many held-out *training* classes
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.data.bgr = False                # reverse channels after normalising (Caffe weights);
                                    # mean/std/bgr are set from model.pretrained when given
  c.data.cache_dir = ""
  c.data.options = ConfigDict()     # dataset-specific loader options (e.g. num_classes)

  # Batches: dmlx.data.samplers.
  c.sampler = ConfigDict()
  c.sampler.name = "pk"             # pk | random | whole_class (methods may bring their own)
  c.sampler.classes_per_batch = 8   # P
  c.sampler.images_per_class = 4    # K
  c.sampler.batch_size = 32         # random / whole_class

  # Network: dmlx.models.build_model.
  c.model = ConfigDict()
  c.model.backbone = "small_cnn"
  c.model.backbone_kwargs = ConfigDict({"width": 16, "num_blocks": 2})
  c.model.embedding_dim = 32
  c.model.fc_layers = ()
  c.model.normalise = True
  c.model.scale = 1.0
  c.model.dropout = 0.0
  c.model.aux_embedding_dim = 0     # MIC's auxiliary encoder E_β
  c.model.input_layer = "pooled"
  c.model.pretrained = ""           # path written by launch/convert_weights.py
  c.model.reinit_layers = ""        # comma-separated layers put back to their fresh
                                    # initialisation after loading pretrained weights (Vo & Hays NetB)

  # Method: dmlx.methods.<name>.make(config); 'loss' = a plain registry loss.
  c.method = ConfigDict()
  c.method.name = "loss"

  # Loss: dmlx.losses registry name and hyper-parameters.
  c.loss = ConfigDict()
  c.loss.name = "triplet_semihard"
  c.loss.kwargs = ConfigDict({"margin": 0.2})

  # Optimiser: dmlx.train.optim.make_optimizer.
  c.optim = ConfigDict()
  c.optim.name = "adam"             # adam | adamw | sgd
  c.optim.lr = 1e-3
  c.optim.backbone_lr_mult = 1.0    # the papers train the new head faster than the
  c.optim.head_lr_mult = 1.0        # pretrained backbone, and loss parameters
  c.optim.method_lr_mult = 1.0      # (β, proxies, centre weights, α_c) at their own rate
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9
  c.optim.schedule = "constant"     # constant | cosine | step
  c.optim.warmup_steps = 0
  c.optim.decay_boundaries = (0.5, 0.75)  # step: fractions of training
  c.optim.decay_factor = 0.1
  c.optim.grad_clip = 0.0

  # Training loop: dmlx.train.loop.
  c.train = ConfigDict()
  c.train.epochs = 5
  c.train.steps_per_epoch = 0       # 0 = one pass of the sampler
  c.train.log_every = 20
  c.train.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
  c.train.eval_every_epochs = 0     # periodic per-layer train/test recall (0 = off)
  c.train.max_checkpoints = 2
  c.train.progress = True
  c.train.tensorboard = True
  c.train.stop_after_epochs = 0     # > 0: exit after this many epochs, as if killed
                                    # (resume drills and tests)

  # Evaluation: dmlx.eval.
  c.eval = ConfigDict()
  c.eval.ks = (1, 2, 4, 8)
  c.eval.metrics = ("recall", "nmi", "map_r")
  c.eval.layers = "embedding"       # comma-separated named features: pool5_3,fc6,aux_embedding
  c.eval.batch_size = 256
  c.eval.train_subset = 2000        # examples of the training set for train-set recall
  c.eval.untrained_baseline = True
  return c


def procedural_data(c: ConfigDict, *, num_classes: int = 48, per_class: int = 30,
                    image_size: int = 28, crop_size: int = 24, seed: int = 0) -> None:
  """Points ``c.data`` at the offline procedural dataset (random crops of
  ``crop_size`` from ``image_size`` images, flips, its normalisation); the
  split is left to the caller. Shared by every offline config."""
  c.data.name = "procedural"
  c.data.options.num_classes = num_classes
  c.data.options.per_class = per_class
  c.data.options.seed = seed
  c.data.image_size = image_size
  c.data.crop_size = crop_size
  c.data.flip = True
  c.data.mean = (0.45, 0.45, 0.45)
  c.data.std = (0.3, 0.3, 0.3)


def sibling_config(config_file: str, shared: str, arg: str,
                   extra: str | None = None) -> ConfigDict:
  """``get_config(arg[,extra])`` of the config file ``shared`` in the folder of
  ``config_file``: how a thin per-dataset, per-method config file (e.g.
  ``configs/omniglot_nngk.py``) delegates to the one file holding the
  settings (``configs/real_data.py``)."""
  import os  # pylint: disable=g-import-not-at-top
  import runpy  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), shared)
  return runpy.run_path(path)["get_config"](
      ",".join([arg] + ([extra] if extra else [])))
