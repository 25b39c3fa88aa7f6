"""Optimisers with per-group learning rates (backbone / head / method).

The seed papers train a pretrained backbone slowly, the new embedding head
faster, and loss parameters (NNGK weights, β, proxies, α_c) at their own
rate; :func:`make_optimizer` builds that from ``config.optim``.
"""
from __future__ import annotations

from typing import Any

import jax
import optax


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


def _base(cfg, lr) -> optax.GradientTransformation:
  if cfg.name == "adam":
    parts = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay else []
    return optax.chain(*parts, optax.adam(lr))
  if cfg.name == "adamw":
    return optax.adamw(lr, weight_decay=cfg.weight_decay)
  if cfg.name == "sgd":
    parts = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay else []
    return optax.chain(*parts, optax.sgd(lr, momentum=cfg.momentum or None))
  raise ValueError(f"Unknown optim.name {cfg.name!r}; expected 'adam', 'adamw' or 'sgd'.")


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """The optax transformation for ``params = {'model':..., 'method':...}``."""
  sched = make_schedule(cfg, total_steps)
  mults = {"backbone": cfg.backbone_lr_mult, "head": cfg.head_lr_mult,
           "method": cfg.method_lr_mult}
  txs = {name: _base(cfg, (lambda s, m=m: sched(s) * m)) for name, m in mults.items()}
  tx = optax.multi_transform(txs, param_groups)
  if cfg.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx
