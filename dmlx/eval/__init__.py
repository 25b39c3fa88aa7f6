"""Evaluation of embeddings: Recall@K, NMI, MAP@R, k-NN accuracy, tables."""
from dmlx.eval.metrics import evaluate_retrieval
from dmlx.eval.metrics import format_table
from dmlx.eval.metrics import knn_accuracy
from dmlx.eval.metrics import map_at_r
from dmlx.eval.metrics import nmi
from dmlx.eval.metrics import r_precision
from dmlx.eval.metrics import recall_at_k

__all__ = [
    "evaluate_retrieval",
    "format_table",
    "knn_accuracy",
    "map_at_r",
    "nmi",
    "r_precision",
    "recall_at_k",
]
