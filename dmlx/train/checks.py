"""The run config's values checked before anything is loaded or compiled.

Types are checked where a value is set (ml_collections refuses ``lr='x'``;
``dmlx.settings`` checks each method's settings); this module checks
ranges, choices and shapes of the base keys (:data:`RULES`), so a negative
batch size or a NaN learning rate is an error naming ``config.<key>`` instead
of a failure deep inside JAX, or a run that silently does something else.
Each rule returns what is wrong, or None.
"""
from __future__ import annotations

import math
from typing import Any, Callable

Rule = Callable[[Any], "str | None"]

_GUARDS = ("", "allow", "log", "disallow", "log_explicit", "disallow_explicit")


def _int(low: int, high: int | None = None) -> Rule:
  def rule(v):
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (
        high is not None and v > high):
      return f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    return None
  return rule


def _real(low: float, high: float = math.inf, *, open_low: bool = False,
          open_high: bool = False) -> Rule:
  lo, hi = ("(" if open_low else "["), (")" if open_high or high == math.inf else "]")
  text = f"a finite number in {lo}{low:g}, {high:g}{hi}"

  def rule(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return text
    if v < low or (open_low and v == low) or v > high or (open_high and v == high):
      return text
    return None
  return rule


def _choice(*choices: str) -> Rule:
  return lambda v: None if v in choices else f"one of {list(choices)}"


def _ints(low: int, *, nonempty: bool) -> Rule:
  def rule(v):
    v = tuple(v) if isinstance(v, (tuple, list)) else v
    if not isinstance(v, tuple) or (nonempty and not v) or any(
        isinstance(x, bool) or not isinstance(x, int) or x < low for x in v):
      return f"a {'non-empty ' if nonempty else ''}tuple of integers >= {low}"
    return None
  return rule


def _reals(low: float, *, positive: bool = False, nonempty: bool = True) -> Rule:
  def rule(v):
    v = tuple(v) if isinstance(v, (tuple, list)) else v
    bad = (not isinstance(v, tuple) or (nonempty and not v) or any(
        isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)
        or x < low or (positive and x <= 0) for x in v))
    return (f"a {'non-empty ' if nonempty else ''}tuple of finite numbers "
            f"{'> 0' if positive else f'>= {low:g}'}") if bad else None
  return rule


def _fractions(v) -> str | None:
  v = tuple(v) if isinstance(v, (tuple, list)) else v
  if not isinstance(v, tuple) or any(
      isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1 for x in v):
    return "a tuple of fractions in (0, 1)"
  if list(v) != sorted(v):
    return "increasing"
  return None


def _class_range(v) -> str | None:
  v = tuple(v) if isinstance(v, (tuple, list)) else v
  if v == ():
    return None
  if (not isinstance(v, tuple) or len(v) != 2 or any(
      isinstance(x, bool) or not isinstance(x, int) for x in v) or not 0 <= v[0] < v[1]):
    return "() or (lo, hi) with integers 0 <= lo < hi"
  return None


def _metrics(v) -> str | None:
  known = ("recall", "nmi", "map_r")
  v = tuple(v) if isinstance(v, (tuple, list)) else v
  if not isinstance(v, tuple) or not v or any(m not in known for m in v):
    return f"a non-empty tuple of {list(known)}"
  return None


def _nonempty(v) -> str | None:
  return None if isinstance(v, str) and v.strip() else "a non-empty name"


def _few_shot_ways(v) -> str | None:
  if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v == 1:
    return "0 (off) or an integer >= 2"
  return None


RULES: dict[str, Rule] = {
    "seed": _int(0),
    "data.image_size": _int(1, 4096),
    "data.crop_size": _int(0),
    "data.on_bad_image": _choice("error", "skip"),
    "data.split": _choice("zero_shot", "classification", "by_attribute", "predefined"),
    "data.train_class_fraction": _real(0, 1, open_low=True, open_high=True),
    "data.num_train_classes": _int(0),
    "data.train_fraction": _real(0, 1, open_low=True),
    "data.validation_classes": _int(0),
    "data.classify_fraction": _real(0, 1, open_high=True),
    "data.mean": _reals(-math.inf),
    "data.std": _reals(0, positive=True),
    "data.class_range": _class_range,
    "sampler.classes_per_batch": _int(1),
    "sampler.images_per_class": _int(1),
    "sampler.batch_size": _int(1),
    "model.embedding_dim": _int(0),      # 0: the last layer itself (Vo & Hays NetD)
    "model.fc_layers": _ints(1, nonempty=False),
    "model.scale": _real(0, open_low=True),
    "model.dropout": _real(0, 1, open_high=True),
    "model.aux_embedding_dim": _int(0),
    "model.input_layer": _nonempty,
    "model.dtype": _choice("float32", "bfloat16"),
    "optim.name": _choice("adam", "adamw", "sgd"),
    "optim.lr": _real(0, open_low=True),
    "optim.backbone_lr_mult": _real(0),
    "optim.head_lr_mult": _real(0),
    "optim.method_lr_mult": _real(0),
    "optim.weight_decay": _real(0),
    "optim.method_weight_decay": _real(0),
    "optim.momentum": _real(0, 1, open_high=True),
    "optim.schedule": _choice("constant", "cosine", "step"),
    "optim.warmup_steps": _int(0),
    "optim.decay_boundaries": _fractions,
    "optim.decay_factor": _real(0, open_low=True),
    "optim.grad_clip": _real(0),
    "optim.backbone_frozen_steps": _int(0),
    "train.epochs": _int(1),
    "train.steps_per_epoch": _int(0),
    "train.log_every": _int(0),
    "train.checkpoint_every_steps": _int(0),
    "train.eval_every_epochs": _int(0),
    "train.max_checkpoints": _int(1),
    "train.stop_after_epochs": _int(0),
    "train.transfer_guard": _choice(*_GUARDS),
    "eval.ks": _ints(1, nonempty=True),
    "eval.metrics": _metrics,
    "eval.batch_size": _int(1),
    "eval.train_subset": _int(0),
    "eval.few_shot.ways": _few_shot_ways,
    "eval.few_shot.shots": _int(1),
    "eval.few_shot.queries": _int(1),
    "eval.few_shot.episodes": _int(1, 1_000_000),
    "eval.few_shot.classifier": _choice("nearest", "prototype"),
}


def _get(config: Any, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split("."):
    try:
      if part not in node:
        return False, None
      node = node[part]
    except TypeError:
      return False, None
  return True, node


def check_config(config: Any) -> None:
  """Checks every key of :data:`RULES` that ``config`` has.

  Raises:
    ValueError: ``config.<key> = <value> must be ...`` for the first bad one.
  """
  for key, rule in RULES.items():
    present, value = _get(config, key)
    if not present:
      continue
    problem = rule(value)
    if problem:
      raise ValueError(f"config.{key} = {value!r} must be {problem}.")
  present, crop = _get(config, "data.crop_size")
  if present and crop > config.data.image_size:
    raise ValueError(f"config.data.crop_size = {crop} must be at most "
                     f"config.data.image_size = {config.data.image_size} (0 = no crop).")
