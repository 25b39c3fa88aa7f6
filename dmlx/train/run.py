"""A run's parts, built once: :func:`build` and the state it starts from.

:class:`Run` holds what does not change during training (data, network,
method and its settings, optimiser, jitted functions, checkpointer, writer).
:func:`fresh_state` is the state of a new run (random or pretrained weights,
the method's zero-filled state: no refresh yet); :func:`restore_state` reads a
checkpoint into templates made with ``jax.eval_shape`` (nothing is computed,
no method state is refreshed). :func:`host_context` and
:func:`eval_context` are what the host-side method steps and the evaluators
see at a step.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dmlx import methods as methods_lib
from dmlx import models
from dmlx.data import base as data_base
from dmlx.data import pipeline
from dmlx.data import samplers as samplers_lib
from dmlx.methods.base import EvalContext, HostContext, Method, MethodState, ModelInfo
from dmlx.methods.base import host_seed
from dmlx.train import checkpoint as ckpt_lib
from dmlx.train import checks
from dmlx.train import evaluators as evaluators_lib
from dmlx.train import optim
from dmlx.train import step as step_lib
from dmlx.train.logging import MetricWriter
from dmlx.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a run is made of that does not change while it trains."""
  config: Any
  workdir: str
  data_config: Any             # config.data with the weights' normalisation
  writer: MetricWriter
  mesh: Any
  train: data_base.Dataset
  test: data_base.Dataset
  model: Any
  method: Method
  method_config: Any
  info: ModelInfo
  layers: tuple[str, ...]      # evaluated layers (``embedding`` included)
  evaluators: tuple[str, ...]
  steps_per_epoch: int
  total_steps: int
  optimizer: optim.Optimizer
  features: Callable           # jitted feature function (layers static)
  checkpointer: ckpt_lib.Checkpointer

  @property
  def log(self) -> Callable[[str], None]:
    return self.writer.log

  @property
  def seen_classes(self) -> bool:
    """Whether the test classes are the training classes (classification)."""
    return tuple(self.test.class_names) == tuple(self.train.class_names)


def data_config(config: Any) -> Any:
  """``config.data`` with mean / std / BGR from ``model.pretrained`` when set
  (a copy: the caller's config is not changed)."""
  data = config.data
  if not config.model.pretrained:
    return data
  from dmlx.models import pretrained  # pylint: disable=g-import-not-at-top
  norm = pretrained.data_normalisation(
      pretrained.preprocessing_for(config.model.pretrained))
  data = data.copy_and_resolve_references()
  with data.unlocked():
    data.mean, data.std = tuple(norm["mean"]), tuple(norm["std"])
    data.bgr = bool(norm["bgr"])
  return data


def _model_info(model, train: data_base.Dataset, size: int) -> ModelInfo:
  dummy = jax.ShapeDtypeStruct((1, size, size, train.images.shape[-1]), jnp.float32)

  def shapes(k, x):
    variables = model.init({"params": k, "dropout": k}, x)
    return model.apply(variables, x)

  try:
    out = jax.eval_shape(shapes, jax.random.PRNGKey(0), dummy)
  except KeyError as e:  # EmbeddingNet reads model.input_layer from the backbone
    if not e.args or e.args[0] != getattr(model, "input_layer", None):
      raise
    raise ValueError(f"config.model.input_layer = {e.args[0]!r} is not an output "
                     "of the backbone.") from e
  dims = {k: int(v.shape[-1]) for k, v in out.items()}
  return ModelInfo(num_classes=train.num_classes, num_train=len(train),
                   embedding_dim=dims["embedding"], feature_dims=dims)


def epoch_length(config: Any, method: Method, method_config: Any,
                 train: data_base.Dataset) -> int:
  """Steps per epoch: ``train.steps_per_epoch``, else one pass of the
  method's sampler (``config.sampler`` unless the method sets it)."""
  if config.train.steps_per_epoch:
    return int(config.train.steps_per_epoch)
  if method.epoch_length is not None:
    return int(method.epoch_length(method_config, config, train))
  return samplers_lib.make_sampler(config.sampler, train.labels,
                                   config.seed).steps_per_epoch


def build(config: Any, workdir: str, *, quiet: bool = False) -> Run:
  """Builds a :class:`Run`: settings checked first, then data, network,
  optimiser and the jitted feature function. Nothing is trained, embedded
  or clustered."""
  checks.check_config(config)
  method, method_config = methods_lib.from_config(config)
  evaluator_names = evaluators_lib.names(config.eval, method)
  layers = tuple(dict.fromkeys(evaluators_lib.parse_layers(config.eval.layers)
                               + ("embedding",)))
  ckpt_lib.check_writable(workdir)
  writer = MetricWriter(workdir, tensorboard=config.train.tensorboard, quiet=quiet)
  mesh = step_lib.make_mesh()
  writer.log(f"devices: {mesh.devices.size} x {jax.devices()[0].platform}")
  data_cfg = data_config(config)
  if data_cfg is not config.data:
    writer.log(f"input normalisation from {config.model.pretrained}: mean "
               f"{data_cfg.mean}, std {data_cfg.std}, bgr {data_cfg.bgr}")
  splits = pipeline.load_splits(data_cfg, writer.log)
  train, test = splits["train"], splits["test"]
  writer.log(f"data {config.data.name}: train {len(train)} images / "
             f"{train.num_classes} classes, test {len(test)} images / "
             f"{test.num_classes} classes ({config.data.split})")
  evaluators_lib.check_few_shot(config.eval, test)
  size = data_cfg.crop_size or data_cfg.image_size
  samplers_lib.check_batch_fits(config.sampler, (size, size, train.images.shape[-1]))
  model = models.build_model(config.model)
  info = _model_info(model, train, size)
  unknown = [l for l in layers if l.partition("@")[0] not in info.feature_dims]
  if unknown:
    raise ValueError(f"config.eval.layers names {unknown}, not outputs of the "
                     f"network; it has {sorted(info.feature_dims)}.")
  steps_per_epoch = epoch_length(config, method, method_config, train)
  total = steps_per_epoch * config.train.epochs
  return Run(config=config, workdir=workdir, data_config=data_cfg,
             writer=writer, mesh=mesh, train=train, test=test, model=model,
             method=method, method_config=method_config, info=info,
             layers=layers, evaluators=evaluator_names,
             steps_per_epoch=steps_per_epoch, total_steps=total,
             optimizer=optim.make_optimizer(config.optim, total),
             features=step_lib.make_feature_fn(model, data_cfg),
             checkpointer=ckpt_lib.Checkpointer(workdir, config.train.max_checkpoints))


def jit_train_step(run: Run) -> Callable:
  """The run's jitted train step, ``step(state, batches) -> (state,
  metrics)``, the state donated (what the loop and the benchmarks run)."""
  return jax.jit(step_lib.make_train_step(run.model, run.method, run.method_config,
                                          run.optimizer, run.data_config),
                 donate_argnums=(0,))


def _initial(run: Run) -> tuple[Any, Any, Any, jax.Array]:
  """A new run's ``(params, batch_stats, opt_state, rng)``."""
  config = run.config
  size = run.data_config.crop_size or run.data_config.image_size
  dummy = jnp.zeros((1, size, size, run.train.images.shape[-1]), jnp.float32)
  k_model, k_method, k_run = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  variables = run.model.init({"params": k_model, "dropout": k_model}, dummy)
  params = {"model": variables["params"],
            "method": run.method.init_params(run.method_config, k_method, run.info)}
  return (params, variables.get("batch_stats", {}), run.optimizer.init(params),
          k_run)


def _train_state(params, batch_stats, opt_state, rng, method_state) -> TrainState:
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=opt_state,
                    method_state=method_state, rng=rng)


def fresh_state(run: Run) -> tuple[TrainState, Any]:
  """``(TrainState on the mesh, host state)`` of a new run: random (or
  ``model.pretrained``) weights and the method's zero-filled state."""
  params, batch_stats, opt_state, rng = jax.jit(lambda: _initial(run))()
  if run.config.model.pretrained:
    from dmlx.models import pretrained  # pylint: disable=g-import-not-at-top
    fresh = {"params": params["model"], "batch_stats": batch_stats}
    loaded_params, loaded_stats = pretrained.load_into(
        run.config.model.pretrained, params["model"], batch_stats)
    loaded = {"params": loaded_params, "batch_stats": loaded_stats}
    if run.config.model.reinit_layers:
      loaded = models.heads.reinitialise_layers(loaded, fresh,
                                                run.config.model.reinit_layers)
    params = {**params, "model": loaded["params"]}
    batch_stats, opt_state = loaded["batch_stats"], run.optimizer.init(params)
  method_state = run.method.init_state(run.method_config, run.info)
  state = _train_state(params, batch_stats, opt_state, rng, method_state.device)
  return step_lib.replicate(run.mesh, state), method_state.host


def abstract_state(run: Run) -> tuple[TrainState, Any]:
  """Shapes, dtypes and shardings of ``(TrainState, host state)``, computed
  with ``jax.eval_shape`` (no weights are made, nothing is refreshed)."""
  sharding = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  method_state = run.method.init_state(run.method_config, run.info)
  shapes = jax.eval_shape(
      lambda d: _train_state(*_initial(run), d),
      jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
                             method_state.device))
  train = jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
  return train, method_state.host


def restore_state(run: Run, step: int | None = None) -> tuple[TrainState, Any]:
  """The checkpoint at ``step`` (default: the latest) of ``run.workdir``."""
  train, host = abstract_state(run)
  restored = run.checkpointer.restore({"train": train, "host": host}, step)
  return restored["train"], restored["host"]


def save_state(run: Run, step: int, state: TrainState, host: Any) -> None:
  """An atomic checkpoint of ``(state, host)`` at ``step``."""
  run.checkpointer.save(step, {"train": state, "host": host})


def host_context(run: Run, state: TrainState, step: int) -> HostContext:
  """The :class:`HostContext` at ``step`` (copies the weights to the host
  once; training-set features are computed once per context)."""
  variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
  cache: dict[tuple, np.ndarray] = {}
  epoch = step // run.steps_per_epoch

  def embed(layer: str = "embedding", dataset=None, *, bn: str = "inference",
            batch_size: int = 0) -> np.ndarray:
    if bn not in ("inference", "batch"):
      raise ValueError(f"embed: bn must be 'inference' or 'batch', got {bn!r}.")
    key = (layer, bn, batch_size)
    if dataset is None and key in cache:
      return cache[key]
    ds = run.train if dataset is None else dataset
    if bn == "batch":
      out = step_lib.extract_features(
          run.features, variables, ds.images, run.mesh, batch_size, (layer,),
          batch_stats_seed=host_seed(run.config.seed, epoch))[layer]
    else:
      out = step_lib.extract_features(run.features, variables, ds.images, run.mesh,
                                      run.config.eval.batch_size, (layer,))[layer]
    if dataset is None:
      out.flags.writeable = False
      cache[key] = out
    return out

  return HostContext(config=run.config, train=run.train, embed=embed,
                     params=jax.device_get(state.params["method"]), epoch=epoch,
                     step=step, seed=host_seed(run.config.seed, epoch),
                     log=run.log)


def eval_context(run: Run, state: TrainState, host: Any, step: int,
                 test: data_base.Dataset, test_features: dict) -> EvalContext:
  """The evaluators' context at ``step`` for the evaluated split ``test``."""
  ctx = host_context(run, state, step)
  fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(HostContext)}
  device = jax.device_get(state.method_state)
  return EvalContext(**fields, test=test, test_features=test_features,
                     method_config=run.method_config,
                     state=MethodState(device=device, host=host),
                     seen_classes=tuple(test.class_names) ==
                     tuple(run.train.class_names))
