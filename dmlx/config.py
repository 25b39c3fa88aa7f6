"""The base run configuration: every key a dmlx run reads, with its default.

Config files in ``configs/`` call :func:`base_config`, choose a method with
:func:`set_method` (which writes every setting of the method's ``Config``
dataclass with its default) and override what they need. A misspelt key on
the command line (``--config.train.epoch=3``) is an error naming the key
(configs are locked by ``launch/train.py``); a misspelt ``config.method``
key in a file is one too, when the run reads the method's settings.

:func:`parse_arg` is the one parser of config arguments
(``--config=configs/real_data.py:dataset=omniglot,method=nngk``).
"""
from __future__ import annotations

from typing import Any

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
  c.data.validation_attribute_values = ()  # by_attribute: training values held
                                    # out for validation (a whole alphabet)
  c.data.classify_fraction = 0.0    # > 0: a classification split of the
                                    # evaluated classes (this fraction trains)
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.data.bgr = False                # reverse channels after normalising (Caffe weights);
                                    # mean/std/bgr are set from model.pretrained when given
  c.data.cache_dir = ""
  c.data.on_bad_image = "error"     # error | skip: an image that does not decode is
                                    # fatal (its path named) or dropped and counted
  c.data.options = ConfigDict()     # dataset-specific loader options (e.g. num_classes)
  c.data.class_range = ()           # (lo, hi): keep classes lo..hi-1 only

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
  c.model.dtype = "float32"         # backbone computation: float32 | bfloat16
  c.model.pretrained = ""           # path written by launch/convert_weights.py
  c.model.reinit_layers = ""        # comma-separated layers put back to their fresh
                                    # initialisation after loading pretrained weights (Vo & Hays NetB)

  # Method: dmlx.methods.METHODS[name]; 'loss' = a plain registry loss.
  # set_method writes the method's settings (its Config dataclass).
  c.method = ConfigDict({"name": "loss", "layer": "embedding"})

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
  c.optim.weight_decay = 0.0         # on the network's weights
  c.optim.method_weight_decay = 0.0  # on params['method'] (w_i, β, α_c, R)
  c.optim.momentum = 0.9
  c.optim.schedule = "constant"     # constant | cosine | step
  c.optim.warmup_steps = 0
  c.optim.decay_boundaries = (0.5, 0.75)  # step: fractions of training
  c.optim.decay_factor = 0.1
  c.optim.grad_clip = 0.0
  c.optim.backbone_frozen_steps = 0 # first iterations with backbone rate 0

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
  c.train.transfer_guard = "disallow"  # jax.transfer_guard of the step loop:
                                    # an implicit host<->device copy is an
                                    # error outside the declared log steps

  # Evaluation: dmlx.eval.
  c.eval = ConfigDict()
  c.eval.ks = (1, 2, 4, 8)
  c.eval.metrics = ("recall", "nmi", "map_r")
  c.eval.layers = "embedding"       # comma-separated named features: pool5_3,fc6,aux_embedding
  c.eval.batch_size = 256
  c.eval.train_subset = 2000        # examples of the training set for train-set recall
  c.eval.untrained_baseline = True
  c.eval.l2_normalise = False       # evaluate every layer on unit features (cosine)
  # Evaluators beside the retrieval table (dmlx.train.evaluators): 'auto' =
  # the method's own (NNGK's classifier, Magnet's kNC, ...) and 1-NN;
  # or comma-separated names. Classifiers run on classification splits only.
  c.eval.evaluators = "auto"
  # N-way K-shot episodes on the test classes (dmlx.eval.few_shot), reported
  # beside Recall@K when ways > 0: 1-NN to the supports ('nearest') or to the
  # class means ('prototype'); with ``group`` (an attribute, e.g. Omniglot's
  # 'alphabet') also within-group episodes. Cosine when eval.l2_normalise.
  c.eval.few_shot = ConfigDict()
  c.eval.few_shot.ways = 0
  c.eval.few_shot.shots = 1
  c.eval.few_shot.queries = 1           # per class and episode
  c.eval.few_shot.episodes = 1000
  c.eval.few_shot.classifier = "nearest"
  c.eval.few_shot.group = ""
  c.eval.few_shot.seed = 0
  # PNG figures in the work directory at the end of training
  # (dmlx.train.figures): Recall@K trained vs untrained, training curves, a
  # 2-D map of the test embeddings, a retrieval grid.
  c.eval.report = False
  return c


def set_method(c: ConfigDict, name: str, **settings: Any) -> None:
  """Sets ``c.method`` to method ``name`` with every setting of its
  ``Config`` dataclass: its defaults, then ``settings`` (an unknown name is
  an error). The method's base loss stays in ``c.loss``."""
  from dmlx import methods  # pylint: disable=g-import-not-at-top
  from dmlx import settings as settings_lib  # pylint: disable=g-import-not-at-top
  method = methods.get(name)
  c.method = settings_lib.to_config_dict(method.Config, extra={"name": name},
                                         **settings)


def parse_arg(arg: str | None, **spec: Any) -> ConfigDict:
  """Parses a config argument ``'key=value,key2=value2,flag'`` (big_vision's
  form) against ``spec``, the keys with their defaults.

  Values take the type of their default (``int``, ``float``, ``bool``,
  ``str``); a bare ``flag`` sets a ``bool`` key to True. Unknown keys, bad
  values and a missing value are errors naming the key.

  Returns:
    A ``ConfigDict`` with every key of ``spec``.
  """
  out = ConfigDict(dict(spec))
  for token in (arg or "").split(","):
    token = token.strip()
    if not token:
      continue
    key, sep, value = token.partition("=")
    key = key.strip()
    if key not in spec:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; the "
                       f"arguments are {', '.join(sorted(spec))}.")
    default = spec[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"Config argument {key!r} needs a value "
                         f"({key}=...), got {arg!r}.")
      out[key] = True
      continue
    value = value.strip()
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        out[key] = value.lower() in ("true", "1")
      elif isinstance(default, int):
        out[key] = int(value)
      elif isinstance(default, float):
        out[key] = float(value)
      else:
        out[key] = value
    except ValueError:
      raise ValueError(f"Config argument {key}={value!r} must be of type "
                       f"{type(default).__name__}.") from None
  return out
