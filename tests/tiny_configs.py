"""Tiny versions of every method's config (few classes, small images and
network), shared by the loop tests and the multi-device check."""
import configs


def shrink(c, *, steps: int, epochs: int = 1, log_every: int | None = None):
  """A tiny version of ``c``: few classes, small images and network."""
  if c.data.name == "procedural":
    c.data.options.num_classes = min(c.data.options.num_classes, 16)
    c.data.options.per_class = min(c.data.options.per_class, 12)
    c.data.image_size, c.data.crop_size = 16, 12
  c.sampler.classes_per_batch = min(c.sampler.classes_per_batch, 4)
  c.model.backbone_kwargs.width = 8
  c.model.backbone_kwargs.num_blocks = 2
  c.model.embedding_dim = 8
  if c.model.aux_embedding_dim:
    c.model.aux_embedding_dim = 8
  c.train.epochs, c.train.steps_per_epoch = epochs, steps
  c.train.log_every = log_every or steps
  c.train.progress = False
  c.train.tensorboard = False
  c.eval.untrained_baseline = False
  c.eval.train_subset = 48
  c.eval.ks = (1,)
  c.eval.metrics = ("recall",)
  return c


# Every method (and the MIC schedules), each with a setting that refreshes.
METHOD_CONFIGS = {
    "loss": ("baselines.py:loss=margin", {}),
    "nngk": ("nngk.py:dataset=procedural", {"method.num_neighbours": 20}),
    "magnet": ("magnet.py:dataset=procedural",
               {"method.K": 2, "method.M": 4, "method.L": 8,
                "method.sync_every": 4}),
    "mic_authors": ("mic.py:dataset=procedural",
                    {"method.schedule": "authors", "method.num_clusters": 4,
                     "sampler.classes_per_batch": 4}),
    "mic_joint": ("mic.py:dataset=procedural",
                  {"method.num_clusters": 4, "sampler.classes_per_batch": 4}),
    "dmlda": ("dmlda.py:dataset=procedural", {"sampler.classes_per_batch": 4}),
}


def method_config(name, **sizes):
  spec, updates = METHOD_CONFIGS[name]
  c = shrink(configs.load(spec), **sizes)
  for key, value in updates.items():
    section, field = key.split(".")
    c[section][field] = value
  return c
