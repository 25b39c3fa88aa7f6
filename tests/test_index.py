"""Tests of dmlx.index: batched FAISS k-NN, approximate indexes, k-means."""
import faiss
import numpy as np
import pytest

from dmlx import index


def _loop_knn(queries, database, k, exclude_self):
  """Plain-loop exact squared-L2 k-NN (float64), reference for the tests."""
  out = []
  for i, q in enumerate(queries):
    d = [(float(((q - x) ** 2).sum()), j) for j, x in enumerate(database)
         if not (exclude_self and j == i)]
    out.append([j for _, j in sorted(d)[:k]])
  return np.array(out)


def test_flat_knn_matches_loop_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(80, 6)).astype(np.float32)
  q = rng.normal(size=(15, 6)).astype(np.float32)
  _, idx = index.knn(q, x, 5)
  np.testing.assert_array_equal(idx, _loop_knn(q, x, 5, False))
  dist, idx = index.knn(x, k=4, exclude_self=True)
  np.testing.assert_array_equal(idx, _loop_knn(x, x, 4, True))
  np.testing.assert_allclose(
      dist[:, 0], ((x - x[idx[:, 0]]) ** 2).sum(1), rtol=1e-5, atol=1e-5)


def test_inner_product_ranks_by_largest_similarity():
  x = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
  sims, idx = index.knn(x[:1], x, 4, metric="ip")
  np.testing.assert_array_equal(idx[0], [0, 1, 2, 3])
  np.testing.assert_allclose(sims[0], [1.0, 0.9, 0.0, -1.0], atol=1e-6)


def test_exclude_self_with_exact_duplicates():
  # Four identical points and one far away. Every duplicate's neighbours must
  # be the *other* duplicates (distance 0), never itself, even when more than
  # k + 1 duplicates tie and the query's own id is not among those returned.
  x = np.array([[0.0], [0.0], [0.0], [0.0], [5.0]], np.float32)
  for k in (1, 2, 3):
    dist, idx = index.knn(x, k=k, exclude_self=True)
    for i in range(4):
      assert i not in idx[i], (k, i, idx[i])
      assert set(idx[i]) <= {0, 1, 2, 3} - {i}
      np.testing.assert_array_equal(dist[i], 0.0)
      assert len(set(idx[i])) == k
    assert 4 not in idx[4]
    np.testing.assert_allclose(dist[4, 0], 25.0)


class _FakeIndex:
  """Returns fixed (k+1)-lists so the drop rule is checked exactly."""
  d, ntotal, metric_type = 1, 3, faiss.METRIC_L2

  def search(self, q, k):
    assert k == 3
    ids = np.array([[2, 0, 1],    # own id 0 present at rank 2 -> drop it
                    [0, 2, 1],    # own id 1 present last -> drop it
                    [0, 1, -1]],  # own id 2 absent -> drop the last (-1)
                   np.int64)
    dist = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 9]], np.float32)
    return dist, ids


def test_exclude_self_drops_own_id_else_last():
  (_, dist, idx), = index.search_batches(
      _FakeIndex(), np.zeros((3, 1), np.float32), 2, exclude_self=True)
  np.testing.assert_array_equal(idx, [[2, 1], [0, 2], [0, 1]])
  np.testing.assert_array_equal(dist, [[0, 1], [0, 0], [0, 0]])


def test_missing_neighbours_are_minus_one_with_infinite_distance():
  x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], np.float32)
  dist, idx = index.knn(x, k=4, exclude_self=True)
  np.testing.assert_array_equal(idx[:, 2:], -1)
  assert np.all(np.isposinf(dist[:, 2:]))
  np.testing.assert_array_equal(idx[:, :2], [[1, 2], [0, 2], [1, 0]])
  sims, idx = index.knn(x, x, 5, metric="ip")
  np.testing.assert_array_equal(idx[:, 3:], -1)
  assert np.all(np.isneginf(sims[:, 3:]))


def test_batching_gives_identical_results():
  # Small-integer coordinates make every distance exact in float32, so batch
  # boundaries cannot change any rounding and results must agree bit for bit.
  rng = np.random.default_rng(1)
  x = rng.integers(-4, 5, size=(700, 8)).astype(np.float32)
  d_one, i_one = index.knn(x, k=7, exclude_self=True, batch_size=10_000)
  for batch in (1, 19, 64, 333):
    d_b, i_b = index.knn(x, k=7, exclude_self=True, batch_size=batch)
    np.testing.assert_array_equal(i_b, i_one)
    np.testing.assert_array_equal(d_b, d_one)


@pytest.mark.parametrize("index_type,kwargs", [
    ("hnsw", {}),
    ("ivf", {"nprobe": 64}),
])
def test_approximate_indexes_reach_high_recall(index_type, kwargs):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(4000, 24)).astype(np.float32)
  _, exact = index.knn(x, k=10, exclude_self=True)
  _, approx = index.knn(x, k=10, exclude_self=True, index_type=index_type,
                        **kwargs)
  recall = index.measure_recall(approx, exact)
  assert recall > 0.9, recall
  # A deliberately starved IVF search must do worse: the check can fail.
  _, poor = index.knn(x, k=10, exclude_self=True, index_type="ivf", nprobe=1)
  assert index.measure_recall(poor, exact) < recall


def test_measure_recall_by_hand():
  approx = np.array([[1, 2, 3], [4, 5, 6]])
  exact = np.array([[1, 2, 9], [4, -1, -1]])
  # Row 0 finds 1 and 2 of {1, 2, 9}; row 1 finds 4 of {4}: 3 of 4 valid.
  assert index.measure_recall(approx, exact) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="same Q"):
    index.measure_recall(approx, exact[:1])


def test_knn_input_errors():
  x = np.zeros((5, 3), np.float32)
  with pytest.raises(ValueError, match="database=None"):
    index.knn(x, x, 2, exclude_self=True)
  with pytest.raises(ValueError, match="index_type"):
    index.knn(x, k=2, index_type="lsh")
  with pytest.raises(ValueError, match="metric"):
    index.knn(x, k=2, metric="cosine")
  with pytest.raises(ValueError, match="k must be"):
    index.knn(x, k=0)
  with pytest.raises(ValueError, match="dimension"):
    index.knn(x, np.zeros((4, 2), np.float32), 1)
  with pytest.raises(ValueError, match="NaN"):
    index.knn(np.full((2, 3), np.nan, np.float32), k=1)
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    index.knn(np.zeros(5, np.float32), k=1)


def _blobs(num, per, dim, seed, spread=0.01):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num, dim)) * 100.0
  labels = np.repeat(np.arange(num), per)
  x = centres[labels] + spread * rng.normal(size=(num * per, dim))
  return x.astype(np.float32), labels


def test_kmeans_plus_plus_puts_one_seed_in_each_blob():
  x, labels = _blobs(12, 20, 5, seed=3)
  for seed in range(5):
    seeds = index.kmeans_plus_plus(x, 12, seed=seed)
    _, nearest = index.knn(seeds, x, 1)
    assert sorted(labels[nearest[:, 0]]) == list(range(12)), seed


def test_kmeans_recovers_well_separated_blobs():
  x, labels = _blobs(10, 30, 8, seed=4, spread=1.0)
  centroids, assign = index.kmeans(x, 10, niter=10, seed=0)
  assert centroids.shape == (10, 8) and assign.shape == (300,)
  # Each cluster is exactly one blob: the contingency table is a permutation.
  table = np.zeros((10, 10), int)
  np.add.at(table, (assign, labels), 1)
  assert ((table > 0).sum(axis=0) == 1).all()
  assert ((table > 0).sum(axis=1) == 1).all()


def test_kmeans_spherical_gives_unit_centroids():
  x, _ = _blobs(4, 25, 6, seed=5, spread=1.0)
  centroids, assign = index.kmeans(x, 4, niter=5, spherical=True, nredo=2)
  np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0,
                             atol=1e-4)
  assert set(assign.tolist()) <= set(range(4))


def test_kmeans_k_equal_n_and_errors():
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  centroids, assign = index.kmeans(x, 6)
  np.testing.assert_array_equal(centroids, x)
  np.testing.assert_array_equal(assign, np.arange(6))
  with pytest.raises(ValueError, match=r"k=7 clusters for N=6"):
    index.kmeans(x, 7)
  with pytest.raises(ValueError, match=r"k=7 for N=6"):
    index.kmeans_plus_plus(x, 7)
  with pytest.raises(ValueError, match="k must be"):
    index.kmeans(x, 0)
  with pytest.raises(ValueError, match="init"):
    index.kmeans(x, 2, init="forgy")
  with pytest.raises(ValueError, match="use_gpu"):
    index.kmeans(x, 2, use_gpu="yes")
  if faiss.get_num_gpus() == 0:
    with pytest.raises(ValueError, match="no GPU"):
      index.kmeans(x, 2, use_gpu=True)


def test_kmeans_plus_plus_with_only_duplicates_left():
  # Two distinct locations, three centres: after both locations are taken all
  # D^2 are zero and the third seed is drawn among unchosen points.
  x = np.array([[0.0], [0.0], [0.0], [1.0]], np.float32)
  seeds = index.kmeans_plus_plus(x, 3, seed=0)
  assert sorted(seeds[:, 0].tolist()) == [0.0, 0.0, 1.0]


# ------------------------------------------------- the bank among itself


def _clustered(n=3000, d=16, classes=40, noise=0.2, seed=0):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(classes, d))
  return (means[rng.integers(0, classes, n)]
          + noise * rng.normal(size=(n, d))).astype(np.float32)


def test_ivf_join_finds_the_exact_neighbours_of_clustered_points():
  from dmlx.index import self_join
  x = _clustered()
  dist, idx = index.knn(x, None, 10, exclude_self=True,
                             index_type="ivf_join", nprobe=4)
  exact_d, exact_i = index.knn(x, None, 10, exclude_self=True)
  assert index.measure_recall(idx, exact_i) >= 0.95
  assert not np.any(idx == np.arange(len(x))[:, None])      # never itself
  # The distances are the true squared distances of the ids, nearest first.
  true = np.sum((x[:, None, :] - x[idx]) ** 2, axis=-1)
  np.testing.assert_allclose(dist, true, rtol=1e-3, atol=1e-3)
  assert np.all(np.diff(dist, axis=1) >= -1e-4)
  with pytest.raises(ValueError, match="nlist=4000"):
    self_join.self_knn_cells(x, 5, nlist=4000)
  with pytest.raises(ValueError, match="database=None"):
    index.knn(x, x, 5, index_type="ivf_join")


def test_checked_join_falls_back_to_exact_search_without_cluster_structure():
  from dmlx.index import self_join
  x = _clustered()
  _, _, info = self_join.self_knn_checked(x, 10, min_recall=0.95)
  assert info["search"] == "ivf_join" and info["recall"] >= 0.95
  noise = np.random.default_rng(1).normal(size=(3000, 64)).astype(np.float32)
  dist, idx, info = self_join.self_knn_checked(noise, 10, min_recall=0.95)
  assert info["search"] == "flat" and max(info["tried"].values()) < 0.95
  exact_d, exact_i = index.knn(noise, None, 10, exclude_self=True)
  np.testing.assert_array_equal(idx, exact_i)
