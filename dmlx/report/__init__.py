"""Figures of a trained run, written as PNG files.

``recall_curve`` (Recall@K vs K), ``training_curves`` (metrics.jsonl scalars
vs step), ``embedding_map`` (2-D TSNE/UMAP map by class; ``project_2d`` is
its projection step) and ``retrieval_grid`` (queries and their neighbours).
Importing this package does not import matplotlib; the functions do, with
the Agg backend.
"""
from dmlx.report.projection import embedding_map
from dmlx.report.projection import project_2d
from dmlx.report.figures import recall_curve
from dmlx.report.figures import training_curves
from dmlx.report.grid import retrieval_grid

__all__ = [
    "embedding_map",
    "project_2d",
    "recall_curve",
    "retrieval_grid",
    "training_curves",
]
