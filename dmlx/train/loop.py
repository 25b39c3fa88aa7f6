"""``train_and_evaluate(config, workdir)``: the whole training run.

Reads top to bottom: build the run → state (restored into ``eval_shape``
templates, or fresh) → untrained baseline → one flat loop over steps →
final evaluation next to the untrained network. Inside the loop the periodic
work is a set of :class:`~dmlx.train.periodic.Every` rules: the method's
host refresh (before a step), and after a step logging, the method's sync,
checkpoints, periodic evaluation and the stop drill. Between declared steps
the loop runs under ``jax.transfer_guard(config.train.transfer_guard)``: the
host samples the batches and puts them on the mesh (explicit transfers), the
jitted step returns device scalars, and nothing is copied back until the
next declared step, where the metrics are read, a NaN or Inf is reported
with its step and loss terms, and the state is saved only if finite.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from dmlx import eval as dmlx_eval
from dmlx.methods.base import MethodState
from dmlx.train import checkpoint as ckpt_lib
from dmlx.train import distributed
from dmlx.train import evaluators as evaluators_lib
from dmlx.train import periodic
from dmlx.train import preemption
from dmlx.train import run as run_lib
from dmlx.train import step as step_lib
from dmlx.train.metrics import Meter


def _guard(level: str):
  """``train.transfer_guard`` between declared steps. ``'disallow'``: host →
  device copies must be explicit (the batches' ``device_put``) and no
  device → host copy happens at all; other values go to
  ``jax.transfer_guard`` as they are (``'log'``, ``'allow'``)."""
  if level in ("", "allow"):
    return contextlib.nullcontext()
  if level != "disallow":
    return jax.transfer_guard(level)
  stack = contextlib.ExitStack()
  stack.enter_context(jax.transfer_guard_host_to_device("disallow"))
  stack.enter_context(jax.transfer_guard_device_to_device("disallow"))
  stack.enter_context(jax.transfer_guard_device_to_host("disallow_explicit"))
  return stack


def _batches(run: run_lib.Run, samplers: dict, step: int, host: Any) -> dict:
  """The host batches of every stream at ``step``, placed on the mesh."""
  out = {}
  for stream, sampler in samplers.items():
    rows = sampler.batch(step, host)
    rows, labels = rows if isinstance(rows, tuple) else (rows, run.train.labels[rows])
    extra = {}
    if run.method.batch_inputs is not None:
      extra = run.method.batch_inputs(run.method_config, host, np.asarray(rows))
    out[stream] = step_lib.shard_batch(run.mesh, {
        "images": run.train.images[rows], "labels": np.asarray(labels, np.int32),
        "index": np.asarray(rows, np.int32), **extra})
  return out


def _samplers(run: run_lib.Run, state, host, step: int) -> dict:
  if run.method.samplers is None:
    from dmlx.data import samplers as samplers_lib  # pylint: disable=g-import-not-at-top
    sampler = samplers_lib.make_sampler(run.config.sampler, run.train.labels,
                                        run.config.seed)
    if getattr(sampler, "short_classes", 0) and step < run.steps_per_epoch:
      run.log(f"sampler: {sampler.short_classes} classes have fewer than K = "
              f"{sampler.K} images; their batches repeat images")
    return {"train": sampler}
  ctx = run_lib.host_context(run, state, step)
  return dict(run.method.samplers(run.method_config, ctx, MethodState(host=host)))


def refresh(run: run_lib.Run, state, host, step: int):
  """The method's host refresh at ``step``: ``(state, host)`` with the new
  method state on the mesh."""
  t0 = time.time()
  ctx = run_lib.host_context(run, state, step)
  old = MethodState(device=jax.device_get(state.method_state), host=host)
  new = run.method.refresh(run.method_config, ctx, old)
  # Every process refreshed from the same gathered features; process 0's
  # result is made everyone's, bit for bit (see dmlx.train.distributed).
  new = distributed.broadcast(new)
  state = state.replace(method_state=step_lib.replicate(run.mesh, new.device))
  seconds = time.time() - t0
  run.log(f"step {step}: {run.method.name} refresh took {seconds:.2f}s")
  run.writer.write(step, {"refresh_seconds": seconds})
  return state, new.host


def evaluate(run: run_lib.Run, state, host, step: int, *,
             final: bool = True) -> dict:
  """The retrieval table (and, when ``final``, the evaluators) at ``step``.

  ``{'trained': {split: {layer: metrics}}, 'steps': step, 'method': {...}}``;
  the same function serves the end of training and ``launch/evaluate.py``."""
  cfg = run.config
  variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
  datasets = {"train": evaluators_lib.subsample(run.train, cfg.eval.train_subset,
                                                cfg.seed), "test": run.test}
  results, feats = evaluators_lib.evaluate_datasets(
      run.features, variables, run.mesh, datasets, cfg.eval, run.layers)
  out = {"trained": results, "steps": int(step), "features": feats}
  if final:
    ctx = run_lib.eval_context(run, state, host, step, run.test, feats["test"])
    out["method"] = evaluators_lib.run_evaluators(run.evaluators, ctx)
  return out


def _untrained(run: run_lib.Run, state, resumed: bool):
  path = os.path.join(run.workdir, "untrained_metrics.json")
  if not run.config.eval.untrained_baseline:
    return None
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  if resumed:
    return None
  variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
  untrained = evaluators_lib.evaluate_datasets(
      run.features, variables, run.mesh, {"test": run.test}, run.config.eval,
      run.layers)[0]
  _write_json(path, untrained)
  run.log("untrained: " + _summary(untrained["test"]))
  return untrained


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint)
  and returns the final metrics, also written to ``final_metrics.json``
  (with ``seconds``: wall time of this call, set-up to final evaluation, and
  ``train_seconds``: the step loop with its refreshes and evaluations)."""
  t_start = time.time()
  run = run_lib.build(config, workdir)
  cfg, method, mcfg = run.config, run.method, run.method_config
  _write_config(run)

  # ---- State: restored (no refresh before it) or fresh ------------------------
  resumed = run.checkpointer.latest_step() is not None
  if resumed:
    state, host = run_lib.restore_state(run)
    start = int(jax.device_get(state.step))
    run.log(f"restored step {start} from {run.checkpointer.directory}")
  else:
    state, host = run_lib.fresh_state(run)
    start = 0
  ckpt_lib.check_space(workdir, (state, host), cfg.train.max_checkpoints)
  untrained = _untrained(run, state, resumed)

  # ---- When periodic work is due ------------------------------------------------
  spe, total = run.steps_per_epoch, run.total_steps
  refresh_due = periodic.Every(epochs=method.refresh_every(mcfg), steps_per_epoch=spe,
                               at_start=method.refresh is not None)
  if method.refresh is None:
    refresh_due = periodic.Every()
  due = Due(
      refresh=refresh_due,
      sync=periodic.Every(steps=method.sync_every(mcfg) if method.sync else 0),
      log=periodic.Every(steps=cfg.train.log_every, epochs=1, steps_per_epoch=spe),
      save=periodic.Every(steps=cfg.train.checkpoint_every_steps, epochs=1,
                          steps_per_epoch=spe),
      eval=periodic.Every(epochs=cfg.train.eval_every_epochs, steps_per_epoch=spe),
      stop=periodic.Every(epochs=cfg.train.stop_after_epochs, steps_per_epoch=spe))

  # ---- The step loop ------------------------------------------------------------
  train_step = run_lib.jit_train_step(run)
  meter = Meter(run, start)
  t_train = time.time()
  with preemption.Preemption() as preempted:
    stopped = _steps(run, state, host, start, train_step, meter, due, preempted)
  if isinstance(stopped, dict):
    return stopped
  state, host = stopped
  meter.close()

  # ---- Final evaluation -----------------------------------------------------------
  train_seconds = time.time() - t_train
  evaluated = evaluate(run, state, host, total)
  final = {"trained": evaluated["trained"], "untrained": untrained, "steps": total,
           "method": evaluated["method"]}
  run.writer.write(total, evaluators_lib.flatten(final["trained"]), "final/")
  final["seconds"] = time.time() - t_start
  final["train_seconds"] = train_seconds
  if cfg.eval.report and distributed.is_main():
    from dmlx.train import figures  # pylint: disable=g-import-not-at-top
    paths = figures.write_run(run, final, evaluated["features"]["test"]["embedding"])
    run.log("figures: " + ", ".join(os.path.basename(p) for p in paths))
  _write_json(os.path.join(workdir, "final_metrics.json"), final)
  if distributed.is_main():
    print(report(final, run.test.num_classes), flush=True)
  run.checkpointer.close()
  run.writer.close()
  return final


class Due(NamedTuple):
  """When the periodic work of the step loop is due (``periodic.Every``)."""
  refresh: periodic.Every
  sync: periodic.Every
  log: periodic.Every
  save: periodic.Every
  eval: periodic.Every
  stop: periodic.Every


def _steps(run: run_lib.Run, state, host, start: int, train_step, meter: Meter,
           due: Due, preempted: preemption.Preemption):
  """The step loop from ``start``: ``(state, host)`` at the end, or
  ``{'stopped_at_step'}`` / ``{'preempted_at_step'}`` when it stops early."""
  cfg, method, mcfg = run.config, run.method, run.method_config
  spe, total = run.steps_per_epoch, run.total_steps
  refresh_due, sync_due, log_due, save_due, eval_due, stop_due = due
  samplers = None
  for step in range(start, total):
    if preempted(step):
      return _preempt(run, state, host, step, meter, preempted.signal)
    if refresh_due(step):
      t0 = time.time()
      state, host = refresh(run, state, host, step)
      meter.epoch_t0 += time.time() - t0     # steps/s excludes the refresh
      samplers = None
    if samplers is None:
      samplers = _samplers(run, state, host, step)
    with _guard(cfg.train.transfer_guard):
      state, metrics = train_step(state, _batches(run, samplers, step, host))
    meter.add(metrics)
    done = step + 1
    epoch_end = done % spe == 0
    if (log_due(done) or save_due(done) or eval_due(done) or sync_due(done)
        or refresh_due(done) or done == total):
      meter.flush(done, epoch_end=epoch_end)   # raises on NaN / Inf
    if sync_due(done):
      host = method.sync(mcfg, host, jax.device_get(state.method_state))
    if save_due(done):
      run_lib.save_state(run, done, state, host)
      meter.saved(done)
    if eval_due(done):
      periodic_results = evaluate(run, state, host, done, final=False)["trained"]
      run.writer.write(done, evaluators_lib.flatten(periodic_results), "eval/")
      run.log(f"epoch {done // spe}: test {_summary(periodic_results['test'])} | "
              f"train {_summary(periodic_results['train'])}")
    if stop_due(done) and done < total:
      run.log(f"stopping after epoch {done // spe} (train.stop_after_epochs)")
      meter.close()
      run.checkpointer.close()
      run.writer.close()
      return {"stopped_at_step": done}
  return state, host


def _preempt(run, state, host, step: int, meter, signum) -> dict:
  """Checkpoints ``step`` (unless it is the latest already) and stops."""
  meter.flush(step)                          # raises on NaN / Inf: never saved
  if run.checkpointer.latest_step() != step:
    run_lib.save_state(run, step, state, host)
  name = signal.Signals(signum).name if signum else "the preemption notice"
  run.log(f"{name}: checkpointed step {step} in {run.checkpointer.directory}; "
          f"stopping (exit {preemption.EXIT_PREEMPTED}); the same command resumes")
  meter.close()
  run.checkpointer.close()
  run.writer.close()
  return {"preempted_at_step": step}


def _write_config(run: run_lib.Run) -> None:
  """``config.json``: the run's config with ``data`` as the run reads it
  (the input normalisation of ``model.pretrained`` resolved), so the run's
  network can be used (``dmlx.inference``) without the weights file.
  Process 0 writes it."""
  if not distributed.is_main():
    return
  config = json.loads(run.config.to_json_best_effort())
  config["data"] = json.loads(run.data_config.to_json_best_effort())
  path = os.path.join(run.workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
  os.replace(path + ".tmp", path)


def _write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` atomically (a finished run's marker); process 0 only."""
  if not distributed.is_main():
    return
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(path + ".tmp", path)


def _summary(layer_metrics: dict[str, dict[str, float]]) -> str:
  return "; ".join(f"{layer}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items())
                   for layer, m in layer_metrics.items())


def report(final: dict, num_test_classes: int | None = None) -> str:
  """The end-of-run table: trained vs untrained on the unseen test classes."""
  rows = {}
  for layer, m in final["trained"]["test"].items():
    if final.get("untrained") and layer in final["untrained"]["test"]:
      rows[f"untrained [{layer}]"] = final["untrained"]["test"][layer]
    rows[f"trained   [{layer}]"] = m
  for layer, m in final["trained"].get("train", {}).items():
    rows[f"train set [{layer}]"] = m
  classes = f"{num_test_classes} " if num_test_classes else ""
  text = (f"\nRetrieval on the {classes}test classes "
          f"(after {final['steps']} steps):\n" + dmlx_eval.format_table(rows))
  if final.get("method"):
    text += "\n" + "  ".join(f"{k}={v:.4f}" for k, v in final["method"].items())
  return text


def evaluate_run(config, workdir: str, step: int | None = None) -> dict:
  """Restores ``workdir`` (its latest checkpoint, or ``step``) and evaluates
  it exactly as the end of training does: for a finished run the result is
  its ``final_metrics.json`` without the timings."""
  from dmlx.train.restore import restore  # pylint: disable=g-import-not-at-top
  restored = restore(config, workdir, step)
  result = evaluate(restored.run, restored.state, restored.host, restored.step)
  untrained_path = os.path.join(workdir, "untrained_metrics.json")
  untrained = None
  if os.path.exists(untrained_path):
    with open(untrained_path) as f:
      untrained = json.load(f)
  restored.close()
  return {"trained": result["trained"], "untrained": untrained,
          "steps": restored.step, "method": result["method"]}
