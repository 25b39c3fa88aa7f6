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
  out = tuple(dict.fromkeys(out))
  for name in out:
    EVALUATORS.canonical(name)
  return out


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
