r"""A pytorch-metric-learning (PML) reference run beside a dmlx run.

Trains, in PyTorch on the CPU, the network of a dmlx config with a PML loss and
miner, so a results table can put PML's triplet / multi-similarity losses next
to dmlx's runs of the same config:

  taskset -c 1 python experiments/pml_reference.py \
      --config_arg=dataset=omniglot,method=triplet_semihard \
      --loss=multi_similarity \
      --workdir=/tmp/pml_ms --threads=1

``--config_arg`` is the argument of ``configs/real_data.py``
(``'dataset=...,method=...[,protocol=...]'``); only its data, network, sampler,
optimiser, budget, seed and evaluation are used — the loss is PML's:

* ``triplet_semihard``: ``losses.TripletMarginLoss(margin=0.2)`` on the
  triplets of ``miners.TripletMarginMiner(margin=0.2,
  type_of_triplets="semihard")``, PML's default distance (``LpDistance``,
  normalised embeddings, p = 2) and reducer (mean over non-zero triplets).
* ``multi_similarity``: ``losses.MultiSimilarityLoss(alpha=2, beta=50,
  base=0.5)`` on the pairs of ``miners.MultiSimilarityMiner(epsilon=0.1)``
  (the MS paper's values, as in PML's documentation), with their default
  distance, ``CosineSimilarity`` (the MS loss is defined on similarities; on
  the L2-normalised embedding it is the Euclidean geometry of the other loss).

What is the same as ``launch/train.py`` on the config (by construction — the
replica calls dmlx's own code wherever it can):

* **split**: ``dmlx.data.pipeline.load_splits(config.data)``, the same
  train / test datasets.
* **batches**: ``dmlx.data.samplers.make_sampler(config.sampler,
  train.labels, config.seed)`` addressed by the global step exactly as
  ``dmlx.train.loop`` does (``batch(g // sampler.steps_per_epoch,
  g % sampler.steps_per_epoch)``), so every step sees the *same image
  indices* as the dmlx run with the same seed.
* **augmentation**: ``dmlx.data.augment.preprocess`` (random crop of
  ``crop_size`` from ``image_size``, horizontal flip when ``data.flip``,
  ``/255``, ``(x - mean) / std``) jitted on the host with the key the dmlx step
  uses: ``k_run = split(PRNGKey(seed), 3)[2]``, ``k_aug =
  split(fold_in(k_run, step), 3)[0]`` — the *same crops and flips* at every
  step. Evaluation uses the centre crop and the same normalisation (numpy).
* **network**: ``small_cnn`` + ``EmbeddingNet`` head: ``num_blocks`` blocks of
  3×3 conv without bias (SAME padding) → BatchNorm (ε = 1e-5, running
  averages with flax's momentum 0.9 = torch's 0.1) → ReLU → 2×2 max pool while
  the map is at least 2×2; global average (or max) pooling; a linear
  embedding with bias; L2 normalisation and scale as ``config.model``.
  BatchNorm is :class:`FlaxBatchNorm2d`, which updates its running variance
  with the *biased* batch variance as flax does (``torch.nn.BatchNorm2d``
  uses the unbiased one).
* **initial weights** (default ``init='dmlx'``): the flax network is
  initialised exactly as ``dmlx.train.run.fresh_state`` does
  (``model.init`` with ``split(PRNGKey(seed), 3)[0]``) and its parameters are
  copied into the torch modules, so both runs *start from the same weights*.
  ``init='torch'`` keeps PyTorch's default initialisation instead (Kaiming
  uniform for conv and linear, where flax uses LeCun normal and zero biases).
* **optimiser**: Adam (also AdamW, SGD) with ``optim.weight_decay`` as an L2
  term on the gradient (optax's ``add_decayed_weights`` before ``adam`` is
  torch's ``Adam(weight_decay=...)``), ``backbone_lr_mult`` /
  ``head_lr_mult`` as two parameter groups, ``grad_clip`` on the global norm,
  and the learning rate of *dmlx's own schedule*
  (``dmlx.train.optim.make_schedule``, e.g. cosine:
  ``lr · ½(1 + cos(π · min(t, T) / T))`` at update ``t`` of ``T``), tabulated
  once and applied through a ``torch.optim.lr_scheduler.LambdaLR`` (update 0
  uses ``lr``, as optax does).
* **steps**: ``train.epochs × (train.steps_per_epoch or the sampler's
  epoch)``.
* **evaluation**: test embeddings in ``model.eval()`` in batches of
  ``eval.batch_size``, scored by ``dmlx.eval.evaluate_retrieval`` with
  ``eval.ks`` / ``eval.metrics``, so the metric names and their definitions
  are dmlx's; on a classification split (test classes = training classes)
  also 1-NN accuracy against the training set (``dmlx.eval.knn_accuracy``),
  as ``dmlx.train.loop`` records it. The train-subset evaluation and the
  untrained baseline of a dmlx run are not repeated.

What may differ:

* The **loss**: PML's semi-hard miner keeps *every* triplet with
  ``d_ap < d_an <= d_ap + m`` and averages the non-zero hinge terms, where
  dmlx's ``triplet_semihard`` takes, per positive pair, the closest negative
  farther than the positive (FaceNet / TF-Addons) and averages over pairs.
  That is the point of the comparison, not a defect of the replica.
* Floating-point arithmetic (XLA vs ATen kernels, summation order, flax's
  ``E[x²] − E[x]²`` batch variance vs torch's two-pass one, optax vs torch
  Adam), so the runs agree at the start and drift apart slowly; and
  ``init='torch'`` starts elsewhere.
* ``grad_clip``: torch divides by ``norm + 1e-6``, optax by ``norm``.
* Only what the real-data configs use is replicated: the ``small_cnn``
  backbone, no fc layers, no dropout, no auxiliary embedding; pretrained weights (``model.pretrained``) are loaded into the
  flax network and copied, with their input normalisation; a plain-loss method (a config whose method brings its own sampler,
  e.g. Magnet, is trained here with ``config.sampler``). Anything else raises.
* ``seconds`` is the training plus the final evaluation (data loading and
  initialisation excluded, they are in ``setup_seconds``); a dmlx run's
  ``seconds`` (``experiments/common.train``) also holds its set-up, the
  untrained baseline and the train-subset evaluation.
* No checkpoints: a run that is killed starts again; a finished one (its
  ``final_metrics.json`` exists) is loaded, not retrained.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("triplet_semihard", "multi_similarity")
INITS = ("dmlx", "torch")
AVERAGE_STEPS = 25          # loss_first / loss_last average this many steps


# ---------------------------------------------------------------------------
# The network: dmlx.models.small_cnn.SmallCNN + dmlx.models.heads.EmbeddingNet.
# ---------------------------------------------------------------------------


class FlaxBatchNorm2d(nn.BatchNorm2d):
  """``flax.linen.BatchNorm`` over NCHW maps: in training, normalises with the
  biased batch variance *and* puts that biased variance into the running
  average (torch's own BatchNorm puts the unbiased one); in eval (or when
  ``frozen``) uses the running averages. ``momentum`` is torch's (0.1 = flax's
  0.9)."""

  def __init__(self, num_features: int, frozen: bool = False):
    super().__init__(num_features, eps=1e-5, momentum=0.1)
    self.frozen = frozen

  def forward(self, x: torch.Tensor) -> torch.Tensor:  # pylint: disable=arguments-renamed
    if not self.training or self.frozen:
      return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                          self.bias, False, 0.0, self.eps)
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    with torch.no_grad():
      self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
      self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
      self.num_batches_tracked.add_(1)
    scale = self.weight * torch.rsqrt(var + self.eps)
    shift = self.bias - mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class SmallCNN(nn.Module):
  """``dmlx.models.small_cnn.SmallCNN`` in torch (NCHW input). ``forward``
  returns the named features ``block1..blockN`` (NCHW) and ``pooled``."""

  def __init__(self, in_channels: int, width: int = 32, num_blocks: int = 3,
               widen: bool = True, frozen_bn: bool = False, pooling: str = "avg"):
    super().__init__()
    if pooling not in ("avg", "max"):
      raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}.")
    self.num_blocks, self.pooling = num_blocks, pooling
    channels = in_channels
    for i in range(num_blocks):
      ch = width * (2 ** min(i, 2) if widen else 1)
      setattr(self, f"conv{i + 1}", nn.Conv2d(channels, ch, 3, padding=1, bias=False))
      setattr(self, f"bn{i + 1}", FlaxBatchNorm2d(ch, frozen=frozen_bn))
      channels = ch
    self.out_channels = channels

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = {}
    for i in range(self.num_blocks):
      x = getattr(self, f"conv{i + 1}")(x)
      x = F.relu(getattr(self, f"bn{i + 1}")(x))
      if min(x.shape[2:]) >= 2:
        x = F.max_pool2d(x, 2, 2)
      feats[f"block{i + 1}"] = x
    feats["pooled"] = (x.amax(dim=(2, 3)) if self.pooling == "max"
                       else x.mean(dim=(2, 3)))
    return feats


class EmbeddingNet(nn.Module):
  """``dmlx.models.heads.EmbeddingNet`` without fc layers, dropout or an
  auxiliary embedding: backbone → ``pooled`` → linear embedding (with bias) →
  optional L2 normalisation → scale. Returns all named features, including
  ``embedding_raw`` and ``embedding``."""

  def __init__(self, backbone: SmallCNN, embedding_dim: int,
               normalise: bool = True, scale: float = 1.0):
    super().__init__()
    self.backbone = backbone
    self.embedding = nn.Linear(backbone.out_channels, embedding_dim)
    self.normalise, self.scale = normalise, scale

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = dict(self.backbone(x))
    emb = self.embedding(feats["pooled"])
    feats["embedding_raw"] = emb
    if self.normalise:   # heads.l2_normalise: x * rsqrt(max(|x|², 1e-12))
      emb = emb * torch.rsqrt(torch.clamp((emb * emb).sum(-1, keepdim=True), min=1e-12))
    feats["embedding"] = emb * self.scale
    return feats


def build_torch_model(model_cfg, in_channels: int) -> EmbeddingNet:
  """The torch replica of ``dmlx.models.build_model(model_cfg)``; raises for
  what the replica does not cover."""
  unsupported = []
  if model_cfg.backbone != "small_cnn":
    unsupported.append(f"backbone={model_cfg.backbone!r}")
  if tuple(model_cfg.fc_layers):
    unsupported.append(f"fc_layers={tuple(model_cfg.fc_layers)}")
  if model_cfg.dropout:
    unsupported.append(f"dropout={model_cfg.dropout}")
  if model_cfg.aux_embedding_dim:
    unsupported.append(f"aux_embedding_dim={model_cfg.aux_embedding_dim}")
  if model_cfg.input_layer != "pooled":
    unsupported.append(f"input_layer={model_cfg.input_layer!r}")
  if not model_cfg.embedding_dim:
    unsupported.append("embedding_dim=0")
  if unsupported:
    raise NotImplementedError("pml_reference replicates small_cnn + a linear "
                              "embedding only; unsupported: " + ", ".join(unsupported))
  backbone = SmallCNN(in_channels, **dict(model_cfg.backbone_kwargs))
  return EmbeddingNet(backbone, model_cfg.embedding_dim,
                      normalise=model_cfg.normalise, scale=model_cfg.scale)


def flax_init(config, in_channels: int):
  """``(variables, k_run)`` exactly as ``dmlx.train.run.fresh_state``
  makes them: the flax network's initial ``{'params', 'batch_stats'}`` and the
  key of the training steps (augmentation)."""
  import jax
  import jax.numpy as jnp
  from dmlx import models
  model = models.build_model(config.model)
  size = config.data.crop_size or config.data.image_size
  dummy = jnp.zeros((1, size, size, in_channels), jnp.float32)
  k_model, _, k_run = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, dummy))(k_model)
  if config.model.pretrained:          # the pretrained start: its backbone
    from dmlx.models import pretrained  # pylint: disable=g-import-not-at-top
    params, stats = pretrained.load_into(config.model.pretrained,
                                         variables["params"],
                                         variables.get("batch_stats", {}))
    variables = {**variables, "params": params, "batch_stats": stats}
  return jax.device_get(variables), k_run


def run_key(seed: int):
  """The key of dmlx's training steps, ``split(PRNGKey(seed), 3)[2]`` (the
  ``k_run`` of :func:`flax_init`, without initialising a network)."""
  import jax
  return jax.random.split(jax.random.PRNGKey(seed), 3)[2]


def copy_flax_variables(torch_model: EmbeddingNet, variables) -> None:
  """Copies flax ``{'params', 'batch_stats'}`` of the dmlx network into the
  replica (conv kernels HWIO → OIHW, dense kernels (in, out) → (out, in))."""
  params, stats = variables["params"], variables.get("batch_stats", {})

  def put(tensor: torch.Tensor, value) -> None:
    value = torch.from_numpy(np.array(value, np.float32))
    if tuple(value.shape) != tuple(tensor.shape):
      raise ValueError(f"shape mismatch: flax {tuple(value.shape)} vs torch "
                       f"{tuple(tensor.shape)}")
    with torch.no_grad():
      tensor.copy_(value)

  bb = torch_model.backbone
  for i in range(1, bb.num_blocks + 1):
    put(getattr(bb, f"conv{i}").weight,
        np.transpose(params["backbone"][f"conv{i}"]["kernel"], (3, 2, 0, 1)))
    bn = getattr(bb, f"bn{i}")
    put(bn.weight, params["backbone"][f"bn{i}"]["scale"])
    put(bn.bias, params["backbone"][f"bn{i}"]["bias"])
    put(bn.running_mean, stats["backbone"][f"bn{i}"]["mean"])
    put(bn.running_var, stats["backbone"][f"bn{i}"]["var"])
  put(torch_model.embedding.weight, np.transpose(params["embedding"]["kernel"]))
  put(torch_model.embedding.bias, params["embedding"]["bias"])


# ---------------------------------------------------------------------------
# Input pipeline.
# ---------------------------------------------------------------------------


def make_train_augment(data_cfg, k_run) -> Callable[[np.ndarray, int], torch.Tensor]:
  """``augment(uint8 NHWC images, global step) -> float32 NCHW tensor``: dmlx's
  ``augment.preprocess`` with the key of the dmlx train step at that step."""
  import jax
  from dmlx.data import augment
  kwargs = dict(crop_size=data_cfg.crop_size, flip=data_cfg.flip,
                mean=tuple(data_cfg.mean), std=tuple(data_cfg.std), train=True,
                bgr=data_cfg.get("bgr", False))

  @jax.jit
  def run(images, step):
    k_aug, _, _ = jax.random.split(jax.random.fold_in(k_run, step), 3)
    return augment.preprocess(images, k_aug, **kwargs)

  def apply(images: np.ndarray, step: int) -> torch.Tensor:
    x = np.asarray(run(images, np.int32(step)))   # read-only: copy
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

  return apply


def eval_preprocess(images: np.ndarray, data_cfg) -> torch.Tensor:
  """dmlx's test-time view (``dmlx.data.augment.preprocess``, train=False:
  centre crop, ``/255``, ``(x - mean) / std``, channel reversal when ``bgr``)
  as a float32 NCHW tensor."""
  from dmlx.data import augment  # pylint: disable=g-import-not-at-top
  x = np.asarray(augment.preprocess(
      images, None, crop_size=data_cfg.crop_size, flip=False,
      mean=data_cfg.mean, std=data_cfg.std, train=False,
      bgr=data_cfg.get("bgr", False)))
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@torch.no_grad()
def embed(model: EmbeddingNet, images: np.ndarray, data_cfg,
          batch_size: int) -> np.ndarray:
  """``[N, D]`` test embeddings in ``model.eval()``."""
  model.eval()
  out = [model(eval_preprocess(images[s:s + batch_size], data_cfg))["embedding"].numpy()
         for s in range(0, len(images), batch_size)]
  return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------
# Loss, optimiser, schedule.
# ---------------------------------------------------------------------------


def make_loss(name: str):
  """``(loss_fn, miner)`` of PML for ``name`` (see the module docstring)."""
  from pytorch_metric_learning import losses, miners
  if name == "triplet_semihard":
    return (losses.TripletMarginLoss(margin=0.2),
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"))
  if name == "multi_similarity":
    return (losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
            miners.MultiSimilarityMiner(epsilon=0.1))
  raise ValueError(f"Unknown loss {name!r}; expected one of {LOSSES}.")


def lr_factors(optim_cfg, total_steps: int) -> np.ndarray:
  """``[total_steps + 1]`` learning rates of dmlx's schedule
  (``dmlx.train.optim.make_schedule``) divided by ``optim.lr``: entry ``t``
  multiplies the base rate of update ``t`` (0-based, as optax counts)."""
  import jax.numpy as jnp
  from dmlx.train import optim
  sched = optim.make_schedule(optim_cfg, total_steps)
  values = np.asarray(sched(jnp.arange(total_steps + 1)), np.float64)
  values = np.array(np.broadcast_to(values, (total_steps + 1,)))  # constant: a scalar
  return values / optim_cfg.lr if optim_cfg.lr else np.zeros_like(values)


def make_optimizer(model: EmbeddingNet, optim_cfg, total_steps: int):
  """``(optimizer, LambdaLR)`` matching ``dmlx.train.optim.make_optimizer``."""
  groups = [
      {"params": list(model.backbone.parameters()),
       "lr": optim_cfg.lr * optim_cfg.backbone_lr_mult},
      {"params": list(model.embedding.parameters()),
       "lr": optim_cfg.lr * optim_cfg.head_lr_mult},
  ]
  wd = optim_cfg.weight_decay
  if optim_cfg.name == "adam":
    opt = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
  elif optim_cfg.name == "adamw":
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
  elif optim_cfg.name == "sgd":
    opt = torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum or 0.0,
                          weight_decay=wd)
  else:
    raise ValueError(f"Unknown optim.name {optim_cfg.name!r}.")
  factors = lr_factors(optim_cfg, total_steps)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: float(factors[min(t, len(factors) - 1)]))
  return opt, sched


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


def _library() -> str:
  import pytorch_metric_learning
  return f"pytorch-metric-learning {pytorch_metric_learning.__version__}"


def train_pml(config, loss: str, workdir: str, threads: int = 1, *,
              init: str = "dmlx", verbose: bool = False) -> dict:
  """Trains ``config``'s network with PML's ``loss`` and evaluates it on the
  test split; returns (and writes to ``workdir/final_metrics.json``)
  ``{'trained': {'test': {'embedding': metrics}}, 'steps', 'seconds',
  'library', 'loss', 'loss_first', 'loss_last', ...}`` (``loss_first`` /
  ``loss_last``: mean loss of the first / last 25 steps; ``mined_first`` /
  ``mined_last``: the same for the miner's count — triplets, or positive
  pairs for multi-similarity; ``train_seconds``, ``eval_seconds``,
  ``setup_seconds``, ``steps_per_second``, ``init``, ``threads``, ``seed``;
  on a classification split also ``method: {'1nn_accuracy'}``, as dmlx's loop
  writes it).
  If that file exists, it is loaded and returned without training.

  Args:
    config: a dmlx run config (e.g. ``configs/real_data.py``'s).
    loss: ``'triplet_semihard'`` or ``'multi_similarity'``.
    workdir: output directory (created).
    threads: ``torch.set_num_threads``.
    init: ``'dmlx'`` (start from the flax network's initial weights) or
      ``'torch'`` (PyTorch's default initialisation).
    verbose: print the loss and speed every ``train.log_every`` steps.
  """
  if loss not in LOSSES:
    raise ValueError(f"Unknown loss {loss!r}; expected one of {LOSSES}.")
  if init not in INITS:
    raise ValueError(f"Unknown init {init!r}; expected one of {INITS}.")
  path = os.path.join(workdir, "final_metrics.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  os.makedirs(workdir, exist_ok=True)

  from dmlx import eval as dmlx_eval
  from dmlx.data import pipeline, samplers
  from dmlx.train import run as run_lib
  if init != "dmlx" and config.model.pretrained:
    raise ValueError(f"init={init!r} with model.pretrained="
                     f"{config.model.pretrained!r}: a pretrained start is "
                     "copied from the flax network (init='dmlx')")
  data_cfg = run_lib.data_config(config)   # the weights' normalisation
  torch.set_num_threads(threads)
  torch.manual_seed(config.seed)
  t_setup = time.time()

  data = pipeline.load_splits(config.data)
  train_ds, test_ds = data["train"], data["test"]
  sampler = samplers.make_sampler(config.sampler, train_ds.labels, config.seed)
  steps_per_epoch = config.train.steps_per_epoch or sampler.steps_per_epoch
  total_steps = steps_per_epoch * config.train.epochs
  in_channels = train_ds.images.shape[-1]

  model = build_torch_model(config.model, in_channels)
  if init == "dmlx":
    copy_flax_variables(model, flax_init(config, in_channels)[0])
  augment = make_train_augment(data_cfg, run_key(config.seed))
  loss_fn, miner = make_loss(loss)
  opt, sched = make_optimizer(model, config.optim, total_steps)
  params = [p for group in opt.param_groups for p in group["params"]]
  setup_seconds = time.time() - t_setup

  t0 = t_log = time.time()
  losses, mined = [], []
  model.train()
  for g in range(total_steps):
    index = sampler.batch(g)
    x = augment(train_ds.images[index], g)
    y = torch.from_numpy(train_ds.labels[index].astype(np.int64))
    emb = model(x)["embedding"]
    tuples = miner(emb, y)
    value = loss_fn(emb, y, tuples)
    opt.zero_grad(set_to_none=True)
    value.backward()
    if config.optim.grad_clip:
      torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
    opt.step()
    sched.step()
    v = float(value.detach())
    if not math.isfinite(v):
      raise FloatingPointError(f"PML {loss} loss is {v} at step {g + 1}.")
    losses.append(v)
    mined.append(int(tuples[0].numel()))
    if verbose and (g + 1) % config.train.log_every == 0:
      now = time.time()
      print(f"step {g + 1}/{total_steps}: loss "
            f"{np.mean(losses[-config.train.log_every:]):.4f}, mined "
            f"{np.mean(mined[-config.train.log_every:]):.0f}, lr "
            f"{opt.param_groups[0]['lr']:.2e}, "
            f"{config.train.log_every / max(now - t_log, 1e-9):.2f} steps/s", flush=True)
      t_log = now
  train_seconds = time.time() - t0

  t1 = time.time()
  emb = embed(model, test_ds.images, data_cfg, config.eval.batch_size)
  metrics = dmlx_eval.evaluate_retrieval(emb, test_ds.labels, ks=tuple(config.eval.ks),
                                         metrics=tuple(config.eval.metrics))
  method = {}
  if tuple(test_ds.class_names) == tuple(train_ds.class_names):
    # A classification split: 1-NN accuracy against the training set, as
    # dmlx.train.loop records it under final['method'].
    train_emb = embed(model, train_ds.images, data_cfg, config.eval.batch_size)
    method["1nn_accuracy"] = float(dmlx_eval.knn_accuracy(
        train_emb, train_ds.labels, emb, test_ds.labels, k=1))
  eval_seconds = time.time() - t1

  final = {
      "trained": {"test": {"embedding": {k: float(v) for k, v in metrics.items()}}},
      "steps": total_steps,
      "seconds": train_seconds + eval_seconds,
      "library": _library(),
      **({"method": method} if method else {}),
      "loss": loss,
      "loss_first": float(np.mean(losses[:AVERAGE_STEPS])) if losses else float("nan"),
      "loss_last": float(np.mean(losses[-AVERAGE_STEPS:])) if losses else float("nan"),
      "mined_first": float(np.mean(mined[:AVERAGE_STEPS])) if mined else float("nan"),
      "mined_last": float(np.mean(mined[-AVERAGE_STEPS:])) if mined else float("nan"),
      "train_seconds": train_seconds,
      "eval_seconds": eval_seconds,
      "setup_seconds": setup_seconds,
      "steps_per_second": total_steps / max(train_seconds, 1e-9),
      "init": init,
      "threads": threads,
      "seed": int(config.seed),
      "torch": torch.__version__,
      "num_train": len(train_ds),
      "num_test": len(test_ds),
  }
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(path, "w") as f:
    json.dump(final, f, indent=2)
  return final


def load_config(arg: str, steps: int = 0, seed: int | None = None,
                data_dir: str = "", cache_dir: str = ""):
  """``configs/real_data.py``'s ``get_config(arg)``; ``steps > 0`` sets
  ``train.epochs = 1, train.steps_per_epoch = steps``; ``seed`` and
  ``data_dir`` override ``config.seed`` / ``config.data.data_dir``."""
  sys.path.insert(0, ROOT)
  from configs import real_data  # pylint: disable=g-import-not-at-top
  config = real_data.get_config(arg)
  if steps:
    config.train.epochs, config.train.steps_per_epoch = 1, steps
  if seed is not None:
    config.seed = seed
  if data_dir:
    config.data.data_dir = data_dir
  if cache_dir:
    config.data.cache_dir = cache_dir
  return config


def _define_flags():
  from absl import flags
  flags.DEFINE_string("config_arg", "dataset=omniglot,method=triplet_semihard",
                      "Argument of configs/real_data.py: "
                      "'dataset=...,method=...[,protocol=...]'.")
  flags.DEFINE_enum("loss", "triplet_semihard", list(LOSSES), "PML loss and miner.")
  flags.DEFINE_string("workdir", None, "Output directory (final_metrics.json).")
  flags.DEFINE_integer("steps", 0, "> 0: train this many steps (epochs=1) instead "
                       "of the config's budget (smoke runs).")
  flags.DEFINE_integer("seed", None, "Overrides config.seed.")
  flags.DEFINE_integer("threads", 1, "torch.set_num_threads.")
  flags.DEFINE_string("data_dir", "", "Overrides config.data.data_dir.")
  flags.DEFINE_string("cache_dir", "", "config.data.cache_dir (decoded "
                      "images cached as .npz).")
  flags.DEFINE_enum("init", "dmlx", list(INITS), "Initial weights: the dmlx "
                    "network's (flax init copied) or PyTorch's defaults.")
  flags.mark_flag_as_required("workdir")
  return flags.FLAGS


def main(argv) -> None:
  del argv
  from dmlx import eval as dmlx_eval
  config = load_config(FLAGS.config_arg, FLAGS.steps, FLAGS.seed, FLAGS.data_dir,
                       FLAGS.cache_dir)
  final = train_pml(config, FLAGS.loss, FLAGS.workdir, FLAGS.threads,
                    init=FLAGS.init, verbose=True)
  print(f"\n{final['library']}, {final['loss']} on {FLAGS.config_arg} "
        f"(seed {config.seed}, init {final.get('init')}): {final['steps']} steps")
  print(dmlx_eval.format_table({"trained [embedding]":
                                final["trained"]["test"]["embedding"]}))
  if final.get("method"):
    print("  ".join(f"{k}={v:.4f}" for k, v in final["method"].items()))
  print(f"loss first/last {AVERAGE_STEPS}: {final['loss_first']:.4f} / "
        f"{final['loss_last']:.4f}; {final.get('steps_per_second', float('nan')):.2f} "
        f"steps/s; {final['seconds']:.1f} s train + eval")


if __name__ == "__main__":
  from absl import app
  FLAGS = _define_flags()
  app.run(main)
