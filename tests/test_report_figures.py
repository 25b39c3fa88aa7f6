"""dmlx.report: PNG figures of a run (recall curve, training curves, map, grid)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dmlx.report import embedding_map
from dmlx.report import project_2d
from dmlx.report import recall_curve
from dmlx.report import retrieval_grid
from dmlx.report import training_curves
from dmlx.report.projection import subsample_indices

TRAINED = {"recall@1": 0.3, "recall@2": 0.45, "recall@4": 0.6,
           "recall@8": 0.78, "nmi": 0.4, "map@r": 0.07}
UNTRAINED = {"recall@1": 0.1, "recall@2": 0.18, "recall@4": 0.3,
             "recall@8": 0.45, "nmi": 0.2}

RECORDS = [
    {"step": 10, "loss": 1.2, "lr": 0.001, "steps_per_sec": 3.1},
    {"step": 20, "loss": 0.9, "lr": 0.001, "steps_per_sec": 3.3},
    {"step": 30, "loss": 0.7, "lr": 0.0005, "steps_per_sec": 3.2},
    {"step": 30, "test/recall@1": 0.3, "test/nmi": 0.4},
    {"step": 40, "loss": 0.6, "lr": 0.0005, "steps_per_sec": 3.0},
    {"step": 60, "test/recall@1": 0.4, "test/nmi": 0.5, "note": "text"},
]


def _png(path, min_width=100):
  """Checks ``path`` is a non-empty PNG with no '.tmp' left; returns RGB."""
  assert os.path.getsize(path) > 0
  assert not os.path.exists(path + ".tmp")
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.width > min_width and image.height > 50
    return np.asarray(image.convert("RGB")).astype(int)


def _no_open_figures():
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt.get_fignums() == []


def _blobs(n_classes, per_class, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(n_classes), per_class)
  centres = rng.normal(scale=4.0, size=(n_classes, dim))
  x = centres[labels] + rng.normal(size=(labels.size, dim))
  return x.astype(np.float32), labels


def test_import_does_not_import_matplotlib():
  code = ("import sys, dmlx.report; "
          "sys.exit(int('matplotlib' in sys.modules or 'sklearn' in "
          "sys.modules))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert subprocess.run([sys.executable, "-c", code], cwd=root,
                        check=False).returncode == 0


# ------------------------------------------------------------ recall curve --


def test_recall_curve_writes_png(tmp_path):
  path = str(tmp_path / "recall.png")
  assert recall_curve(TRAINED, UNTRAINED, path, title="test") == path
  _png(path)
  assert _no_open_figures()
  only = str(tmp_path / "recall_trained_only.png")
  prefixed = {"final/test/embedding/recall@" + k.split("@")[1]: v
              for k, v in TRAINED.items() if k.startswith("recall@")}
  assert recall_curve(prefixed, None, only) == only
  _png(only)


def test_recall_curve_without_recall_keys_names_the_keys(tmp_path):
  with pytest.raises(ValueError, match="nmi"):
    recall_curve({"nmi": 0.4, "map@r": 0.1}, None, str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match="recall"):
    recall_curve(TRAINED, {"nmi": 0.2}, str(tmp_path / "y.png"))
  # Two splits in one dict give Recall@1 twice: ambiguous.
  with pytest.raises(ValueError, match="one split"):
    recall_curve({"train/recall@1": 0.5, "test/recall@1": 0.4}, None,
                 str(tmp_path / "z.png"))
  assert not os.listdir(tmp_path)


# --------------------------------------------------------- training curves --


def test_training_curves_default_and_chosen_keys(tmp_path):
  path = str(tmp_path / "curves.png")
  assert training_curves(RECORDS, path) == path
  full = _png(path)
  one = str(tmp_path / "one.png")
  training_curves(RECORDS, one, keys=["test/recall@1"])
  single = _png(one)
  # Five numeric keys make a grid: a larger image than one subplot.
  assert full.shape[0] * full.shape[1] > single.shape[0] * single.shape[1]
  assert _no_open_figures()


def test_training_curves_errors(tmp_path):
  path = str(tmp_path / "c.png")
  with pytest.raises(ValueError, match="no records"):
    training_curves([], path)
  with pytest.raises(ValueError, match="numeric"):
    training_curves([{"step": 1, "note": "x"}], path)
  with pytest.raises(ValueError, match="missing_key"):
    training_curves(RECORDS, path, keys=["loss", "missing_key"])
  assert not os.listdir(tmp_path)


def test_training_curves_on_a_real_run_if_present(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  run = "/work/dmlx_runs/omniglot/test/margin/seed0/metrics.jsonl"
  if not os.path.exists(run):
    pytest.skip("no stored run")
  with open(run) as f:
    records = [json.loads(line) for line in f if line.strip()]
  path = training_curves(records, str(tmp_path / "run.png"))
  _png(path, min_width=500)
  assert os.path.getsize(path) < 500_000


# ----------------------------------------------------------- embedding map --


def test_project_2d_is_deterministic_and_subsamples():
  x, _ = _blobs(5, 30)  # 150 points
  coords, kept = project_2d(x, "tsne", max_points=40, seed=3)
  assert coords.shape == (40, 2) and kept.shape == (40,)
  assert np.all(np.diff(kept) > 0) and kept.max() < 150
  assert np.all(np.isfinite(coords))
  again, kept_again = project_2d(x, "tsne", max_points=40, seed=3)
  np.testing.assert_array_equal(kept, kept_again)
  np.testing.assert_array_equal(coords, again)
  # Another seed keeps other rows; few enough rows are all kept, in order.
  assert not np.array_equal(subsample_indices(150, 40, 4), kept)
  np.testing.assert_array_equal(subsample_indices(30, 40, 0), np.arange(30))


def test_embedding_map_writes_png(tmp_path):
  x, y = _blobs(4, 25)
  path = str(tmp_path / "map.png")
  out = embedding_map(x, y, path, max_points=40, seed=1,
                      class_names=["a", "b", "c", "d"], title="blobs")
  assert out == path
  _png(path)
  assert _no_open_figures()


def test_embedding_map_many_classes_without_legend(tmp_path):
  x, y = _blobs(30, 3)  # > 20 classes: tab20 cycles, no legend
  path = embedding_map(x, y, str(tmp_path / "many.png"), max_points=60)
  _png(path)


def test_embedding_map_errors(tmp_path):
  x, y = _blobs(3, 10)
  path = str(tmp_path / "m.png")
  with pytest.raises(ValueError, match="pca_magic"):
    embedding_map(x, y, path, method="pca_magic")
  with pytest.raises(ValueError, match="30 embeddings but 29 labels"):
    embedding_map(x, y[:-1], path)
  with pytest.raises(ValueError, match="2-D"):
    embedding_map(x[:, 0], y, path)
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    embedding_map(bad, y, path)
  with pytest.raises(ValueError, match="class_names"):
    embedding_map(x, y, path, class_names=["only", "two"])
  try:
    import umap  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(ValueError, match="umap"):
      project_2d(x, "umap")
  assert not os.listdir(tmp_path)


# ---------------------------------------------------------- retrieval grid --


def _grey_batch(q, k, size=20, seed=0):
  rng = np.random.default_rng(seed)
  queries = rng.integers(0, 256, size=(q, size, size, 1), dtype=np.uint8)
  neighbours = rng.integers(0, 256, size=(q, k, size, size, 1),
                            dtype=np.uint8)
  return queries, neighbours


def _count_green(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  return int(np.sum((g >= 140) & (r <= 60) & (b <= 60)))


def _count_red(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  return int(np.sum((r >= 160) & (g <= 60) & (b <= 60)))


def test_retrieval_grid_size_grows_with_k_and_q(tmp_path):
  sizes = {}
  for q, k in [(2, 3), (2, 6), (4, 3)]:
    queries, neighbours = _grey_batch(q, k)
    path = retrieval_grid(queries, neighbours, str(tmp_path / f"{q}_{k}.png"))
    rgb = _png(path)
    sizes[(q, k)] = (rgb.shape[1], rgb.shape[0])  # (width, height)
  assert sizes[(2, 6)][0] > sizes[(2, 3)][0]
  assert sizes[(4, 3)][1] > sizes[(2, 3)][1]
  assert _no_open_figures()


def test_retrieval_grid_outline_colours(tmp_path):
  # Grey images: every green or red pixel is an outline.
  queries, neighbours = _grey_batch(3, 4)
  mixed = np.array([[True, False, True, False]] * 3)
  rgb = _png(retrieval_grid(queries, neighbours, str(tmp_path / "mixed.png"),
                            correct=mixed, distances=np.ones((3, 4)) * 0.5,
                            query_titles=["q0", "q1", "q2"],
                            neighbour_titles=[["a", "b", "c", "d"]] * 3))
  assert _count_green(rgb) > 100 and _count_red(rgb) > 100
  rgb = _png(retrieval_grid(queries, neighbours, str(tmp_path / "good.png"),
                            correct=np.ones((3, 4), bool)))
  assert _count_green(rgb) > 100 and _count_red(rgb) == 0
  rgb = _png(retrieval_grid(queries, neighbours, str(tmp_path / "none.png")))
  assert _count_green(rgb) == 0 and _count_red(rgb) == 0


def test_retrieval_grid_colour_images(tmp_path):
  rng = np.random.default_rng(1)
  queries = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
  neighbours = rng.integers(0, 256, size=(2, 3, 16, 16, 3), dtype=np.uint8)
  _png(retrieval_grid(queries, neighbours, str(tmp_path / "rgb.png"),
                      correct=np.array([[True, False, True]] * 2)))


def test_retrieval_grid_errors(tmp_path):
  queries, neighbours = _grey_batch(3, 4)
  path = str(tmp_path / "g.png")
  with pytest.raises(ValueError, match="Q = 3 but neighbour_images has Q = 2"):
    retrieval_grid(queries, neighbours[:2], path)
  with pytest.raises(ValueError, match="correct"):
    retrieval_grid(queries, neighbours, path, correct=np.ones((3, 5), bool))
  with pytest.raises(ValueError, match="distances"):
    retrieval_grid(queries, neighbours, path, distances=np.ones((2, 4)))
  with pytest.raises(ValueError, match="channels"):
    retrieval_grid(np.zeros((3, 8, 8, 2), np.uint8),
                   np.zeros((3, 4, 8, 8, 2), np.uint8), path)
  with pytest.raises(ValueError, match="must match"):
    retrieval_grid(queries, neighbours[:, :, :10], path)
  with pytest.raises(ValueError, match="query_titles"):
    retrieval_grid(queries, neighbours, path, query_titles=["a"])
  assert not os.listdir(tmp_path)
