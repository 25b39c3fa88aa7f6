"""Evaluation of a network's features: retrieval metrics per layer and split.

Used at the end of training, periodically during it (Vo & Hays's per-layer
train/test curves), for the untrained baseline, and by ``launch/evaluate.py``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dmlx import eval as dmlx_eval
from dmlx.data.base import Dataset
from dmlx.train import step as step_lib


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
  """``{layer: {'recall@1': ..., 'nmi': ..., 'map@r': ...}}``."""
  return {layer: dmlx_eval.evaluate_retrieval(
      f, labels, ks=tuple(eval_cfg.ks), metrics=tuple(eval_cfg.metrics))
          for layer, f in features.items()}


def evaluate_datasets(feature_fn: Callable, variables: Any, mesh,
                      datasets: dict[str, Dataset], eval_cfg
                      ) -> tuple[dict[str, dict[str, dict[str, float]]], dict]:
  """Embeds each dataset and evaluates every layer.

  Returns ``({split: {layer: metrics}}, {split: {layer: features}})``."""
  results, feats = {}, {}
  for split, ds in datasets.items():
    feats[split] = step_lib.extract_features(feature_fn, variables, ds.images, mesh,
                                             eval_cfg.batch_size)
    results[split] = evaluate_features(feats[split], ds.labels, eval_cfg)
  return results, feats


def flatten(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
  """``{split: {layer: {m: v}}}`` → ``{'split/layer/m': v}`` for logging."""
  return {f"{s}/{l}/{m}": v for s, layers in results.items()
          for l, ms in layers.items() for m, v in ms.items()}
