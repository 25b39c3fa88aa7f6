"""The figures of a finished run, written into its work directory
(``config.eval.report``): what the run did, to look at.

- ``recall_at_k.png``: Recall@K of the trained network next to the untrained one;
- ``training_curves.png``: the logged loss and metrics over steps (``metrics.jsonl``);
- ``embedding_map.png``: a 2-D map (t-SNE, or UMAP where installed) of the
  test embeddings, coloured by class;
- ``retrieval.png``: test queries (a seeded choice) with their nearest test
  images, outlined green / red for the right / wrong class.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

NAMES = ("recall_at_k.png", "training_curves.png", "embedding_map.png",
         "retrieval.png")


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write(workdir: str, final: dict, test_images: np.ndarray, test_labels: np.ndarray,
          test_features: np.ndarray, *, class_names=None, metric: str = "l2",
          seed: int = 0, queries: int = 8, k: int = 6,
          map_method: str = "tsne") -> list[str]:
  """Writes the figures (see the module docstring); returns their paths.

  ``final`` is the run's ``final_metrics.json`` content; ``test_features``
  the ``[N, D]`` embedding of ``test_images``."""
  from dmlx import report  # pylint: disable=g-import-not-at-top
  from dmlx.index import knn  # pylint: disable=g-import-not-at-top
  paths = []
  untrained = (final.get("untrained") or {}).get("test", {}).get("embedding")
  paths.append(report.recall_curve(final["trained"]["test"]["embedding"], untrained,
                                   os.path.join(workdir, NAMES[0]),
                                   title=f"test classes, step {final.get('steps', '')}"))
  records = [r for r in _records(workdir) if len(r) > 1]
  if records:
    paths.append(report.training_curves(records, os.path.join(workdir, NAMES[1])))
  paths.append(report.embedding_map(test_features, test_labels,
                                    os.path.join(workdir, NAMES[2]), method=map_method,
                                    seed=seed, class_names=class_names,
                                    title="test embeddings"))
  feats = np.asarray(test_features, np.float32)
  if metric == "cosine":
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
  rows = np.sort(np.random.default_rng(seed).choice(len(feats), min(queries, len(feats)),
                                                     replace=False))
  k = min(k, len(feats) - 1)
  if k >= 1:
    dist, ids = knn(feats[rows], feats, k + 1)
    keep = ids != rows[:, None]                   # drop each query itself
    ids = np.stack([i[m][:k] for i, m in zip(ids, keep)])
    dist = np.stack([d[m][:k] for d, m in zip(dist, keep)])
    paths.append(report.retrieval_grid(
        test_images[rows], test_images[ids], os.path.join(workdir, NAMES[3]),
        correct=test_labels[ids] == test_labels[rows][:, None], distances=dist))
  return paths


def write_run(run: Any, final: dict, test_features: np.ndarray) -> list[str]:
  """:func:`write` for a :class:`dmlx.train.run.Run` at the end of training
  (images shown as their files look: Omniglot's strokes dark on white)."""
  from dmlx.inference import inputs  # pylint: disable=g-import-not-at-top
  images = run.test.images
  if inputs.DecodeOptions.from_data_config(run.data_config, images.shape[-1]).invert:
    images = 255 - images
  return write(run.workdir, final, images, run.test.labels, test_features,
               class_names=run.test.class_names,
               metric="cosine" if run.config.eval.get("l2_normalise", False) else "l2",
               seed=run.config.seed)
