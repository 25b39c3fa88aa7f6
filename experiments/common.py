"""Shared plumbing for the experiment scripts: load a config file, apply
overrides, train, collect metrics, print tables and write JSON.

Experiments reuse the launcher's machinery (``dmlx.train.loop``) so what they
measure is exactly what ``launch/train.py`` runs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dmlx import eval as dmlx_eval  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_config(path: str, arg: str | None = None):
  """The config of ``configs/<module>.py`` with argument ``arg`` (or of a
  name of :data:`configs.NAMES`)."""
  import configs  # pylint: disable=g-import-not-at-top
  spec = path if path.startswith("configs/") or path in configs.NAMES else (
      os.path.relpath(path, ROOT) if os.path.isabs(path) else path)
  return configs.load(f"{spec}:{arg}" if arg else spec)


def override(config, updates: Mapping[str, Any]):
  """Sets dotted keys (``'train.epochs': 3``); unknown keys are an error.

  ``'method.name'`` switches the method first (its settings at their
  defaults, :func:`dmlx.config.set_method`), then the other keys apply."""
  from dmlx import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  updates = dict(updates)
  name = updates.pop("method.name", None)
  if name is not None and name != config.method.name:
    config_lib.set_method(config, name)
  for key, value in updates.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"Config has no key {key!r}.")
    node[leaf] = value
  return config


def train(config, workdir: str, quiet: bool = True) -> dict:
  """Trains (resuming if ``workdir`` has a checkpoint) and returns the final
  metrics dict of ``dmlx.train.loop.train_and_evaluate`` plus wall time."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  if quiet:
    config = override(config, {"train.progress": False})
  t0 = time.time()
  final = loop.train_and_evaluate(config, workdir)
  final["seconds"] = time.time() - t0
  return final


def table(rows: Mapping[str, Mapping[str, float]], columns=None) -> str:
  """Plain-text table (rows = runs)."""
  return dmlx_eval.format_table(rows, columns)


def mean_std(values, digits: int = 4) -> str:
  """``mean ± std`` of ``values`` with ``digits`` decimals: the value alone
  for one, ``'–'`` for none."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  v = np.asarray(values, np.float64)
  if not v.size:
    return "–"
  return (f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1
          else f"{v.mean():.{digits}f}")


# Classification accuracies a run records under final['method']: NNGK's
# eq. 3, Magnet's kNC and soft kNN, a loss's own classifier, 1-NN.
CLASSIFY = ("nngk_accuracy", "knc_accuracy", "knn_accuracy",
            "classifier_accuracy", "1nn_accuracy")


def finals(folder: str) -> list[tuple[int, dict]]:
  """``[(seed, final_metrics)]`` of every finished ``seed<k>`` run in
  ``folder`` (the layout of ``experiments/real_data.py``), by folder name."""
  out = []
  for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    path = os.path.join(folder, entry, "final_metrics.json")
    if entry.startswith("seed") and os.path.exists(path):
      with open(path) as f:
        out.append((int(entry[4:]), json.load(f)))
  return out


def test_metrics(final: dict) -> dict:
  """A run's test-set metrics of its embedding and its method's own
  (classification accuracies), in one flat dict."""
  return {**final["trained"]["test"]["embedding"], **(final.get("method") or {})}


def save_json(obj: Any, path: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, default=float)
