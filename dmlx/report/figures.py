"""Figures of a trained run, written as PNG files.

Pure functions: each takes plain Python / NumPy data, writes one PNG
atomically (to ``path + '.tmp'``, then ``os.replace``) and returns ``path``.
Matplotlib is imported lazily inside the functions, with the non-interactive
'Agg' backend, so importing :mod:`dmlx.report` never imports it.

* :func:`recall_curve` -- Recall@K against K (log2 axis), trained vs untrained.
* :func:`training_curves` -- one subplot per scalar of a run's metrics.jsonl.
* :func:`pyplot_agg` and :func:`save_figure` -- the Agg pyplot and the atomic
  PNG write that every figure of :mod:`dmlx.report` uses.

The 2-D TSNE (or UMAP) map of embeddings by class is in
:mod:`dmlx.report.projection`, the query / neighbour images in
:mod:`dmlx.report.grid`.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

DPI = 100
MAX_CURVES = 8

_RECALL_KEY = re.compile(r"(?:^|/)recall@(\d+)$")


# ----------------------------------------------------------------- helpers --


def pyplot_agg() -> Any:
  """Returns ``matplotlib.pyplot`` with the non-interactive Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_figure(fig: Any, path: str, *, dpi: int = DPI) -> str:
  """Saves ``fig`` as a PNG at ``path`` atomically, closes it, returns path.

  The PNG goes to ``path + '.tmp'`` first and is moved over ``path`` with
  ``os.replace``; the temporary file is removed if saving fails. The figure
  is closed whatever happens, so repeated calls do not leak figures.
  """
  plt = pyplot_agg()
  tmp = path + ".tmp"
  try:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  finally:
    plt.close(fig)
  return path


def _is_number(value: Any) -> bool:
  """True for real scalars (int, float, NumPy numbers), False for bools."""
  if isinstance(value, (bool, np.bool_)):
    return False
  return isinstance(value, numbers.Real)


def recall_points(metrics: Mapping[str, Any]) -> list[tuple[int, float]]:
  """(K, Recall@K) pairs of a metrics dict, sorted by K.

  A key counts when it is ``'recall@K'`` or ends in ``'/recall@K'`` (as in
  ``'final/test/embedding/recall@1'``); other keys are ignored.

  Raises:
    ValueError: no recall@K key, or two keys give the same K (e.g. both
      ``'train/recall@1'`` and ``'test/recall@1'``: pass one split's dict).
  """
  found: dict[int, tuple[str, float]] = {}
  for key, value in metrics.items():
    match = _RECALL_KEY.search(str(key))
    if match is None or not _is_number(value):
      continue
    k = int(match.group(1))
    if k in found:
      raise ValueError(
          f"two keys give Recall@{k}: {found[k][0]!r} and {key!r}; pass the "
          "metrics of one split only")
    found[k] = (str(key), float(value))
  if not found:
    raise ValueError(
        "no 'recall@K' key among the metrics; keys are "
        f"{sorted(map(str, metrics))}")
  return [(k, found[k][1]) for k in sorted(found)]


# ------------------------------------------------------------ recall curve --


def recall_curve(trained: Mapping[str, float],
                 untrained: Mapping[str, float] | None,
                 path: str,
                 *,
                 title: str = "") -> str:
  """Plots Recall@K against K (log2 x axis), trained vs untrained.

  Args:
    trained: metrics dict, e.g. ``{"recall@1": 0.3, "recall@2": 0.45,
      "nmi": 0.4}``; K is parsed from the ``recall@K`` keys (a prefix such as
      ``"test/"`` is allowed), other keys are ignored.
    untrained: the same for the untrained (initial) model, or None.
    path: where to write the PNG.
    title: figure title.

  Returns:
    ``path``.

  Raises:
    ValueError: ``trained`` (or a given ``untrained``) has no recall@K key.
  """
  curves = [("trained", recall_points(trained), "tab:blue", "o", "-")]
  if untrained is not None:
    curves.append(
        ("untrained", recall_points(untrained), "tab:gray", "s", "--"))
  plt = pyplot_agg()
  fig, ax = plt.subplots(figsize=(5.0, 3.6))
  all_k: set[int] = set()
  all_v: list[float] = []
  for label, points, colour, marker, style in curves:
    ks = [k for k, _ in points]
    vs = [v for _, v in points]
    all_k.update(ks)
    all_v.extend(vs)
    ax.plot(ks, vs, marker=marker, linestyle=style, color=colour, label=label)
    offset = 7 if label == "trained" else -13
    for k, v in points:
      text = f"{v:.3f}" if abs(v) <= 1.0 else f"{v:.1f}"
      ax.annotate(text, (k, v), textcoords="offset points",
                  xytext=(0, offset), ha="center", fontsize=8, color=colour)
  ks_sorted = sorted(all_k)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks_sorted)
  ax.set_xticklabels([str(k) for k in ks_sorted])
  ax.minorticks_off()
  if len(ks_sorted) == 1:
    ax.set_xlim(ks_sorted[0] / 2, ks_sorted[0] * 2)
  finite = [v for v in all_v if math.isfinite(v)]
  if finite and min(finite) >= 0.0 and max(finite) <= 1.0:
    ax.set_ylim(0.0, 1.08)
  ax.set_xlabel("K")
  ax.set_ylabel("Recall@K")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right", fontsize=9)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return save_figure(fig, path)


# --------------------------------------------------------- training curves --


def _default_keys(series: Mapping[str, list[tuple[float, float]]],
                  order: Sequence[str], max_keys: int) -> list[str]:
  """Loss keys first, then multi-point keys, then single-point keys."""

  def rank(key: str) -> tuple[int, int]:
    leaf = key.rsplit("/", 1)[-1]
    if "loss" in leaf:
      group = 0
    elif len(series[key]) > 1:
      group = 1
    else:
      group = 2
    return group, order.index(key)

  return sorted(order, key=rank)[:max_keys]


def training_curves(records: Sequence[Mapping[str, float]],
                    path: str,
                    *,
                    keys: Sequence[str] | None = None,
                    max_keys: int = MAX_CURVES) -> str:
  """Plots each scalar of a run's metrics.jsonl against step.

  Args:
    records: the parsed lines of ``metrics.jsonl``, each a dict with a
      numeric ``"step"`` and scalar values, e.g. ``{"step": 10, "loss": 1.2}``
      or ``{"step": 50, "test/recall@1": 0.3}``. A key is plotted over the
      records that have it (non-finite values are skipped).
    path: where to write the PNG.
    keys: the keys to plot, one subplot each, in this order. Default: every
      numeric key except ``"step"``; keys whose last ``/`` component contains
      ``"loss"`` first, then keys with several points, then single-point keys
      (each group in order of first appearance), at most ``max_keys``.
    max_keys: cap on the number of default keys (ignored when ``keys`` is
      given).

  Returns:
    ``path``.

  Raises:
    ValueError: no records, no numeric key, a record without a numeric step,
      or a requested key that no record has as a number.
  """
  if not records:
    raise ValueError("no records to plot")
  series: dict[str, list[tuple[float, float]]] = {}
  order: list[str] = []
  for i, record in enumerate(records):
    numeric = {k: v for k, v in record.items()
               if k != "step" and _is_number(v)}
    if not numeric:
      continue
    step = record.get("step")
    if not _is_number(step):
      raise ValueError(
          f"record {i} has no numeric 'step' (keys {sorted(record)})")
    for key, value in numeric.items():
      if key not in series:
        series[key] = []
        order.append(key)
      series[key].append((float(step), float(value)))
  if not series:
    raise ValueError(
        "no numeric key (besides 'step') in the records; first record has "
        f"keys {sorted(records[0])}")
  if keys is None:
    chosen = _default_keys(series, order, max_keys)
  else:
    chosen = list(keys)
    if not chosen:
      raise ValueError("keys is empty")
    missing = [k for k in chosen if k not in series]
    if missing:
      raise ValueError(
          f"keys {missing} are not numeric in any record; numeric keys are "
          f"{order}")

  n = len(chosen)
  ncols = 1 if n == 1 else (2 if n <= 4 else 3)
  nrows = math.ceil(n / ncols)
  plt = pyplot_agg()
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.7 * nrows),
                           squeeze=False)
  flat = axes.ravel()
  for ax, key in zip(flat, chosen):
    points = sorted((s, v) for s, v in series[key] if math.isfinite(v))
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    marker = "o" if len(points) <= 30 else None
    ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2)
    if len(points) == 1:
      ax.annotate(f"{values[0]:.4g}", (steps[0], values[0]),
                  textcoords="offset points", xytext=(0, 6), ha="center",
                  fontsize=8)
    ax.set_title(key, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
  for index, ax in enumerate(flat):
    if index >= n:
      ax.set_visible(False)
    elif index + ncols >= n:  # Nothing below it: label the step axis.
      ax.set_xlabel("step", fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)
