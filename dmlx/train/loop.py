"""``train_and_evaluate(config, workdir)``: the whole training run.

Reads top to bottom: data → network and method → state (fresh or restored) →
untrained baseline → epochs (host refresh between them, jitted data-parallel
steps inside) → final evaluation next to the untrained network.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dmlx import eval as dmlx_eval
from dmlx import methods as methods_lib
from dmlx import models
from dmlx.data import pipeline, samplers
from dmlx.methods.base import HostContext, ModelInfo
from dmlx.train import checkpoint as ckpt_lib
from dmlx.train import evaluate as evaluate_lib
from dmlx.train import optim
from dmlx.train import step as step_lib
from dmlx.train.logging import MetricWriter
from dmlx.train.state import TrainState


def _host_seed(seed: int, epoch: int) -> int:
  return int(np.random.default_rng([seed, epoch, 7]).integers(2**31 - 1))


def _to_host(tree: Any) -> Any:
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def create_model_and_state(config, train_ds, method, mesh):
  """Builds the network, initialises params/method params and returns
  ``(model, variables_template_state, info)``."""
  model = models.build_model(config.model)
  size = config.data.crop_size or config.data.image_size
  dummy = jnp.zeros((1, size, size, train_ds.images.shape[-1]), jnp.float32)
  rng = jax.random.PRNGKey(config.seed)
  k_model, k_method, k_run = jax.random.split(rng, 3)
  variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, dummy))(k_model)
  shapes = jax.eval_shape(lambda v: model.apply(v, dummy), variables)
  feature_dims = {k: int(v.shape[-1]) for k, v in shapes.items()}
  info = ModelInfo(num_classes=train_ds.num_classes, num_train=len(train_ds),
                   embedding_dim=feature_dims["embedding"], feature_dims=feature_dims)
  params = {"model": variables["params"], "method": method.init_params(k_method, info)}
  if config.model.pretrained:
    from dmlx.models import pretrained  # pylint: disable=g-import-not-at-top
    fresh = {"params": params["model"], "batch_stats": variables.get("batch_stats", {})}
    loaded_params, batch_stats = pretrained.load_into(
        config.model.pretrained, params["model"], variables.get("batch_stats", {}))
    loaded = {"params": loaded_params, "batch_stats": batch_stats}
    if config.model.reinit_layers:
      loaded = models.heads.reinitialise_layers(loaded, fresh, config.model.reinit_layers)
    params["model"] = loaded["params"]
    variables = {**variables, "batch_stats": loaded["batch_stats"]}
  return model, params, variables.get("batch_stats", {}), info, k_run


@dataclasses.dataclass
class Run:
  """Everything a run is made of, built by :func:`setup`."""
  config: Any
  workdir: str
  writer: MetricWriter
  mesh: Any
  train_ds: Any
  test_ds: Any
  method: Any
  model: Any
  feature_fn: Any
  layers: tuple
  sampler: Any
  steps_per_epoch: int
  tx: Any
  state: TrainState
  checkpointer: ckpt_lib.Checkpointer
  resumed: bool
  _layer_fns: dict = dataclasses.field(default_factory=dict)

  def host_context(self, state_params, state_stats, epoch) -> HostContext:
    """The :class:`HostContext` for host-side method steps at ``epoch``."""
    variables = {"params": state_params["model"], "batch_stats": state_stats}
    cfg = self.config

    train_features = {}   # layer -> training-set features under these weights

    def embed(layer: str = "embedding", dataset=None) -> np.ndarray:
      if dataset is None and layer in train_features:
        return train_features[layer]
      ds = self.train_ds if dataset is None else dataset
      out = step_lib.extract_features(self.layer_fn(layer), variables, ds.images,
                                      self.mesh, cfg.eval.batch_size)[layer]
      if dataset is None:        # asked again by a method and by the trainer
        out.flags.writeable = False
        train_features[layer] = out
      return out

    return HostContext(config=cfg, train=self.train_ds, embed=embed,
                       params=state_params["method"], epoch=epoch,
                       seed=_host_seed(cfg.seed, epoch), log=self.writer.log)

  def layer_fn(self, layer: str):
    """The jitted feature function that returns ``layer`` (one per layer
    outside the evaluated set, compiled once and cached)."""
    if layer in self.layers:
      return self.feature_fn
    if layer not in self._layer_fns:
      self._layer_fns[layer] = step_lib.make_feature_fn(self.model, self.config.data,
                                                        (layer,))
    return self._layer_fns[layer]

  def evaluate(self, state, datasets):
    """``({split: {layer: metrics}}, {split: {layer: features}})`` for the
    layers of ``eval.layers`` (plus ``embedding``, which methods read)."""
    variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
    return evaluate_lib.evaluate_datasets(self.feature_fn, variables, self.mesh,
                                          datasets, self.config.eval)


def setup(config, workdir: str, quiet: bool = False) -> Run:
  """Data, network, method, optimiser and state (restored if ``workdir`` has
  a checkpoint)."""
  os.makedirs(workdir, exist_ok=True)
  writer = MetricWriter(workdir, tensorboard=config.train.tensorboard, quiet=quiet)
  log = writer.log
  mesh = step_lib.make_mesh()
  log(f"devices: {mesh.devices.size} x {jax.devices()[0].platform}")
  if config.model.pretrained:
    # The input normalisation the pretrained weights expect (mean/std, BGR).
    from dmlx.models import pretrained  # pylint: disable=g-import-not-at-top
    norm = pretrained.data_normalisation(pretrained.preprocessing_for(config.model.pretrained))
    config.data.mean, config.data.std = tuple(norm["mean"]), tuple(norm["std"])
    config.data.bgr = bool(norm["bgr"])
    log(f"input normalisation from {config.model.pretrained}: {norm}")

  # ---- Data ----------------------------------------------------------------
  data = pipeline.load_splits(config.data)
  train_ds, test_ds = data["train"], data["test"]
  log(f"data {config.data.name}: train {len(train_ds)} images / "
      f"{train_ds.num_classes} classes, test {len(test_ds)} images / "
      f"{test_ds.num_classes} classes ({config.data.split})")

  # ---- Network, method ------------------------------------------------------
  method = methods_lib.make(config)
  model, params, batch_stats, _, run_rng = create_model_and_state(
      config, train_ds, method, mesh)
  layers = evaluate_lib.parse_layers(config.eval.layers)
  layers = tuple(dict.fromkeys(layers + ("embedding",)))
  feature_fn = step_lib.make_feature_fn(model, config.data, layers)
  run = Run(config=config, workdir=workdir, writer=writer, mesh=mesh,
            train_ds=train_ds, test_ds=test_ds, method=method, model=model,
            feature_fn=feature_fn, layers=layers, sampler=None, steps_per_epoch=0,
            tx=None, state=None, checkpointer=None, resumed=False)

  # ---- Method state, sampler, optimiser, checkpoint ---------------------------
  t0 = time.time()
  method_state = method.init_state(run.host_context(params, batch_stats, 0))
  if method_state is None:
    method_state = {}
  log(f"method {method.name}: initial state in {time.time() - t0:.1f}s")
  if method.make_sampler:
    run.sampler = method.make_sampler(run.host_context(params, batch_stats, 0),
                                      method_state)
  else:
    run.sampler = samplers.make_sampler(config.sampler, train_ds.labels, config.seed)
  run.steps_per_epoch = config.train.steps_per_epoch or run.sampler.steps_per_epoch
  run.tx = optim.make_optimizer(config.optim, run.steps_per_epoch * config.train.epochs)
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                     batch_stats=batch_stats, opt_state=run.tx.init(params),
                     method_state=method_state, rng=run_rng)
  run.state = step_lib.replicate(mesh, state)
  run.checkpointer = ckpt_lib.Checkpointer(workdir, config.train.max_checkpoints)
  run.resumed = run.checkpointer.latest_step() is not None
  if run.resumed:
    run.state = run.checkpointer.restore(run.state)
    log(f"restored step {int(run.state.step)} from {run.checkpointer.directory}")
  return run


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint)
  and returns the final metrics, also written to ``final_metrics.json``
  (with ``seconds``: wall time of this call, set-up to final evaluation)."""
  t_start = time.time()
  run = setup(config, workdir)
  writer, log, mesh, method = run.writer, run.writer.log, run.mesh, run.method
  train_ds, test_ds, sampler = run.train_ds, run.test_ds, run.sampler
  steps_per_epoch, state, checkpointer = run.steps_per_epoch, run.state, run.checkpointer
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  # ---- Untrained baseline ---------------------------------------------------
  untrained_path = os.path.join(workdir, "untrained_metrics.json")
  untrained = None
  if config.eval.untrained_baseline:
    if os.path.exists(untrained_path):
      with open(untrained_path) as f:
        untrained = json.load(f)
    elif not run.resumed:
      untrained = run.evaluate(state, {"test": test_ds})[0]
      with open(untrained_path, "w") as f:
        json.dump(untrained, f, indent=2)
      log("untrained: " + _summary(untrained["test"]))

  # ---- Training loop ---------------------------------------------------------
  train_step = jax.jit(step_lib.make_train_step(run.model, method, run.tx, config.data),
                       donate_argnums=(0,))
  start = int(state.step)
  train_eval = {"train": evaluate_lib.subsample(train_ds, config.eval.train_subset,
                                                config.seed), "test": test_ds}
  progress = None
  t_train = time.time()
  for epoch in range(start // steps_per_epoch, config.train.epochs):
    first = start - epoch * steps_per_epoch if epoch == start // steps_per_epoch else 0
    if (first == 0 and epoch > 0 and method.refresh is not None and
        method.refresh_every and epoch % method.refresh_every == 0):
      t0 = time.time()
      ctx = run.host_context(state.params, state.batch_stats, epoch)
      new_ms = method.refresh(ctx, _to_host(state.method_state))
      state = state.replace(method_state=step_lib.replicate(mesh, new_ms))
      refresh_s = time.time() - t0
      log(f"epoch {epoch}: {method.name} refresh took {refresh_s:.2f}s")
      writer.write(int(state.step), {"refresh_seconds": refresh_s})
    if config.train.progress and jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      progress = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/"
                      f"{config.train.epochs}", leave=False, dynamic_ncols=True)
    t_epoch, losses = time.time(), []
    for s in range(first, steps_per_epoch):
      # The sampler's own epoch may be shorter or longer than the trainer's
      # (train.steps_per_epoch): address its batches by the global step.
      g = epoch * steps_per_epoch + s
      index = sampler.batch(g // sampler.steps_per_epoch, g % sampler.steps_per_epoch,
                            state.method_state if method.make_sampler else None)
      host_batch = {"images": train_ds.images[index], "labels": train_ds.labels[index],
                    "index": index.astype(np.int32)}
      state, scalars, arrays = train_step(state, step_lib.shard_batch(mesh, host_batch))
      loss = float(scalars["loss"])
      if not math.isfinite(loss):
        raise FloatingPointError(
            f"Loss is {loss} at step {int(state.step)} (epoch {epoch}, method "
            f"{method.name}); the last good checkpoint is in {checkpointer.directory}. "
            "Lower optim.lr or check the loss hyper-parameters.")
      losses.append(loss)
      if method.after_step is not None:
        new_ms = method.after_step(_to_host(state.method_state),
                                  _to_host({**scalars, **arrays}), host_batch)
        state = state.replace(method_state=step_lib.replicate(mesh, new_ms))
      step_now = int(state.step)
      if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}")
      if step_now % config.train.log_every == 0:
        writer.write(step_now, {k: float(v) for k, v in scalars.items()}, "train/")
      if (config.train.checkpoint_every_steps and
          step_now % config.train.checkpoint_every_steps == 0):
        checkpointer.save(step_now, state)
    if progress is not None:
      progress.close()
    checkpointer.save(int(state.step), state)
    log(f"epoch {epoch + 1}: mean loss {np.mean(losses) if losses else float('nan'):.4f}, "
        f"{len(losses) / max(time.time() - t_epoch, 1e-9):.1f} steps/s")
    if config.train.stop_after_epochs and epoch + 1 >= config.train.stop_after_epochs \
        and epoch + 1 < config.train.epochs:
      log(f"stopping after epoch {epoch + 1} (train.stop_after_epochs)")
      checkpointer.close()
      writer.close()
      return {"stopped_at_step": int(state.step)}
    if config.train.eval_every_epochs and (epoch + 1) % config.train.eval_every_epochs == 0:
      periodic = run.evaluate(state, train_eval)[0]
      writer.write(int(state.step), evaluate_lib.flatten(periodic), "eval/")
      log(f"epoch {epoch + 1}: test {_summary(periodic['test'])} | train "
          f"{_summary(periodic['train'])}")

  # ---- Final evaluation -------------------------------------------------------
  train_seconds = time.time() - t_train    # steps, host refreshes, periodic evals
  results, feats = run.evaluate(state, train_eval)
  final = {"trained": results, "untrained": untrained, "steps": int(state.step)}
  ctx = run.host_context(state.params, state.batch_stats, config.train.epochs)
  if method.evaluate is not None:
    final["method"] = method.evaluate(ctx, _to_host(state.method_state), test_ds,
                                      feats["test"]["embedding"])
  if tuple(test_ds.class_names) == tuple(train_ds.class_names):
    # A classification split: the test images' classes are the training
    # classes, so nearest-neighbour classification against the training set
    # is the embedding's own classifier (NNGK's and Magnet's comparison).
    final.setdefault("method", {})["1nn_accuracy"] = float(dmlx_eval.knn_accuracy(
        ctx.embed("embedding"), train_ds.labels, feats["test"]["embedding"],
        test_ds.labels, k=1))
  writer.write(int(state.step), evaluate_lib.flatten(results), "final/")
  final["seconds"] = time.time() - t_start
  final["train_seconds"] = train_seconds
  path = os.path.join(workdir, "final_metrics.json")
  with open(path + ".tmp", "w") as f:     # atomic: a finished run's marker
    json.dump(final, f, indent=2)
  os.replace(path + ".tmp", path)
  print(report(final, test_ds.num_classes), flush=True)
  checkpointer.close()
  writer.close()
  return final


def _summary(layer_metrics: dict[str, dict[str, float]]) -> str:
  return "; ".join(f"{layer}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items())
                   for layer, m in layer_metrics.items())


def report(final: dict, num_test_classes: int) -> str:
  """The end-of-run table: trained vs untrained on the unseen test classes."""
  rows = {}
  for layer, m in final["trained"]["test"].items():
    if final.get("untrained") and layer in final["untrained"]["test"]:
      rows[f"untrained [{layer}]"] = final["untrained"]["test"][layer]
    rows[f"trained   [{layer}]"] = m
  for layer, m in final["trained"].get("train", {}).items():
    rows[f"train set [{layer}]"] = m
  text = (f"\nRetrieval on the {num_test_classes} test classes "
          f"(after {final['steps']} steps):\n" + dmlx_eval.format_table(rows))
  if final.get("method"):
    text += "\n" + "  ".join(f"{k}={v:.4f}" for k, v in final["method"].items())
  return text


def evaluate_checkpoint(config, workdir: str, splits=("test",)) -> str:
  """Restores the latest checkpoint in ``workdir`` and returns a table of
  Recall@K, NMI and MAP@R for each layer of ``config.eval.layers``."""
  run = setup(config, workdir, quiet=False)
  if not run.resumed:
    raise FileNotFoundError(f"No checkpoint in {run.checkpointer.directory}; "
                            "train first with launch/train.py and the same --workdir.")
  datasets = {"test": run.test_ds, "train": run.train_ds}
  unknown = [s for s in splits if s not in datasets]
  if unknown:
    raise ValueError(f"Unknown split(s) {unknown}; expected 'test' and/or 'train'.")
  results, feats = run.evaluate(run.state, {s: datasets[s] for s in splits})
  rows = {f"{s} [{layer}]": m for s, layers in results.items() for layer, m in layers.items()}
  text = (f"step {int(run.state.step)} of {workdir}\n" + dmlx_eval.format_table(rows))
  if run.method.evaluate is not None and "test" in feats:
    extra = run.method.evaluate(run.host_context(run.state.params, run.state.batch_stats, 0),
                                _to_host(run.state.method_state), run.test_ds,
                                feats["test"]["embedding"])
    text += "\n" + "  ".join(f"{k}={v:.4f}" for k, v in extra.items())
  run.checkpointer.close()
  return text
