"""NNGK training method: the centre bank, its refresh, the classifier, ``METHOD``.

Meyer, Harwood & Drummond, "Deep metric learning and image classification with
nearest neighbour Gaussian kernels", ICIP 2018.

The host half of NNGK (the jittable loss is :mod:`dmlx.losses._nngk`):

* the *centre bank* (:class:`CentreBank`): the training set embedded without
  dropout, and each example's k approximate nearest centres (never itself),
  found with FAISS; built before the first epoch and rebuilt every
  ``update_interval`` epochs ("periodic asynchronous updates of all centres",
  Section 2.3); shapes are static so the jitted step is not recompiled;
* the loss: the batch's current (dropout) embeddings against the stored
  centres of its rows, eq. 3, with a learned weight w_i per centre;
* the classifier (eq. 3 for test images): FAISS k-NN of test embeddings among
  the training centres, then the weighted Gaussian kernel vote.

Config fields read (``config.method.*``; defaults follow the paper):

* ``sigma`` (float, default 10.0): the global kernel width σ of eq. 1, in
  units of embedding distance. The paper uses *unnormalised* embeddings with
  σ = 10-30 for 64-1024-d GoogLeNet embeddings (Section 3.1) and σ ≈ 100 for
  4096-d VGG16 FC7 (Section 3.2). With L2-normalised embeddings
  ‖x - c‖² = 2 - 2 cos(x, c) ≤ 4, so f(x, c) ∝ exp(cos(x, c) / σ²): σ² is the
  temperature of a softmax over cosine similarities, and σ must be ≲ 0.5 for
  the kernels to discriminate (σ = 10 makes every kernel ≈ 1). NNGK configs
  should therefore set the model's embedding normalisation off, as the paper
  does, or scale σ accordingly. Every refresh logs the mean squared distance
  to the nearest centre and its kernel value (the paper's Fig. 4b/c) to help
  choose σ.
* ``num_neighbours`` (int, default 100): k, the candidate neighbours per
  training example (Section 3.1), also used by the classifier.
* ``update_interval`` (int, default 10): epochs between bank refreshes.
* ``learn_weights`` (bool, default True): learn w_i end-to-end (the paper's
  ablation gives +0.69% accuracy over w_i = 1). False: no parameters, w_i = 1.
* ``min_weight`` (float, default 1e-4): floor on w_i before its log. The paper
  learns raw weights without a stated constraint; we keep the raw
  parameterisation (``params['weights']``, initialised to 1, same gradients
  and learning-rate semantics as the paper) and clip at this floor so ln w_i is
  always defined. A weight pushed to the floor stops receiving gradient (the
  centre is effectively pruned); ``aux['nngk_weight_at_floor']`` counts them.
* ``index_type`` (str, default 'auto'): the refresh's k-NN search: 'flat'
  (exact), 'hnsw' or 'ivf' (approximate FAISS indexes; the paper uses the
  FANNG graph), 'ivf_join' (the bank among itself by IVF cell blocks,
  :func:`dmlx.index.self_join.self_knn_cells`: 60k x 512, k = 100 in 2.6 s
  on 2 cores at recall 0.999 on clustered data, where exact search takes
  42 s -- but 0.40 on Tiny ImageNet features, see ``docs/speed.md``), or
  'auto': 'flat' up to N = 20,000 centres; above, the cell join kept only
  when its recall, measured on 256 rows each refresh, is >= 0.95 (nprobe 4,
  then 8), exact search otherwise. The eq. 3 classifier searches
  test embeddings with the same index, 'flat' for 'auto' and 'ivf_join'. See
  ``benchmarks/nngk_refresh.py`` for time vs recall.
* ``index_kwargs`` (dict, default {}): extra :func:`dmlx.index.knn` options
  (``nprobe``, ``nlist``, ``hnsw_m``, ``ef_search``).
* ``feature`` (str, default 'embedding'): the named network output used as
  the embedding (e.g. 'pooled' for the paper's ResNet pooling-layer setting).
* ``reduction`` (str, default 'sum'): 'sum', the paper's "summed negative
  logarithm of the probabilities of the true class labels", or 'mean' over
  the batch examples that have a same-class neighbour. Under SGD a mean at
  learning rate η is the sum at η / B; Adam (the real-data configs) is
  invariant to the loss's scale, so there the two differ only in how an
  example without a positive changes the weight of the others.
* ``bank_bn`` (str, default 'batch'): how the centres are embedded.
  'batch': BatchNorm on the statistics of random batches of
  ``bank_batch_size`` (0 = the training batch's size, P x K for the P x K
  samplers), without dropout,
  the mode the loss's current embeddings are computed in, so eq. 3 compares
  points of one space; 'inference': BatchNorm's running averages (dmlx
  before 2026-12; with a network whose statistics move fast the bank and the
  queries then lie in different spaces). The paper's GoogLeNet has no
  BatchNorm, where both are the same. ``aux['nngk_self_sq_distance']`` is
  the mean ‖x_b − c_b‖² between a batch example's current embedding and its
  own stored centre: the gap between the two spaces plus the bank's
  staleness.
* ``bank_batch_size`` (int, default 0): see ``bank_bn``.
* ``bank_placement`` (str, default 'device'): where the centre bank lives.
  'device': replicated on every device, an argument of the jitted step,
  which gathers each batch's neighbours itself; it costs every device
  ``N (4D + 5k + 4)`` bytes (float32 centres, int32 neighbour lists and
  labels, a bool mask): 154 MB at N = 60k, D = 512, k = 100. 'host': the
  bank stays in host memory (the checkpoint's host state) and each batch
  carries its rows' neighbour centres ``[B, k, D]`` with their labels,
  indices and mask, sharded like the batch, so a device holds
  ``(B / devices) (k (4D + 9) + 4D)`` bytes of it per batch, whatever N
  (host memory, ``N (4D + 5k + 4)``, is the only limit). Both give the
  same loss; the per-centre weights (``4N`` bytes and their optimiser
  state) stay replicated parameters either way.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dmlx import index as dmlx_index
from dmlx.data import samplers
from dmlx.index import self_join
from dmlx import losses
from dmlx.losses import CentreBank
from dmlx.losses._nngk import gather_neighbours
from dmlx.methods import base
from dmlx.methods.nngk_classifier import accuracy
from dmlx.methods.nngk_classifier import class_log_probs
from dmlx.methods.nngk_classifier import predict

__all__ = [
    "CentreBank", "Config", "METHOD", "accuracy", "build_bank",
    "class_log_probs", "predict",
]

_INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivf_join")
# Largest bank searched exactly by index_type='auto' (N^2 D distance work:
# ~3 s at N = 20,000, D = 512 on 2 cores).
AUTO_EXACT_MAX_CENTRES = 20000


def bank_index_type(index_type: str, num_centres: int) -> str:
  """The refresh's search for ``index_type``: ``'auto'`` is ``'flat'`` up to
  :data:`AUTO_EXACT_MAX_CENTRES` and ``'ivf_join_checked'`` above (the cell
  join kept only at a measured recall >= 0.95, exact search otherwise)."""
  if index_type == "auto":
    return ("flat" if num_centres <= AUTO_EXACT_MAX_CENTRES
            else "ivf_join_checked")
  return index_type


def classifier_index_type(index_type: str) -> str:
  """The eq. 3 classifier's search: test queries against the centres, so the
  bank-only ``'ivf_join'`` (and ``'auto'``) search exactly."""
  return "flat" if index_type in ("auto", "ivf_join") else index_type


@dataclasses.dataclass(frozen=True)
class Config:
  """``config.method`` of NNGK (see the module docstring)."""
  sigma: float = 10.0
  num_neighbours: int = 100
  update_interval: int = 10
  learn_weights: bool = True
  min_weight: float = 1e-4
  index_type: str = "auto"
  index_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  feature: str = "embedding"
  reduction: str = "sum"
  bank_bn: str = "batch"
  bank_batch_size: int = 0
  bank_placement: str = "device"

  def __post_init__(self):
    if not 0 < self.sigma < float("inf"):
      raise ValueError(f"config.method.sigma must be finite and > 0, got {self.sigma!r}.")
    base.check_positive_int(self, "num_neighbours", "update_interval")
    if not self.min_weight > 0:
      raise ValueError(
          f"config.method.min_weight must be > 0, got {self.min_weight!r}.")
    base.check_choice("index_type", self.index_type, _INDEX_TYPES)
    base.check_choice("reduction", self.reduction, ("mean", "sum"))
    base.check_choice("bank_bn", self.bank_bn, ("batch", "inference"))
    base.check_positive_int(self, "bank_batch_size", allow_zero=True)
    base.check_choice("bank_placement", self.bank_placement, ("device", "host"))


# ----------------------------------------------------------------------------
# Centre bank (Section 2.3)
# ----------------------------------------------------------------------------


def build_bank(embeddings: np.ndarray, labels: np.ndarray, *,
               num_neighbours: int = 100, index_type: str = "flat",
               **knn_kwargs) -> tuple[CentreBank, np.ndarray]:
  """Builds the centre bank: centres and each one's k nearest other centres.

  Section 2.2-2.3: every training embedding (computed without dropout) is a
  Gaussian centre, and each training example's candidate neighbour list is
  its approximate k nearest centres, excluding its own. Lists shorter than k
  (k ≥ N, or an approximate index that found fewer) are padded with index 0
  and masked, so the shapes depend only on N, D and k.

  Args:
    embeddings: ``[N, D]`` training embeddings.
    labels: ``[N]`` int class labels.
    num_neighbours: k.
    index_type: ``'auto'``, ``'flat'`` (exact), ``'hnsw'``, ``'ivf'`` or
      ``'ivf_join'`` (see the module docstring).
    **knn_kwargs: further :func:`dmlx.index.knn` options.

  Returns:
    ``(bank, sq_distances [N, k])``: the :class:`CentreBank` as numpy arrays
    (float32 centres, int32 labels/neighbours, bool mask) and the squared
    distances FAISS reported (``+inf`` where masked), for logging.
  """
  embeddings = np.ascontiguousarray(embeddings, np.float32)
  labels = np.asarray(labels)
  if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
    raise ValueError(f"build_bank needs embeddings [N, D] and labels [N], got "
                     f"{embeddings.shape} and {labels.shape}.")
  if index_type not in _INDEX_TYPES:
    raise ValueError(f"index_type must be one of {_INDEX_TYPES}, got "
                     f"{index_type!r}.")
  if len(labels) < 2:
    raise ValueError(f"NNGK needs at least 2 training examples, got "
                     f"{len(labels)}.")
  index_type = bank_index_type(index_type, len(labels))
  if index_type == "ivf_join_checked":
    dist, nbrs, _ = self_join.self_knn_checked(
        embeddings, int(num_neighbours), seed=int(knn_kwargs.get("seed", 0)))
  else:
    dist, nbrs = dmlx_index.knn(embeddings, None, int(num_neighbours),
                                exclude_self=True, index_type=index_type,
                                metric="l2", **knn_kwargs)
  mask = nbrs >= 0
  bank = CentreBank(
      centres=embeddings,
      labels=labels.astype(np.int32),
      neighbours=np.where(mask, nbrs, 0).astype(np.int32),
      mask=mask)
  return bank, dist


def _batch_size(config) -> int:
  """The training batch size of ``config``'s sampler (P x K for both P x K
  samplers; ``proportional_pk`` used to get ``sampler.batch_size`` here)."""
  if config is None:
    return 256
  return samplers.batch_size(config.sampler)


def _bank_stats(bank: CentreBank, sq_dist: np.ndarray,
                sigma: float) -> dict[str, float]:
  """Fig. 4b/c of the paper: distance and kernel value to the nearest centre,
  and the fraction of examples with no same-class candidate."""
  nearest = sq_dist[:, 0][np.isfinite(sq_dist[:, 0])]
  nearest = np.maximum(nearest, 0.0)
  same = (bank.labels[bank.neighbours] == bank.labels[:, None]) & bank.mask
  return {
      "mean_sq_dist_nearest": float(nearest.mean()) if nearest.size else 0.0,
      "mean_kernel_nearest": float(np.exp(-nearest / (2 * sigma**2)).mean())
                             if nearest.size else 0.0,
      "no_positive_frac": float(1.0 - same.any(axis=1).mean()),
  }


def _refresh_bank(ctx: base.HostContext, opts: Config,
                  old: Optional[CentreBank]) -> CentreBank:
  """Embeds the training set (no dropout) and rebuilds the bank, timing and
  logging both halves."""
  t0 = time.perf_counter()
  embeddings = np.asarray(ctx.embed(
      opts.feature, bn=opts.bank_bn,
      batch_size=opts.bank_batch_size or _batch_size(ctx.config)), np.float32)
  t1 = time.perf_counter()
  knn_kwargs = {"seed": int(ctx.seed), **opts.index_kwargs}  # IVF sampling
  bank, sq_dist = build_bank(
      embeddings, np.asarray(ctx.train.labels),
      num_neighbours=opts.num_neighbours, index_type=opts.index_type,
      **knn_kwargs)
  t2 = time.perf_counter()
  if old is not None:
    for name in ("centres", "labels", "neighbours", "mask"):
      new_shape, old_shape = getattr(bank, name).shape, getattr(old, name).shape
      if new_shape != old_shape:
        raise ValueError(f"NNGK refresh changed bank.{name} shape from "
                         f"{old_shape} to {new_shape}.")
  stats = _bank_stats(bank, sq_dist, opts.sigma)
  ctx.log(
      f"nngk refresh (epoch {ctx.epoch}): embed {t1 - t0:.2f}s, "
      f"faiss {bank_index_type(opts.index_type, len(bank.labels))} "
      f"k={opts.num_neighbours} {t2 - t1:.2f}s "
      f"for N={len(bank.labels)} D={bank.centres.shape[1]}; "
      f"mean d^2 to nearest centre {stats['mean_sq_dist_nearest']:.4g}, "
      f"kernel f {stats['mean_kernel_nearest']:.4g} (sigma={opts.sigma}); "
      f"no same-class candidate {stats['no_positive_frac']:.2%}")
  return bank


# ----------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------


def init_params(cfg: Config, rng: jax.Array, info: base.ModelInfo) -> dict:
  """Per-centre weights w_i, initialised to 1 (the paper's fixed value);
  none when ``learn_weights`` is off."""
  del rng
  if not cfg.learn_weights:
    return {}
  return {"weights": jnp.ones((info.num_train,), jnp.float32)}


def init_state(cfg: Config, info: base.ModelInfo) -> base.MethodState:
  """An all-zero centre bank of the final shapes (``[N, D]`` centres,
  ``[N, k]`` neighbour lists), on the device or, with ``bank_placement =
  'host'``, in the host state."""
  n, k = info.num_train, cfg.num_neighbours
  base.check_feature("feature", cfg.feature, info)
  dim = info.feature_dims.get(cfg.feature, info.embedding_dim)
  bank = CentreBank(centres=np.zeros((n, dim), np.float32),
                    labels=np.zeros((n,), np.int32),
                    neighbours=np.zeros((n, k), np.int32),
                    mask=np.zeros((n, k), bool))
  return _placed(cfg, bank)


def _placed(cfg: Config, bank: CentreBank) -> base.MethodState:
  if cfg.bank_placement == "host":
    return base.MethodState(host=bank)
  return base.MethodState(device=bank)


def _bank(cfg: Config, state: base.MethodState) -> Optional[CentreBank]:
  bank = state.host if cfg.bank_placement == "host" else state.device
  return bank if isinstance(bank, CentreBank) else None


def refresh(cfg: Config, ctx: base.HostContext,
            state: base.MethodState) -> base.MethodState:
  """Rebuilds the centre bank from the current weights (Section 2.3)."""
  return _placed(cfg, _refresh_bank(ctx, cfg, _bank(cfg, state)))


def batch_inputs(cfg: Config, host: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
  """With ``bank_placement = 'host'``: the batch rows' stored neighbour
  centres ``[B, k, D]``, their labels, indices (for the weights) and mask
  (own centre excluded, as :func:`dmlx.losses._nngk.gather_neighbours`),
  and each row's own centre; nothing with the bank on the device."""
  if cfg.bank_placement != "host":
    return {}
  bank = jax.tree_util.tree_map(np.asarray, host)
  # The loss's own look-up, in NumPy (the weights are parameters on the
  # device: they are gathered there, by index).
  centres, labels, _, mask = gather_neighbours(
      bank, np.zeros(bank.labels.shape, np.float32), rows)
  return {"bank_centres": centres, "bank_labels": labels,
          "bank_neighbours": bank.neighbours[rows].astype(np.int32),
          "bank_mask": mask, "bank_own": bank.centres[rows]}


def refresh_every(cfg: Config) -> int:
  """Epochs between bank refreshes (the paper's update interval)."""
  return cfg.update_interval


def loss(cfg: Config, params: dict, outputs: Mapping[str, jax.Array],
         batch: Mapping, state: CentreBank,
         rng: jax.Array) -> tuple[jax.Array, dict]:
  """Eq. 3 of the batch's current embeddings against their stored
  neighbour centres (:func:`dmlx.losses.nngk`)."""
  del rng
  if cfg.feature not in outputs:
    raise ValueError(f"NNGK feature {cfg.feature!r} not in network outputs "
                     f"{sorted(outputs)}.")
  weights = params["weights"] if cfg.learn_weights else None
  x = outputs[cfg.feature]
  if cfg.bank_placement == "host":
    nbrs = batch["bank_neighbours"]
    w = jnp.ones(nbrs.shape, jnp.float32) if weights is None else weights[nbrs]
    value, aux = losses.nngk_gathered(
        x, batch["labels"], batch["bank_centres"], batch["bank_labels"], w,
        batch["bank_mask"], sigma=cfg.sigma, min_weight=cfg.min_weight,
        reduction=cfg.reduction)
    own_centres = batch["bank_own"]
  else:
    value, aux = losses.nngk(x, batch["labels"], batch["index"], state, weights,
                             sigma=cfg.sigma, min_weight=cfg.min_weight,
                             reduction=cfg.reduction)
    own_centres = jnp.asarray(state.centres)[batch["index"]]
  own = jax.lax.stop_gradient(x) - own_centres
  aux["nngk_self_sq_distance"] = jnp.mean(jnp.sum(own * own, axis=-1))
  return value, aux


def evaluate_classifier(ctx: base.EvalContext) -> dict:
  """Test accuracy of the eq. 3 classifier (an evaluator: classification
  splits only). The centres are re-embedded with the evaluated weights (the
  stored bank may be up to ``update_interval`` epochs stale)."""
  cfg = ctx.method_config
  test_embeddings = ctx.test_features.get(cfg.feature)
  if test_embeddings is None:
    test_embeddings = ctx.embed(cfg.feature, ctx.test)
  centres = np.asarray(ctx.embed(cfg.feature), np.float32)
  weights = None
  if cfg.learn_weights and ctx.params and "weights" in ctx.params:
    weights = np.asarray(ctx.params["weights"])
  pred = predict(np.asarray(test_embeddings, np.float32), centres,
                 np.asarray(ctx.train.labels), weights, sigma=cfg.sigma,
                 num_neighbours=cfg.num_neighbours,
                 index_type=classifier_index_type(cfg.index_type),
                 min_weight=cfg.min_weight,
                 **cfg.index_kwargs)
  return {"nngk_accuracy": accuracy(pred, np.asarray(ctx.test.labels))}


METHOD = base.Method(
    name="nngk", Config=Config, loss=loss, init_params=init_params,
    init_state=init_state, refresh=refresh, refresh_every=refresh_every,
    batch_inputs=batch_inputs, evaluators=("nngk_classifier",))
