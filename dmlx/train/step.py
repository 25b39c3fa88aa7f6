"""The jitted, data-parallel train step and the batched feature extractor.

Parallelism is ``jax.jit`` over a ``Mesh`` of all devices: the batch is sharded
on the ``data`` axis, parameters and method state are replicated. The step is
written as a function of the *global* batch (the loss sees all B examples,
BatchNorm averages over all of them), so XLA inserts the collectives and the
loss and gradients equal the single-device result exactly — no per-device
loss scaling, and in-batch mining sees every pair, not just those on one device.

One step is one *iteration* of the method: its updates (:class:`Update`) in
order, each on its own batch stream with its own forward pass, loss,
gradient and optimiser update, an update with ``probability < 1`` kept when
a coin drawn from the step's key says so. The step returns
device scalars only: the loop reads them at its declared log steps.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dmlx.data import augment
from dmlx.train import distributed
from dmlx.methods.base import Method
from dmlx.train.optim import Optimizer
from dmlx.train.state import TrainState


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over all (global) devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices, ("data",))


def shard_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Places the *global* host batch on the mesh, sharded on the leading axis
  (an explicit transfer). With several processes every process passes the
  same global batch and transfers only the rows of its own devices
  (:func:`dmlx.train.distributed.global_array`)."""
  sharding = NamedSharding(mesh, P("data"))
  n = mesh.devices.size
  for key, value in batch.items():
    if value.shape[0] % n:
      raise ValueError(f"Global batch of {value.shape[0]} ({key!r}) is not "
                       f"divisible by {n} devices.")
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {k: distributed.global_array(sharding, v) for k, v in batch.items()}


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Replicates a pytree on every device of ``mesh`` (of every process: each
  process's copy of ``tree`` must be the same)."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree_util.tree_map(lambda x: distributed.global_array(sharding, x),
                                distributed.to_host(tree))


def make_grad_fn(model, loss_fn: Callable, method_config: Any,
                 data_cfg) -> Callable:
  """``grad_fn(params, batch_stats, method_state, batch, rng) -> (loss, aux,
  batch_stats, grads)``: the forward pass on the augmented batch, the
  update's loss ``loss_fn(cfg, params, outputs, batch, state, rng)`` and its
  gradients with respect to ``params``."""
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)

  def grad_fn(params, batch_stats, method_state, batch, rng):
    k_aug, k_drop, k_loss = jax.random.split(rng, 3)
    images = augment.preprocess(batch["images"], k_aug, crop_size=data_cfg.crop_size,
                                flip=data_cfg.flip, mean=mean, std=std, train=True,
                                bgr=data_cfg.get("bgr", False))

    def objective(p):
      variables = {"params": p["model"], "batch_stats": batch_stats}
      outputs, updates = model.apply(variables, images, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": k_drop})
      loss, aux = loss_fn(method_config, p["method"], outputs, batch,
                          method_state, k_loss)
      return loss, (aux, updates.get("batch_stats", batch_stats))

    (loss, (aux, new_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        params)
    return loss, aux, new_stats, grads

  return grad_fn


def _scalars(aux: Mapping[str, Any]) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v, jnp.float32) for k, v in aux.items()
          if jnp.ndim(v) == 0}


def _all_finite(scalars: Mapping[str, jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(v) for v in scalars.values()]))


def make_train_step(model, method: Method, method_config: Any,
                    optimizer: Optimizer, data_cfg) -> Callable:
  """Returns ``train_step(state, batches) -> (state, metrics)``.

  ``batches`` maps each stream of the method's updates to a device batch
  ``{'images', 'labels', 'index'}``. ``metrics`` are device scalars: ``loss``
  (the sum over the updates taken), ``grad_norm``, the losses' scalar aux
  entries (prefixed ``<update>/`` when an iteration has several updates,
  with ``<update>/taken``) and ``finite`` (1 when every one is finite).
  """
  updates = method.iteration(method_config)
  grad_fns = [make_grad_fn(model, u.loss, method_config, data_cfg)
              for u in updates]
  several = len(updates) > 1

  def apply_update(i, state: TrainState, batch, rng):
    loss, aux, batch_stats, grads = grad_fns[i](
        state.params, state.batch_stats, state.method_state, batch, rng)
    deltas, opt_state = optimizer.update(grads, state.opt_state, state.params,
                                         state.step)
    method_state = state.method_state
    if method.update_state is not None:
      method_state = method.update_state(method_config, method_state, aux, batch)
    new = state.replace(params=optax.apply_updates(state.params, deltas),
                        opt_state=opt_state, batch_stats=batch_stats,
                        method_state=method_state)
    scalars = {"loss": loss, "grad_norm": optax.global_norm(grads),
               **_scalars(aux)}
    return new, {k: jnp.asarray(v, jnp.float32) for k, v in scalars.items()}

  def train_step(state: TrainState, batches: Mapping[str, Any]):
    base_rng = jax.random.fold_in(state.rng, state.step)
    metrics: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    for i, update in enumerate(updates):
      batch = {**batches[update.stream], "step": state.step}
      rng = base_rng if i == 0 else jax.random.fold_in(base_rng, i)
      if update.probability < 1.0:
        # Computed every iteration and kept where the coin says so: a
        # lax.cond around a network's forward and backward runs ~8x slower
        # on XLA:CPU (measured), and the batch is drawn either way.
        coin = jax.random.uniform(jax.random.fold_in(rng, 7919))
        take = coin < update.probability
        new, m = apply_update(i, state, batch, rng)
        state = jax.tree_util.tree_map(lambda n, o: jnp.where(take, n, o),
                                       new, state)
        m = {**{k: jnp.where(take, v, 0.0) for k, v in m.items()},
             "taken": take.astype(jnp.float32)}
      else:
        state, m = apply_update(i, state, batch, rng)
      total = total + m["loss"]
      metrics.update({f"{update.name}/{k}": v for k, v in m.items()}
                     if several else m)
    if several:
      metrics["loss"] = total
    metrics["finite"] = _all_finite(metrics).astype(jnp.float32)
    return state.replace(step=state.step + 1), metrics

  return train_step


def pool_map(f: jax.Array, layer: str, map_pooling: str = "max") -> jax.Array:
  """A feature map ``[B, H, W, C]`` as a vector. A plain layer name pools it
  globally (max, as Vo & Hays; or avg); ``'name@G'`` average-pools it to a
  G×G grid and flattens it (MIC's early-layer clustering features)."""
  if f.ndim != 4:
    return f
  grid = int(layer.partition("@")[2] or 0)
  if not grid:
    return jnp.max(f, axis=(1, 2)) if map_pooling == "max" else jnp.mean(f, axis=(1, 2))
  b, h, w, c = f.shape
  if h % grid or w % grid:
    raise ValueError(f"Layer {layer!r}: a {h}x{w} map does not divide into a "
                     f"{grid}x{grid} grid.")
  f = f.reshape(b, grid, h // grid, grid, w // grid, c).mean(axis=(2, 4))
  return f.reshape(b, grid * grid * c)


def make_feature_fn(model, data_cfg, map_pooling: str = "max") -> Callable:
  """``features(variables, images, layers, batch_stats=False) -> {layer:
  [B, D]}``, jitted (``layers`` and ``batch_stats`` are static).

  Inference mode (no dropout, BatchNorm's running statistics), or with
  ``batch_stats`` BatchNorm on the batch's own statistics as in the training
  step (still no dropout, the running averages untouched). Maps are pooled
  by :func:`pool_map` (``'block1@4'``: a 4×4 grid of block1)."""
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)

  def features(variables, images, layers: tuple[str, ...], batch_stats: bool = False):
    x = augment.preprocess(images, None, crop_size=data_cfg.crop_size, flip=False,
                           mean=mean, std=std, train=False, bgr=data_cfg.get("bgr", False))
    if batch_stats:
      outputs, _ = model.apply(variables, x, train=True, dropout=False,
                               mutable=["batch_stats"])
    else:
      outputs = model.apply(variables, x, train=False)
    result = {}
    for layer in layers:
      name = layer.partition("@")[0]
      if name not in outputs:
        raise KeyError(f"Layer {name!r} is not an output of the network; "
                       f"available: {sorted(outputs)}.")
      result[layer] = pool_map(outputs[name], layer, map_pooling)
    return result

  return jax.jit(features, static_argnames=("layers", "batch_stats"))


def extract_features(feature_fn: Callable, variables: Any, images: np.ndarray,
                     mesh: Mesh, batch_size: int = 256,
                     layers: tuple[str, ...] = ("embedding",),
                     batch_stats_seed: int | None = None
                     ) -> dict[str, np.ndarray]:
  """Runs ``feature_fn`` over ``images`` in fixed-size batches (the last one
  padded, so one compilation serves all) and returns host arrays.

  With ``batch_stats_seed`` the features are those of the training step's
  BatchNorm (batch statistics): the images go through in a random order
  (that seed) in batches of exactly ``batch_size``, the last completed from
  the start of the order, as :class:`~dmlx.data.samplers.RandomSampler`
  builds the training batches, so each image is normalised with a batch
  like the ones the loss sees."""
  if batch_stats_seed is not None:
    return _batch_stats_features(feature_fn, variables, images, mesh,
                                 batch_size, layers, batch_stats_seed)
  n = len(images)
  ndev = mesh.devices.size
  batch_size = min(batch_size, -(-n // ndev) * ndev)   # no padding past the images
  batch_size = max(ndev, batch_size - batch_size % ndev)
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    part = images[start:start + batch_size]
    valid = len(part)
    if valid < batch_size:
      part = np.concatenate([part, np.repeat(part[-1:], batch_size - valid, 0)])
    out = feature_fn(variables, shard_batch(mesh, {"x": part})["x"],
                     layers=tuple(layers))
    for k, v in distributed.to_host(out).items():
      chunks.setdefault(k, []).append(np.asarray(v)[:valid])
  return {k: np.concatenate(v).astype(np.float32) for k, v in chunks.items()}


def _batch_stats_features(feature_fn, variables, images, mesh, batch_size,
                          layers, seed) -> dict[str, np.ndarray]:
  n = len(images)
  steps = -(-n // batch_size)
  order = np.resize(np.random.default_rng([seed, 13]).permutation(n),
                    steps * batch_size).reshape(steps, batch_size)
  out: dict[str, np.ndarray] = {}
  for rows in order[::-1]:        # the first pass of each row is written last
    feats = feature_fn(variables, shard_batch(mesh, {"x": images[rows]})["x"],
                       layers=tuple(layers), batch_stats=True)
    for k, v in distributed.to_host(feats).items():
      if k not in out:
        out[k] = np.zeros((n, v.shape[-1]), np.float32)
      out[k][rows] = np.asarray(v, np.float32)
  return out
