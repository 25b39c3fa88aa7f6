"""Retrieval grid: each query image followed by its nearest neighbours.

Matplotlib is imported lazily (Agg backend) through
:mod:`dmlx.report.figures`; the PNG is written atomically.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from dmlx.report.figures import pyplot_agg
from dmlx.report.figures import save_figure

QUERY_COLOUR = "#0000ff"
CORRECT_COLOUR = "#00b400"
WRONG_COLOUR = "#e00000"
OUTLINE_WIDTH = 3.0  # points; about 4 px at 100 dpi
CELL_INCHES = 1.25


def _as_images(images: Any, name: str, batch_dims: int) -> np.ndarray:
  """Checks dtype/shape and returns [..., H, W, C] with C in {1, 3}.

  ``batch_dims`` leading axes ([Q] or [Q, k]) precede H, W and C; an array
  with no channel axis is taken as grey. Floats must lie in [0, 1].
  """
  x = np.asarray(images)
  if x.ndim == batch_dims + 2:  # grey without a channel axis
    x = x[..., None]
  layout = "[Q, H, W, C]" if batch_dims == 1 else "[Q, k, H, W, C]"
  if x.ndim != batch_dims + 3:
    raise ValueError(
        f"{name} must be {layout} with C = 1 or 3, got shape "
        f"{np.shape(images)}")
  if x.shape[-1] not in (1, 3):
    raise ValueError(
        f"{name} must have 1 or 3 channels (last axis), got shape {x.shape}")
  if x.shape[-3] < 1 or x.shape[-2] < 1:
    raise ValueError(f"{name} has empty images: shape {x.shape}")
  if x.dtype == np.uint8:
    return x
  if np.issubdtype(x.dtype, np.floating):
    if x.size and not (np.all(np.isfinite(x)) and x.min() >= 0.0
                       and x.max() <= 1.0):
      raise ValueError(f"float {name} must lie in [0, 1]")
    return np.round(x * 255.0).astype(np.uint8)
  raise ValueError(f"{name} must be uint8 (or floats in [0, 1]), got dtype "
                   f"{x.dtype}")


def _check_titles(titles: Any, shape: tuple[int, ...], name: str) -> None:
  if titles is None:
    return
  if len(titles) != shape[0]:
    raise ValueError(f"{name} has {len(titles)} entries, expected {shape[0]}")
  if len(shape) == 2:
    for q, row in enumerate(titles):
      if isinstance(row, str) or len(row) != shape[1]:
        raise ValueError(
            f"{name}[{q}] must be a sequence of {shape[1]} titles")


def _show(ax: Any, image: np.ndarray, colour: str | None) -> None:
  """Draws one [H, W, C] uint8 image; outlines it in ``colour`` if given."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
  else:
    ax.imshow(image, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    if colour is None:
      spine.set_visible(False)
    else:
      spine.set_visible(True)
      spine.set_edgecolor(colour)
      spine.set_linewidth(OUTLINE_WIDTH)


def retrieval_grid(query_images: np.ndarray,
                   neighbour_images: np.ndarray,
                   path: str,
                   *,
                   correct: np.ndarray | None = None,
                   query_titles: Sequence[str] | None = None,
                   neighbour_titles: Sequence[Sequence[str]] | None = None,
                   distances: np.ndarray | None = None) -> str:
  """Draws one row per query: the query, then its k nearest neighbours.

  Args:
    query_images: [Q, H, W, C] uint8, C = 1 (grey, drawn with
      ``cmap='gray'``) or 3; [Q, H, W] is taken as grey; floats in [0, 1]
      are accepted too.
    neighbour_images: [Q, k, H, W, C] (same H, W, C as the queries).
    path: where to write the PNG.
    correct: [Q, k] bool; neighbour (q, j) is outlined green when True, red
      when False. None: neighbours are not outlined. Queries are always
      outlined in blue.
    query_titles: Q small titles (default ``'query'``).
    neighbour_titles: [Q][k] small titles (e.g. class names).
    distances: [Q, k] neighbour distances, shown in the neighbour titles.

  Returns:
    ``path``; the image is about ``125 * (k + 1)`` by ``125 * Q`` pixels.

  Raises:
    ValueError: shapes that do not fit together, with the shapes named.
  """
  queries = _as_images(query_images, "query_images", 1)
  neighbours = _as_images(neighbour_images, "neighbour_images", 2)
  n_q = queries.shape[0]
  if n_q < 1:
    raise ValueError("query_images has no queries (Q = 0)")
  if neighbours.shape[0] != n_q:
    raise ValueError(
        f"query_images has Q = {n_q} but neighbour_images has Q = "
        f"{neighbours.shape[0]} (shapes {queries.shape} and "
        f"{neighbours.shape})")
  if neighbours.shape[2:] != queries.shape[1:]:
    raise ValueError(
        f"neighbour images are {neighbours.shape[2:]} but query images are "
        f"{queries.shape[1:]} ([H, W, C] must match)")
  k = neighbours.shape[1]
  if correct is not None:
    correct = np.asarray(correct)
    if correct.shape != (n_q, k):
      raise ValueError(
          f"correct must have shape [Q, k] = {(n_q, k)}, got {correct.shape}")
    correct = correct.astype(bool)
  if distances is not None:
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape != (n_q, k):
      raise ValueError(
          f"distances must have shape [Q, k] = {(n_q, k)}, got "
          f"{distances.shape}")
  _check_titles(query_titles, (n_q,), "query_titles")
  _check_titles(neighbour_titles, (n_q, k), "neighbour_titles")

  plt = pyplot_agg()
  width = CELL_INCHES * (k + 1)
  height = CELL_INCHES * n_q + 0.1
  fig, axes = plt.subplots(n_q, k + 1, squeeze=False,
                           figsize=(width, height))
  for q in range(n_q):
    ax = axes[q, 0]
    _show(ax, queries[q], QUERY_COLOUR)
    ax.set_title(str(query_titles[q]) if query_titles is not None else
                 "query", fontsize=7, color=QUERY_COLOUR)
    for j in range(k):
      ax = axes[q, j + 1]
      colour = None
      if correct is not None:
        colour = CORRECT_COLOUR if correct[q, j] else WRONG_COLOUR
      _show(ax, neighbours[q, j], colour)
      parts = []
      if neighbour_titles is not None:
        parts.append(str(neighbour_titles[q][j]))
      if distances is not None:
        parts.append(f"d={distances[q, j]:.3g}")
      if parts:
        ax.set_title(" ".join(parts), fontsize=7)
  # Margins in inches, so the layout is the same for any Q and k.
  fig.subplots_adjust(left=0.05 / width, right=1 - 0.05 / width,
                      bottom=0.05 / height, top=1 - 0.25 / height,
                      wspace=0.12, hspace=0.3)
  return save_figure(fig, path)
