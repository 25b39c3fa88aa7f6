"""Optimisers with per-group learning rates (backbone / head / method).

The seed papers train a pretrained backbone slowly, the new embedding head
faster, and loss parameters (NNGK weights, β, proxies, α_c) at their own
rate; :func:`make_optimizer` builds that from ``config.optim``.

The learning rate is a function of the *iteration* (``TrainState.step``),
not of optax's update count, so a method that takes two updates in one
iteration (MIC's class and auxiliary steps) follows the same schedule as a
one-update method: ``tx`` computes the update direction of each group (Adam,
SGD with momentum, weight decay, clipping) and :meth:`Optimizer.scale`
multiplies it by ``-lr(step) · multiplier(group, step)``. This is exactly
optax's ``scale_by_learning_rate`` at the end of the chain, moved out of it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

GROUPS = ("backbone", "head", "method")


def param_groups(params: Any) -> Any:
  """Labels each leaf 'backbone', 'head' or 'method' by its path."""
  def label(path, _):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    if keys[0] == "method":
      return "method"
    return "backbone" if len(keys) > 1 and keys[1] == "backbone" else "head"
  return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule named by ``cfg.schedule`` (base rate ``cfg.lr``)."""
  if cfg.schedule == "constant":
    sched = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    sched = optax.cosine_decay_schedule(cfg.lr, max(total_steps - cfg.warmup_steps, 1))
  elif cfg.schedule == "step":
    sched = optax.piecewise_constant_schedule(
        cfg.lr, {int(f * total_steps): cfg.decay_factor for f in cfg.decay_boundaries})
  else:
    raise ValueError(f"Unknown optim.schedule {cfg.schedule!r}; expected "
                     "'constant', 'cosine' or 'step'.")
  if cfg.warmup_steps:
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), sched],
        [cfg.warmup_steps])
  return sched


def _decay(cfg) -> list[optax.GradientTransformation]:
  """Weight decay: ``weight_decay`` on the network, ``method_weight_decay``
  on the method's parameters (centre weights, β, proxies, α_c, R), which
  the papers do not decay unless they say so."""
  is_method = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[0], "key", None) == "method", params)
  is_model = lambda params: jax.tree_util.tree_map(
      lambda m: not m, is_method(params))
  out = []
  if cfg.weight_decay:
    out.append(optax.add_decayed_weights(cfg.weight_decay, mask=is_model))
  if cfg.get("method_weight_decay", 0.0):
    out.append(optax.add_decayed_weights(cfg.method_weight_decay, mask=is_method))
  return out


def _direction(cfg) -> optax.GradientTransformation:
  """The optimiser without its learning rate (the last factor)."""
  if cfg.name == "adam":
    return optax.chain(*_decay(cfg), optax.scale_by_adam())
  if cfg.name == "adamw":
    return optax.chain(optax.scale_by_adam(), *_decay(cfg))
  if cfg.name == "sgd":
    parts = _decay(cfg)
    if cfg.momentum:
      parts.append(optax.trace(decay=cfg.momentum, nesterov=False))
    return optax.chain(*parts) if parts else optax.identity()
  raise ValueError(f"Unknown optim.name {cfg.name!r}; expected 'adam', 'adamw' or 'sgd'.")


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """``tx`` (the update direction, per group) and the step's scale.

  Attributes:
    tx: optax transformation of ``params = {'model': ..., 'method': ...}``
      without learning rate (the same for every group).
    schedule: base learning rate as a function of the iteration.
    multipliers: ``{group: factor}`` (``optim.*_lr_mult``).
    backbone_frozen_steps: iterations during which the backbone's rate is 0
      (its optimiser state still accumulates, as the authors of Vo & Hays do
      by setting the group's rate to 0).
  """
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  multipliers: dict[str, float]
  backbone_frozen_steps: int = 0

  def init(self, params: Any) -> Any:
    return self.tx.init(params)

  def update(self, grads: Any, opt_state: Any, params: Any,
             step: jax.Array) -> tuple[Any, Any]:
    """``(updates, new_opt_state)`` of one update at iteration ``step``."""
    direction, opt_state = self.tx.update(grads, opt_state, params)
    lr = self.schedule(step)
    groups = param_groups(params)

    def scale(u, group):
      mult = self.multipliers[group]
      if group == "backbone" and self.backbone_frozen_steps:
        mult = jnp.where(step < self.backbone_frozen_steps, 0.0, mult)
      return u * (-(lr * mult))

    return jax.tree_util.tree_map(scale, direction, groups), opt_state


def make_optimizer(cfg, total_steps: int) -> Optimizer:
  """The :class:`Optimizer` of ``config.optim`` for a run of
  ``total_steps`` iterations."""
  sched = make_schedule(cfg, total_steps)
  tx = _direction(cfg)
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  mults = {"backbone": cfg.backbone_lr_mult, "head": cfg.head_lr_mult,
           "method": cfg.method_lr_mult}
  return Optimizer(tx=tx, schedule=sched, multipliers=mults,
                   backbone_frozen_steps=int(cfg.get("backbone_frozen_steps", 0)))
