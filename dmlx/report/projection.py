"""2-D map of embeddings coloured by class, written as a PNG file.

* :func:`project_2d` -- seeded subsample (:func:`subsample_indices`) and 2-D
  projection of embeddings: TSNE (scikit-learn), or UMAP when ``umap``
  imports.
* :func:`embedding_map` -- the projection drawn as a scatter plot, one
  colour per class (:func:`class_colours`), with a legend for up to
  ``MAX_LEGEND_CLASSES`` classes.

Like the other figures of :mod:`dmlx.report` (see
:mod:`dmlx.report.figures`), the PNG is written atomically and matplotlib,
scikit-learn and umap are imported lazily inside the functions.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from dmlx.report.figures import pyplot_agg
from dmlx.report.figures import save_figure

MAX_LEGEND_CLASSES = 20


def _umap_module() -> Any | None:
  try:
    import umap  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return umap


def _check_method(method: str) -> Callable[[np.ndarray, int], np.ndarray]:
  """The projection function for ``method``; ValueError if unavailable."""
  if method == "tsne":
    return _tsne
  if method == "umap":
    if _umap_module() is None:
      raise ValueError(
          "method 'umap' needs the umap-learn package (import umap), which "
          "is not installed; use method='tsne'")
    return _umap
  raise ValueError(f"unknown method {method!r}; use 'tsne' or 'umap'")


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
  n = x.shape[0]
  perplexity = min(30.0, (n - 1) / 3.0)
  tsne = TSNE(n_components=2, init="pca", perplexity=perplexity,
              random_state=seed, learning_rate="auto")
  return tsne.fit_transform(x)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
  umap = _umap_module()
  n = x.shape[0]
  reducer = umap.UMAP(n_components=2, random_state=seed,
                      n_neighbors=max(2, min(15, n - 1)))
  return np.asarray(reducer.fit_transform(x))


def _check_embeddings(embeddings: Any,
                      labels: Any | None = None) -> np.ndarray:
  x = np.asarray(embeddings)
  if x.ndim != 2:
    raise ValueError(
        f"embeddings must be 2-D [N, D], got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(
      x.dtype, np.complexfloating):
    raise ValueError(f"embeddings must be real numbers, got dtype {x.dtype}")
  if x.shape[0] < 4:
    raise ValueError(
        f"need at least 4 embeddings for a 2-D map, got {x.shape[0]}")
  if x.shape[1] < 1:
    raise ValueError(f"embeddings have no dimensions: shape {x.shape}")
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.all(np.isfinite(x), axis=1)))
    raise ValueError(f"embeddings have non-finite values in {bad} rows")
  if labels is not None:
    y = np.asarray(labels)
    if y.ndim != 1:
      raise ValueError(f"labels must be 1-D [N], got shape {y.shape}")
    if y.shape[0] != x.shape[0]:
      raise ValueError(
          f"{x.shape[0]} embeddings but {y.shape[0]} labels; lengths must "
          "match")
  return x


def subsample_indices(n: int, max_points: int, seed: int) -> np.ndarray:
  """Sorted indices of at most ``max_points`` of ``n`` items, seeded."""
  if max_points < 1:
    raise ValueError(f"max_points must be >= 1, got {max_points}")
  if n <= max_points:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size=max_points, replace=False))


def project_2d(embeddings: np.ndarray,
               method: str = "tsne",
               max_points: int = 2000,
               seed: int = 0,
               *,
               threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
  """Projects embeddings to 2-D after a seeded subsample.

  Args:
    embeddings: [N, D] finite real array, N >= 4.
    method: ``'tsne'`` (scikit-learn, ``init='pca'``, perplexity
      ``min(30, (n - 1) / 3)``, ``random_state=seed``) or ``'umap'`` (only
      when ``umap`` imports).
    max_points: at most this many rows are kept (uniformly at random without
      replacement, seeded; all rows when N <= max_points).
    seed: seed of the subsample and of the projection.
    threads: BLAS/OpenMP threads of the projection (``threadpoolctl``);
      None leaves the libraries' default. One thread by default: the result
      is then reproducible, and OpenMP threads on a machine whose cores are
      busy made TSNE of 200 points 5-10 times slower here.

  Returns:
    ``(coords, kept)``: coords [n, 2] float64, kept [n] sorted indices into
    ``embeddings`` of the rows projected (``coords[i]`` is row ``kept[i]``).

  Raises:
    ValueError: unknown or unavailable method, bad shape, non-finite values.
  """
  project = _check_method(method)
  x = _check_embeddings(embeddings)
  kept = subsample_indices(x.shape[0], max_points, seed)
  if kept.shape[0] < 4:
    raise ValueError(f"max_points={max_points} keeps fewer than 4 points")
  sub = x[kept].astype(np.float64)
  if sub.shape[1] == 1:  # PCA init needs 2 features; the map is unchanged.
    sub = np.concatenate([sub, np.zeros_like(sub)], axis=1)
  if threads is None:
    coords = project(sub, seed)
  else:
    from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel
    with threadpool_limits(limits=threads):
      coords = project(sub, seed)
  return np.asarray(coords, dtype=np.float64), kept


def class_colours(n_classes: int) -> list[tuple[float, float, float, float]]:
  """Categorical colours: tab10 up to 10 classes, else tab20 (cycling)."""
  plt = pyplot_agg()
  cmap = plt.get_cmap("tab10" if n_classes <= 10 else "tab20")
  size = cmap.N
  return [cmap(i % size) for i in range(n_classes)]


def embedding_map(embeddings: np.ndarray,
                  labels: np.ndarray,
                  path: str,
                  *,
                  method: str = "tsne",
                  max_points: int = 2000,
                  seed: int = 0,
                  class_names: Sequence[str] | None = None,
                  title: str = "",
                  threads: int | None = 1) -> str:
  """Draws a 2-D map of embeddings coloured by class.

  Args:
    embeddings: [N, D] finite real array.
    labels: [N] class labels (any sortable values).
    path: where to write the PNG.
    method: ``'tsne'`` or ``'umap'`` (see :func:`project_2d`).
    max_points: the map shows at most this many points (seeded subsample).
    seed: seed of the subsample and of the projection.
    class_names: legend names, indexed by label value (labels must then be
      integers in ``[0, len(class_names))``). Default: the label values.
    title: figure title; default names the method and point/class counts.
    threads: threads of the projection (see :func:`project_2d`).

  Returns:
    ``path``.

  Raises:
    ValueError: unknown or unavailable method, shapes that are not [N, D]
      and [N], non-finite embeddings, labels outside ``class_names``.
  """
  _check_method(method)
  _check_embeddings(embeddings, labels)
  y_all = np.asarray(labels)
  if class_names is not None:
    if not np.issubdtype(y_all.dtype, np.integer):
      raise ValueError(
          f"class_names needs integer labels, got dtype {y_all.dtype}")
    if y_all.min() < 0 or y_all.max() >= len(class_names):
      raise ValueError(
          f"labels span [{y_all.min()}, {y_all.max()}] but there are "
          f"{len(class_names)} class_names")
  coords, kept = project_2d(embeddings, method, max_points, seed,
                            threads=threads)
  y = y_all[kept]
  classes = np.unique(y)
  colours = class_colours(len(classes))
  plt = pyplot_agg()
  with_legend = len(classes) <= MAX_LEGEND_CLASSES
  fig, ax = plt.subplots(figsize=(7.0 if with_legend else 6.0, 6.0))
  size = 12.0 if coords.shape[0] <= 500 else 5.0
  for colour, cls in zip(colours, classes):
    mask = y == cls
    name = str(class_names[int(cls)]) if class_names is not None else str(cls)
    ax.scatter(coords[mask, 0], coords[mask, 1], s=size, color=colour,
               label=name, linewidths=0, alpha=0.85)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title or (f"{method.upper()}: {coords.shape[0]} points, "
                         f"{len(classes)} classes"), fontsize=10)
  if with_legend:
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
              markerscale=1.5, frameon=False)
  fig.tight_layout()
  return save_figure(fig, path)
