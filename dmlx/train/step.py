"""The jitted, data-parallel train step and the batched feature extractor.

Parallelism is ``jax.jit`` over a ``Mesh`` of all devices: the batch is sharded
on the ``data`` axis, parameters and method state are replicated. The step is
written as a function of the *global* batch (the loss sees all B examples,
BatchNorm averages over all of them), so XLA inserts the collectives and the
loss and gradients equal the single-device result exactly — no per-device
loss scaling, and in-batch mining sees every pair, not just those on one device.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dmlx.data import augment
from dmlx.methods.base import Method
from dmlx.train.state import TrainState


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``data`` over all (global) devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices, ("data",))


def shard_batch(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, sharded on the leading axis.

  On several hosts each process passes its own slice of the global batch
  (``jax.make_array_from_process_local_data``)."""
  sharding = NamedSharding(mesh, P("data"))
  n = mesh.devices.size
  for key, value in batch.items():
    if value.shape[0] * jax.process_count() % n:
      raise ValueError(f"Global batch of {value.shape[0] * jax.process_count()}"
                       f" ({key!r}) is not divisible by {n} devices.")
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Replicates a pytree on every device of ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def _split_aux(aux: dict) -> tuple[dict, dict]:
  scalars = {k: v for k, v in aux.items() if jnp.ndim(v) == 0}
  arrays = {k: v for k, v in aux.items() if jnp.ndim(v) > 0}
  return scalars, arrays


def make_grad_fn(model, method: Method, data_cfg) -> Callable:
  """Returns ``grad_fn(state, batch) -> (loss, aux, batch_stats, grads)``:
  the forward pass on the augmented global batch, the method's loss and its
  gradients with respect to ``state.params``."""
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)

  def grad_fn(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    k_aug, k_drop, k_loss = jax.random.split(rng, 3)
    images = augment.preprocess(batch["images"], k_aug, crop_size=data_cfg.crop_size,
                                flip=data_cfg.flip, mean=mean, std=std, train=True,
                                bgr=data_cfg.get("bgr", False))

    def loss_fn(params):
      variables = {"params": params["model"], "batch_stats": state.batch_stats}
      outputs, updates = model.apply(variables, images, train=True,
                                     mutable=["batch_stats"], rngs={"dropout": k_drop})
      loss, aux = method.loss(params["method"], outputs, batch, state.method_state, k_loss)
      return loss, (aux, updates.get("batch_stats", state.batch_stats))

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    return loss, aux, batch_stats, grads

  return grad_fn


def make_train_step(model, method: Method, tx: optax.GradientTransformation,
                    data_cfg) -> Callable:
  """Returns ``train_step(state, batch) -> (state, scalars, per_example)``."""
  grad_fn = make_grad_fn(model, method, data_cfg)

  def train_step(state: TrainState, batch: dict):
    loss, aux, batch_stats, grads = grad_fn(state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, batch_stats=batch_stats)
    scalars, arrays = _split_aux(aux)
    scalars = {"loss": loss, "grad_norm": optax.global_norm(grads), **scalars}
    return new_state, scalars, arrays

  return train_step


def make_feature_fn(model, data_cfg, layers: tuple[str, ...],
                    map_pooling: str = "max") -> Callable:
  """``features(variables, images) -> {layer: [B, D]}`` in inference mode.

  Convolutional maps are pooled globally (max, as Vo & Hays; or avg)."""
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)

  def features(variables, images):
    x = augment.preprocess(images, None, crop_size=data_cfg.crop_size, flip=False,
                           mean=mean, std=std, train=False, bgr=data_cfg.get("bgr", False))
    outputs = model.apply(variables, x, train=False)
    result = {}
    for layer in layers:
      if layer not in outputs:
        raise KeyError(f"Layer {layer!r} is not an output of the network; "
                       f"available: {sorted(outputs)}.")
      f = outputs[layer]
      if f.ndim == 4:
        f = jnp.max(f, axis=(1, 2)) if map_pooling == "max" else jnp.mean(f, axis=(1, 2))
      result[layer] = f
    return result

  return jax.jit(features)


def extract_features(feature_fn: Callable, variables: Any, images: np.ndarray,
                     mesh: Mesh, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Runs ``feature_fn`` over ``images`` in fixed-size batches (the last one
  padded, so one compilation serves all) and returns host arrays."""
  n = len(images)
  ndev = mesh.devices.size
  batch_size = max(ndev, batch_size - batch_size % ndev)
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    part = images[start:start + batch_size]
    valid = len(part)
    if valid < batch_size:
      part = np.concatenate([part, np.repeat(part[-1:], batch_size - valid, 0)])
    out = feature_fn(variables, shard_batch(mesh, {"x": part})["x"])
    for k, v in out.items():
      chunks.setdefault(k, []).append(np.asarray(jax.device_get(v))[:valid])
  return {k: np.concatenate(v).astype(np.float32) for k, v in chunks.items()}
