"""Evaluation: the retrieval table and the named evaluators beside it.

Every evaluation of a network — the untrained baseline, periodic per-layer
curves (Vo & Hays), the end of training and ``launch/evaluate.py`` — embeds
each split once (:func:`evaluate_datasets`: Recall@K, NMI, MAP@R per layer)
and then runs the evaluators ``config.eval.evaluators`` names on an
:class:`~dmlx.methods.base.EvalContext`. An evaluator is
``fn(ctx) -> {name: float}``; one that classifies into the training classes
(``needs_seen_classes``) runs only on a classification split and is skipped
on a zero-shot split, where the test classes have no training examples.

``'auto'`` (the default) means the method's own evaluators and
``nearest_neighbour``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from dmlx import eval as dmlx_eval
from dmlx import registry
from dmlx.data.base import Dataset
from dmlx.methods.base import EvalContext
from dmlx.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """``fn(EvalContext) -> dict[str, float]`` (or its import path) and
  whether it needs the test classes to be the training classes."""
  fn: Callable[[EvalContext], dict] | str
  needs_seen_classes: bool = False

  def __call__(self, ctx: EvalContext) -> dict:
    fn = registry.import_target(self.fn) if isinstance(self.fn, str) else self.fn
    return fn(ctx)


def nearest_neighbour(ctx: EvalContext) -> dict:
  """1-NN accuracy of the test images against the training set: the
  embedding's own classifier on a classification split (NNGK's and Magnet's
  comparison)."""
  return {"1nn_accuracy": float(dmlx_eval.knn_accuracy(
      ctx.embed("embedding"), ctx.train.labels,
      ctx.test_features["embedding"], ctx.test.labels, k=1))}


def few_shot(ctx: EvalContext) -> dict:
  """N-way K-shot accuracy (± its 95% interval) of the embedding on
  ``config.eval.few_shot``'s seeded episodes of the test classes (Lake et
  al. 2015's one-shot task; Snell et al. 2017's class means with
  ``classifier='prototype'``), also within ``group`` when set."""
  from dmlx.eval import few_shot as few_shot_lib  # pylint: disable=g-import-not-at-top
  cfg = ctx.config.eval.few_shot
  metric = "cosine" if ctx.config.eval.get("l2_normalise", False) else "l2"
  tag = f"fewshot_{cfg.ways}way{cfg.shots}shot"
  out = {}
  for name, groups in few_shot_groups(cfg, ctx.test).items():
    episodes = few_shot_lib.make_episodes(
        ctx.test.labels, n_way=cfg.ways, k_shot=cfg.shots, n_query=cfg.queries,
        episodes=cfg.episodes, seed=cfg.seed, groups=groups)
    result = few_shot_lib.few_shot_accuracy(
        ctx.test_features["embedding"], ctx.test.labels, episodes,
        classifier=cfg.classifier, metric=metric)
    key = tag + (f"_within_{name}" if name else "")
    out[key], out[key + "_ci95"] = result.accuracy, result.ci95
    ctx.log(f"few-shot{' within ' + name if name else ''}: {result}")
  return out


def few_shot_groups(cfg, test: Dataset) -> dict[str, np.ndarray | None]:
  """``{'': None}`` (episodes over all test classes), plus ``{group:
  attribute}`` when ``eval.few_shot.group`` names one.

  Raises:
    ValueError: ``group`` is not an attribute of the test set."""
  out: dict[str, np.ndarray | None] = {"": None}
  if cfg.group:
    if cfg.group not in test.attributes:
      raise ValueError(f"config.eval.few_shot.group={cfg.group!r} is not an "
                       f"attribute of the test set; it has "
                       f"{sorted(test.attributes) or 'none'}.")
    out[cfg.group] = np.asarray(test.attributes[cfg.group])
  return out


def check_few_shot(eval_config, test: Dataset) -> None:
  """Fails before training when ``config.eval.few_shot`` cannot be drawn
  from ``test`` (too few classes with enough images, a missing group)."""
  cfg = eval_config.few_shot
  if not cfg.ways:
    return
  from dmlx.eval import few_shot as few_shot_lib  # pylint: disable=g-import-not-at-top
  for name, groups in few_shot_groups(cfg, test).items():
    try:
      few_shot_lib.make_episodes(test.labels, n_way=cfg.ways, k_shot=cfg.shots,
                                 n_query=cfg.queries, episodes=1, seed=cfg.seed,
                                 groups=groups)
    except ValueError as e:
      raise ValueError(f"config.eval.few_shot (ways={cfg.ways}, shots={cfg.shots}, "
                       f"queries={cfg.queries}{', group ' + name if name else ''}) "
                       f"on the test set: {e}") from e


EVALUATORS = registry.Registry("eval.evaluators", {
    "nearest_neighbour": Evaluator(nearest_neighbour, needs_seen_classes=True),
    "loss_classifier": Evaluator("dmlx.methods.loss:evaluate_classifier",
                                 needs_seen_classes=True),
    "nngk_classifier": Evaluator("dmlx.methods.nngk:evaluate_classifier",
                                 needs_seen_classes=True),
    "magnet_classifier": Evaluator("dmlx.methods.magnet:evaluate_classifier",
                                   needs_seen_classes=True),
    "mic_concatenation": Evaluator("dmlx.methods.mic:evaluate_concatenation"),
    "dmlda_densities": Evaluator("dmlx.methods.dmlda:evaluate_densities"),
    "few_shot": Evaluator(few_shot),
})


def names(eval_config: Any, method: Any) -> tuple[str, ...]:
  """The evaluators of ``config.eval.evaluators`` (``'auto'``: the method's
  own, then ``nearest_neighbour``), checked against the registry."""
  spec = eval_config.evaluators
  if isinstance(spec, str):
    spec = tuple(s.strip() for s in spec.split(",") if s.strip())
  out = []
  for name in spec:
    out.extend((*method.evaluators, "nearest_neighbour") if name == "auto"
               else (name,))
  few = eval_config.get("few_shot")
  if few is not None and few.ways:
    _check_few_shot_settings(few)
    out.append("few_shot")
  out = tuple(dict.fromkeys(out))
  for name in out:
    EVALUATORS.canonical(name)
  return out


def _check_few_shot_settings(cfg) -> None:
  for key, low in (("ways", 2), ("shots", 1), ("queries", 1), ("episodes", 1)):
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f"config.eval.few_shot.{key} must be an integer >= {low}, "
                       f"got {value!r}.")
  if cfg.classifier not in ("nearest", "prototype"):
    raise ValueError(f"config.eval.few_shot.classifier must be 'nearest' or "
                     f"'prototype', got {cfg.classifier!r}.")


def run_evaluators(evaluator_names: tuple[str, ...], ctx: EvalContext) -> dict:
  """Runs each evaluator (those needing seen classes only when
  ``ctx.seen_classes``) and merges their results."""
  out: dict[str, float] = {}
  for name in evaluator_names:
    evaluator = EVALUATORS.get(name)
    if evaluator.needs_seen_classes and not ctx.seen_classes:
      continue
    out.update(evaluator(ctx))
  return out


def parse_layers(layers: str | tuple[str, ...]) -> tuple[str, ...]:
  """``'pool5_3,fc6'`` → ``('pool5_3', 'fc6')``."""
  if isinstance(layers, str):
    layers = tuple(s.strip() for s in layers.split(",") if s.strip())
  if not layers:
    raise ValueError("eval.layers is empty; name at least one layer, e.g. 'embedding'.")
  return tuple(layers)


def subsample(ds: Dataset, max_examples: int, seed: int = 0) -> Dataset:
  """At most ``max_examples`` examples of ``ds`` (all if 0 or fewer exist)."""
  if not max_examples or len(ds) <= max_examples:
    return ds
  index = np.sort(np.random.default_rng(seed).choice(len(ds), max_examples, replace=False))
  return ds.subset(index, relabel=False)


def evaluate_features(features: dict[str, np.ndarray], labels: np.ndarray,
                      eval_cfg) -> dict[str, dict[str, float]]:
  """``{layer: {'recall@1': ..., 'nmi': ..., 'map@r': ...}}``; on unit
  features (cosine neighbours) when ``eval.l2_normalise``."""
  unit = bool(eval_cfg.get("l2_normalise", False))

  def prepare(f):
    if not unit:
      return f
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

  return {layer: dmlx_eval.evaluate_retrieval(
      prepare(f), labels, ks=tuple(eval_cfg.ks), metrics=tuple(eval_cfg.metrics))
          for layer, f in features.items()}


def evaluate_datasets(feature_fn: Callable, variables: Any, mesh,
                      datasets: dict[str, Dataset], eval_cfg,
                      layers: tuple[str, ...]
                      ) -> tuple[dict[str, dict[str, dict[str, float]]], dict]:
  """Embeds each dataset at ``layers`` and evaluates every layer.

  Returns ``({split: {layer: metrics}}, {split: {layer: features}})``."""
  results, feats = {}, {}
  for split, ds in datasets.items():
    feats[split] = step_lib.extract_features(feature_fn, variables, ds.images,
                                             mesh, eval_cfg.batch_size, layers)
    results[split] = evaluate_features(feats[split], ds.labels, eval_cfg)
  return results, feats


def flatten(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
  """``{split: {layer: {m: v}}}`` → ``{'split/layer/m': v}`` for logging."""
  return {f"{s}/{l}/{m}": v for s, layers in results.items()
          for l, ms in layers.items() for m, v in ms.items()}
