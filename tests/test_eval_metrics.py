"""Tests of dmlx.eval.metrics on hand-worked point sets and loop references."""
import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from dmlx import eval as dml_eval


def _col(values):
  return np.array(values, np.float32)[:, None]


# Five points on a line (no distance ties):
#   id:     0    1    2    3    4
#   x:      0    1   2.4   4   10
#   label:  0    1    0    0    1
# Neighbour lists, self excluded (label of each neighbour in brackets):
#   q0 (y0): 1[1] 2[0] 3[0] 4[1]          first match at rank 2
#   q1 (y1): 0[0] 2[0] 3[0] 4[1]          first match at rank 4
#   q2 (y0): 1[1] 3[0] 0[0] 4[1]          first match at rank 2
#   q3 (y0): 2[0] 1[1] 0[0] 4[1]          first match at rank 1
#   q4 (y1): 3[0] 2[0] 1[1] 0[0]          first match at rank 3
# Recall@1 = 1/5, Recall@2 = 3/5, Recall@4 = 5/5, Recall@8 = 5/5 (only four
# neighbours exist; every query has its match among them).
# R = other same-class items: q0, q2, q3 -> R = 2; q1, q4 -> R = 1.
#   q0: rel = [0, 1] -> AP = (1/2) / 2 = 1/4, RP = 1/2
#   q1: rel = [0]    -> AP = 0,             RP = 0
#   q2: rel = [0, 1] -> AP = 1/4,           RP = 1/2
#   q3: rel = [1, 0] -> AP = (1/1) / 2 = 1/2, RP = 1/2
#   q4: rel = [0]    -> AP = 0,             RP = 0
# MAP@R = (1/4 + 1/4 + 1/2) / 5 = 0.2, R-precision = 1.5 / 5 = 0.3.
LINE_X = _col([0.0, 1.0, 2.4, 4.0, 10.0])
LINE_Y = np.array([0, 1, 0, 0, 1])


def test_recall_at_k_by_hand():
  got = dml_eval.recall_at_k(LINE_X, LINE_Y, ks=(1, 2, 4, 8))
  assert got == pytest.approx({1: 0.2, 2: 0.6, 4: 1.0, 8: 1.0})


def test_map_at_r_and_r_precision_by_hand():
  assert dml_eval.map_at_r(LINE_X, LINE_Y) == pytest.approx(0.2)
  assert dml_eval.r_precision(LINE_X, LINE_Y) == pytest.approx(0.3)


def test_singleton_class_counts_for_recall_but_not_map_r():
  # A sixth point far away (x = 50) in a class of its own: it is every other
  # query's last neighbour, so their first R and first 4 neighbours are
  # unchanged. It can never be retrieved correctly (Recall counts it as a
  # miss: 5/6 at K = 4) and has R = 0 (MAP@R leaves it out: still 1.0 / 5).
  x = np.concatenate([LINE_X, _col([50.0])])
  y = np.concatenate([LINE_Y, [7]])
  got = dml_eval.evaluate_retrieval(x, y, ks=(1, 4), metrics=("recall",
                                                              "map_r"))
  assert got == pytest.approx({"recall@1": 1 / 6, "recall@4": 5 / 6,
                               "map@r": 0.2, "r_precision": 0.3})


# Query/gallery (In-Shop) variant, gallery on a line:
#   gallery x:  1    2    3    4    5
#   label:      0    1    0    0    1
# query a: x = 0,   label 0, R = 3 gallery items of class 0.
#   order 1[0] 2[1] 3[0] 4[0] 5[1]; rel in first 3 = [1, 0, 1]
#   AP = (1/1 + 2/3) / 3 = 5/9, RP = 2/3, first match rank 1.
# query b: x = 3.8, label 1, R = 2.
#   order 4[0] (0.2), 3[0] (0.8), 5[1] (1.2), 2[1] (1.8), 1[0]
#   rel in first 2 = [0, 0] -> AP = 0, RP = 0, first match rank 3.
# Recall@1 = 1/2, Recall@2 = 1/2, Recall@4 = 1; MAP@R = 5/18, RP = 1/3.
# With max_r = 2 query a keeps only its first two: rel [1, 0] -> AP = 1/2,
# so MAP@R = 1/4.
GALLERY_X = _col([1.0, 2.0, 3.0, 4.0, 5.0])
GALLERY_Y = np.array([0, 1, 0, 0, 1])
QUERY_X = _col([0.0, 3.8])
QUERY_Y = np.array([0, 1])


def test_query_gallery_variant_by_hand():
  gallery = dict(gallery_embeddings=GALLERY_X, gallery_labels=GALLERY_Y)
  assert dml_eval.recall_at_k(QUERY_X, QUERY_Y, (1, 2, 4), **gallery) == \
      pytest.approx({1: 0.5, 2: 0.5, 4: 1.0})
  assert dml_eval.map_at_r(QUERY_X, QUERY_Y, **gallery) == pytest.approx(5 / 18)
  assert dml_eval.r_precision(QUERY_X, QUERY_Y, **gallery) == \
      pytest.approx(1 / 3)
  assert dml_eval.map_at_r(QUERY_X, QUERY_Y, max_r=2, **gallery) == \
      pytest.approx(1 / 4)


def _loop_reference(x, y, ks):
  """Recall@K and MAP@R with plain loops over a float64 distance list."""
  n = len(x)
  recall = {k: 0 for k in ks}
  ap_sum, rp_sum, counted = 0.0, 0.0, 0
  for i in range(n):
    dist = sorted((float(((x[i] - x[j]) ** 2).sum()), j)
                  for j in range(n) if j != i)
    rel = [y[j] == y[i] for _, j in dist]
    for k in ks:
      recall[k] += any(rel[:k])
    r = sum(1 for j in range(n) if j != i and y[j] == y[i])
    if r == 0:
      continue
    counted += 1
    hits, ap = 0, 0.0
    for rank in range(1, r + 1):
      if rel[rank - 1]:
        hits += 1
        ap += hits / rank
    ap_sum += ap / r
    rp_sum += hits / r
  return ({k: v / n for k, v in recall.items()}, ap_sum / counted,
          rp_sum / counted)


def test_random_embeddings_match_loop_reference():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 7, size=90)
  x = (rng.normal(size=(90, 5)) + 1.5 * rng.normal(size=(7, 5))[y]).astype(
      np.float32)
  recall, map_r, rp = _loop_reference(x.astype(np.float64), y, (1, 2, 4, 8))
  got = dml_eval.evaluate_retrieval(x, y, metrics=("recall", "map_r"))
  assert got.pop("map@r") == pytest.approx(map_r, abs=1e-9)
  assert got.pop("r_precision") == pytest.approx(rp, abs=1e-9)
  assert got == pytest.approx({f"recall@{k}": v for k, v in recall.items()})
  assert 0.1 < map_r < 0.9  # a non-trivial case


def test_batch_size_does_not_change_metrics():
  rng = np.random.default_rng(1)
  # Small-integer coordinates: distances are exact and full of ties, so any
  # batch-dependent tie-breaking would show. Labels follow the first axis.
  x = rng.integers(-3, 4, size=(400, 6)).astype(np.float32)
  y = x[:, 0].astype(np.int64) + 3
  x[:, 0] *= 3
  one = dml_eval.evaluate_retrieval(x, y, metrics=("recall", "map_r"),
                                    batch_size=100_000)
  assert 0.2 < one["map@r"] < 0.9
  for batch in (1, 37, 128):
    got = dml_eval.evaluate_retrieval(x, y, metrics=("recall", "map_r"),
                                      batch_size=batch)
    assert got == pytest.approx(one, rel=1e-12, abs=0)  # sums reassociate


# Six points in three tight blobs (0, 10, 20), two per blob; k-means++ with
# three clusters recovers the blobs: Omega = [a, a, b, b, c, c], while the
# classes are C = [0, 0, 0, 1, 1, 2].
#   I(Omega; C) = 1/3 ln 2 + 1/3 ln 1.5 + 1/6 ln 3 = 1/2 ln 3
#     (terms p(w,c) ln p(w,c)/(p(w)p(c)): (a,0) 1/3 ln 2, (b,0) 0,
#      (b,1) 1/6 ln 1.5, (c,1) 1/6 ln 1.5, (c,2) 1/6 ln 3)
#   H(Omega) = ln 3,  H(C) = 1/2 ln 2 + 1/3 ln 3 + 1/6 ln 6
#   NMI = 2 I / (H(Omega) + H(C)) = ln 3 / (3/2 ln 3 + 2/3 ln 2) = 0.52067
BLOB_X = _col([0.0, 0.0, 10.0, 10.0, 20.0, 20.0])
BLOB_C = np.array([0, 0, 0, 1, 1, 2])


def test_nmi_by_hand_and_against_sklearn():
  expected = math.log(3) / (1.5 * math.log(3) + 2 / 3 * math.log(2))
  got = dml_eval.nmi(BLOB_X, BLOB_C, init="kmeans++")
  assert got == pytest.approx(expected, abs=1e-9)
  blobs = np.array([0, 0, 1, 1, 2, 2])
  assert got == pytest.approx(normalized_mutual_info_score(BLOB_C, blobs))
  assert expected == pytest.approx(0.52067, abs=1e-5)


def test_nmi_perfect_clustering_is_one():
  rng = np.random.default_rng(2)
  centres = rng.normal(size=(8, 4)) * 50
  y = np.repeat(np.arange(8), 10)
  x = (centres[y] + rng.normal(size=(80, 4))).astype(np.float32)
  assert dml_eval.nmi(x, y, init="kmeans++") == pytest.approx(1.0)
  # Labels unrelated to the geometry score low.
  shuffled = rng.permutation(y)
  assert dml_eval.nmi(x, shuffled, init="kmeans++") < 0.5


# kNN accuracy, train set on a line:
#   train x:  0    1    2   10
#   label:    0    1    1    2
# test 0.4 (y0): order 0[0] 1[1] 2[1] 10[2]
#   k=1 -> 0 ok; k=2 -> tie 0/1, nearest is 0, ok; k=3 -> 1 (two votes), wrong
# test 9 (y2):   order 10[2] 2[1] 1[1] 0[0]
#   k=1 -> 2 ok; k=2 -> tie 2/1, nearest is 2, ok (smallest-label tie-break
#   would say 1); k=3 -> 1, wrong
# test 1.4 (y1): order 1[1] 2[1] 0[0] -> 1 for k = 1, 2, 3, ok
# accuracy: k=1 -> 1, k=2 -> 1, k=3 -> 1/3.
def test_knn_accuracy_by_hand():
  train_x, train_y = _col([0.0, 1.0, 2.0, 10.0]), np.array([0, 1, 1, 2])
  test_x, test_y = _col([0.4, 9.0, 1.4]), np.array([0, 2, 1])
  got = dml_eval.knn_accuracy(train_x, train_y, test_x, test_y, k=[1, 2, 3])
  assert got == pytest.approx({1: 1.0, 2: 1.0, 3: 1 / 3})
  single = dml_eval.knn_accuracy(train_x, train_y, test_x, test_y, k=3)
  assert single == pytest.approx(1 / 3)


def test_evaluate_retrieval_keys_and_consistency():
  rng = np.random.default_rng(3)
  y = np.repeat(np.arange(10), 6)
  x = (rng.normal(size=(10, 8))[y] * 3 + rng.normal(size=(60, 8))).astype(
      np.float32)
  got = dml_eval.evaluate_retrieval(x, y, ks=(1, 2, 4, 8))
  assert list(got) == ["recall@1", "recall@2", "recall@4", "recall@8",
                       "map@r", "r_precision", "nmi"]
  assert got["map@r"] == pytest.approx(dml_eval.map_at_r(x, y))
  recall = dml_eval.recall_at_k(x, y)
  assert [got[f"recall@{k}"] for k in (1, 2, 4, 8)] == \
      pytest.approx([recall[k] for k in (1, 2, 4, 8)])
  assert all(0.0 <= v <= 1.0 for v in got.values())


def test_inner_product_matches_l2_on_unit_vectors():
  # On the unit sphere ||a - b||^2 = 2 - 2 a.b: both metrics rank alike.
  rng = np.random.default_rng(4)
  y = rng.integers(0, 5, size=70)
  x = rng.normal(size=(70, 6)) + 2 * rng.normal(size=(5, 6))[y]
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  l2 = dml_eval.evaluate_retrieval(x, y, metrics=("recall", "map_r"))
  ip = dml_eval.evaluate_retrieval(x, y, metrics=("recall", "map_r"),
                                   metric="ip")
  assert ip == pytest.approx(l2)
  acc = dml_eval.knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=[1, 5],
                              metric="ip")
  assert acc == pytest.approx(
      dml_eval.knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=[1, 5]))


def test_input_errors():
  with pytest.raises(ValueError, match="shape"):
    dml_eval.recall_at_k(LINE_X, LINE_Y[:3])
  with pytest.raises(ValueError, match="ks"):
    dml_eval.recall_at_k(LINE_X, LINE_Y, ks=(0, 1))
  with pytest.raises(ValueError, match="gallery_labels"):
    dml_eval.recall_at_k(QUERY_X, QUERY_Y, gallery_embeddings=GALLERY_X)
  with pytest.raises(ValueError, match="Unknown metric 'auc'"):
    dml_eval.evaluate_retrieval(LINE_X, LINE_Y, metrics=("auc",))
  with pytest.raises(ValueError, match="R = 0"):
    dml_eval.map_at_r(LINE_X, np.arange(5))
  with pytest.raises(ValueError, match="integers"):
    dml_eval.recall_at_k(LINE_X, LINE_Y.astype(float))
  with pytest.raises(ValueError, match="max_r"):
    dml_eval.map_at_r(LINE_X, LINE_Y, max_r=0)
  with pytest.raises(ValueError, match="k=9 clusters for N=5"):
    dml_eval.nmi(LINE_X, LINE_Y, num_clusters=9)


def test_format_table():
  table = dml_eval.format_table(
      {"triplet": {"recall@1": 0.5, "nmi": 0.25},
       "nngk": {"recall@1": 0.75}})
  assert table == ("model    recall@1     nmi\n"
                   "-------------------------\n"
                   "triplet    0.5000  0.2500\n"
                   "nngk       0.7500       -")
  assert "nmi" not in dml_eval.format_table({"a": {"nmi": 1.0}},
                                            columns=["recall@1"])
