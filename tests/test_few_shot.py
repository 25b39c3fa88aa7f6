"""Tests of dmlx.eval.few_shot: episode sampling and N-way K-shot accuracy."""
import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dmlx.eval import few_shot
from dmlx.eval.few_shot import (Episodes, FewShotResult, few_shot_accuracy,
                                make_episodes)

COMBOS = [(c, m) for c in few_shot.CLASSIFIERS for m in few_shot.METRICS]


def _labels(counts):
  """Labels with ``counts[c]`` examples of class ``10 + c``, shuffled."""
  labels = np.repeat(10 + np.arange(len(counts)), counts)
  return np.random.default_rng(123).permutation(labels)


def _check_invariants(eps, labels, n_way, k_shot, n_query, n_episodes,
                      groups=None):
  assert len(eps) == n_episodes
  assert (eps.n_way, eps.k_shot, eps.n_query) == (n_way, k_shot, n_query)
  assert eps.classes.shape == (n_episodes, n_way)
  assert eps.support.shape == (n_episodes, n_way, k_shot)
  assert eps.query.shape == (n_episodes, n_way, n_query)
  values, counts = np.unique(labels, return_counts=True)
  eligible = set(values[counts >= k_shot + n_query].tolist())
  for e in range(n_episodes):
    cls = eps.classes[e]
    assert len(set(cls.tolist())) == n_way
    assert set(cls.tolist()) <= eligible
    # Supports and queries are examples of their way's class, in order.
    np.testing.assert_array_equal(labels[eps.support[e]],
                                  np.broadcast_to(cls[:, None],
                                                  (n_way, k_shot)))
    np.testing.assert_array_equal(labels[eps.query[e]],
                                  np.broadcast_to(cls[:, None],
                                                  (n_way, n_query)))
    rows = np.concatenate([eps.support[e].ravel(), eps.query[e].ravel()])
    assert len(np.unique(rows)) == len(rows)  # disjoint, no repeats
    if groups is None:
      assert eps.group[e] == -1
    else:
      assert set(groups[eps.support[e]].ravel().tolist()) == {eps.group[e]}
      assert set(groups[eps.query[e]].ravel().tolist()) == {eps.group[e]}
  assert eps.grouped == (groups is not None)


# ----------------------------------------------------------------------------
# make_episodes
# ----------------------------------------------------------------------------


def test_episodes_reproducible_from_seed():
  labels = _labels([6] * 12)
  kw = dict(n_way=5, k_shot=2, n_query=3, episodes=50)
  a = make_episodes(labels, seed=7, **kw)
  b = make_episodes(labels, seed=7, **kw)
  c = make_episodes(labels, seed=8, **kw)
  assert a == b
  for f in ("classes", "support", "query", "group"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
  assert a != c
  assert not np.array_equal(a.support, c.support)
  _check_invariants(a, labels, 5, 2, 3, 50)


def test_episodes_grouped_reproducible_and_within_group():
  labels = _labels([5] * 20)
  groups = (labels - 10) // 5  # 4 groups of 5 classes
  a = make_episodes(labels, n_way=3, k_shot=1, n_query=2, episodes=200,
                    seed=1, groups=groups)
  assert a == make_episodes(labels, n_way=3, k_shot=1, n_query=2,
                            episodes=200, seed=1, groups=groups)
  _check_invariants(a, labels, 3, 1, 2, 200, groups)
  assert set(a.group.tolist()) == {0, 1, 2, 3}


def test_episodes_are_frozen_and_read_only():
  eps = make_episodes(_labels([3] * 4), n_way=2, k_shot=1, episodes=3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    eps.support = eps.query
  with pytest.raises(ValueError):
    eps.support[0, 0, 0] = 0
  assert eps.support.dtype == np.int64
  assert "3 x 2-way 1-shot" in repr(eps)


def test_ineligible_classes_and_groups_never_drawn():
  # Classes 10..14 have 4 examples (eligible for k+q=3); 15..17 have 2.
  labels = _labels([4] * 5 + [2] * 3)
  eps = make_episodes(labels, n_way=3, k_shot=2, n_query=1, episodes=500)
  drawn = set(eps.classes.ravel().tolist())
  assert drawn == {10, 11, 12, 13, 14}  # every eligible one, no other
  # Groups: group 0 = classes 10..14 (5 eligible), group 1 = 15..17 with only
  # one eligible class (16 gets more examples) -> group 1 is never drawn.
  labels = _labels([4] * 5 + [2, 4, 2])
  groups = np.where(labels <= 14, 0, 1)
  eps = make_episodes(labels, n_way=3, k_shot=2, n_query=1, episodes=300,
                      groups=groups)
  assert set(eps.group.tolist()) == {0}
  assert set(eps.classes.ravel().tolist()) == {10, 11, 12, 13, 14}


def test_group_drawn_uniformly_among_eligible_groups():
  # Group 0 has 10 eligible classes, group 1 only 3: each is drawn about half
  # of the time (uniform over groups, not over classes).
  labels = _labels([3] * 13)
  groups = np.where(labels < 20, 0, 1)
  eps = make_episodes(labels, n_way=3, k_shot=1, n_query=1, episodes=4000,
                      groups=groups)
  assert abs(np.mean(eps.group == 1) - 0.5) < 0.04
  in_group_1 = np.isin(eps.classes, [20, 21, 22]).all(axis=1)
  np.testing.assert_array_equal(in_group_1, eps.group == 1)


def test_examples_drawn_uniformly_within_class():
  labels = _labels([4, 4])
  eps = make_episodes(labels, n_way=2, k_shot=2, n_query=2, episodes=4000)
  in_support = np.bincount(eps.support.ravel(), minlength=8) / 4000
  np.testing.assert_allclose(in_support, 0.5, atol=0.04)
  # The support is in random order: its first entry is any of the 4 members.
  sel = eps.classes[:, 0] == 10
  first = np.bincount(eps.support[sel, 0, 0], minlength=8) / sel.sum()
  np.testing.assert_allclose(first[labels == 10], 0.25, atol=0.04)


@st.composite
def _episode_problems(draw):
  n_classes = draw(st.integers(2, 10))
  counts = draw(st.lists(st.integers(1, 7), min_size=n_classes,
                         max_size=n_classes))
  class_group = draw(st.lists(st.integers(0, 2), min_size=n_classes,
                              max_size=n_classes))
  grouped = draw(st.booleans())
  n_way = draw(st.integers(2, 5))
  k_shot = draw(st.integers(1, 3))
  n_query = draw(st.integers(1, 3))
  episodes = draw(st.integers(1, 20))
  seed = draw(st.integers(0, 2**32 - 1))
  return counts, class_group, grouped, n_way, k_shot, n_query, episodes, seed


@settings(max_examples=60, deadline=None)
@given(_episode_problems())
def test_episodes_invariants_property(problem):
  counts, class_group, grouped, n_way, k_shot, n_query, n_eps, seed = problem
  labels = _labels(counts)
  groups = np.asarray(class_group)[labels - 10] if grouped else None
  eligible = np.asarray(counts) >= k_shot + n_query
  feasible = eligible.sum() >= n_way
  if grouped:
    per_group = np.bincount(np.asarray(class_group)[eligible], minlength=3)
    feasible = feasible and per_group.max() >= n_way
  kw = dict(n_way=n_way, k_shot=k_shot, n_query=n_query, episodes=n_eps,
            seed=seed, groups=groups)
  if not feasible:
    with pytest.raises(ValueError, match=f"n_way={n_way}"):
      make_episodes(labels, **kw)
    return
  eps = make_episodes(labels, **kw)
  _check_invariants(eps, labels, n_way, k_shot, n_query, n_eps, groups)
  assert eps == make_episodes(labels, **kw)
  if grouped:
    assert np.all(per_group[eps.group] >= n_way)


# ----------------------------------------------------------------------------
# few_shot_accuracy
# ----------------------------------------------------------------------------


def _reference(emb, labels, eps, classifier, metric):
  """Per-episode, per-query loop (the obvious implementation)."""
  emb = np.asarray(emb, np.float64)

  def norm(x):
    return x / np.linalg.norm(x)

  out = []
  for e in range(len(eps)):
    if classifier == "nearest":
      cands = [(w, emb[i]) for w in range(eps.n_way) for i in eps.support[e, w]]
    else:
      cands = []
      for w in range(eps.n_way):
        sup = emb[eps.support[e, w]]
        proto = (np.mean([norm(x) for x in sup], axis=0) if metric == "cosine"
                 else sup.mean(axis=0))
        cands.append((w, proto))
    correct = 0
    for w_true in range(eps.n_way):
      for qi in eps.query[e, w_true]:
        q = emb[qi]
        best, best_d = None, math.inf
        for w, c in cands:
          d = (-float(norm(q) @ norm(c)) if metric == "cosine"
               else float(np.sum((q - c) ** 2)))
          if d < best_d:  # strict: the first of tied candidates wins
            best, best_d = w, d
        pred = eps.classes[e, best]
        correct += int(pred == labels[qi])
    out.append(correct / (eps.n_way * eps.n_query))
  return np.asarray(out)


def _clustered(n_classes, per_class, dim, spread, seed):
  rng = np.random.default_rng(seed)
  labels = _labels([per_class] * n_classes)
  centers = rng.normal(size=(n_classes, dim))
  emb = centers[labels - 10] + spread * rng.normal(size=(len(labels), dim))
  return emb, labels


@pytest.mark.parametrize("classifier,metric", COMBOS)
def test_matches_loop_reference(classifier, metric):
  emb, labels = _clustered(12, 9, 6, 1.0, seed=3)
  eps = make_episodes(labels, n_way=5, k_shot=3, n_query=4, episodes=40,
                      seed=5)
  got = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                          metric=metric)
  want = _reference(emb, labels, eps, classifier, metric)
  assert 0.2 < want.mean() < 0.95  # a non-trivial problem
  np.testing.assert_array_equal(got.per_episode, want)
  assert got.accuracy == want.mean()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n_way=st.integers(2, 4),
       k_shot=st.integers(1, 3), n_query=st.integers(1, 2),
       combo=st.sampled_from(COMBOS))
def test_matches_loop_reference_property(seed, n_way, k_shot, n_query, combo):
  classifier, metric = combo
  emb, labels = _clustered(6, 6, 4, 1.5, seed=seed)
  eps = make_episodes(labels, n_way=n_way, k_shot=k_shot, n_query=n_query,
                      episodes=6, seed=seed)
  got = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                          metric=metric)
  np.testing.assert_array_equal(
      got.per_episode, _reference(emb, labels, eps, classifier, metric))


@pytest.mark.parametrize("classifier,metric", COMBOS)
def test_chunking_does_not_change_result(classifier, metric, monkeypatch):
  emb, labels = _clustered(10, 8, 5, 1.0, seed=0)
  emb = emb.astype(np.float32)
  eps = make_episodes(labels, n_way=4, k_shot=2, n_query=3, episodes=37)
  whole = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                            metric=metric)
  monkeypatch.setattr(few_shot, "_CHUNK_ELEMENTS", 1)  # one episode a chunk
  chunked = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                              metric=metric)
  np.testing.assert_array_equal(whole.per_episode, chunked.per_episode)


@pytest.mark.parametrize("k_shot", [1, 3])
@pytest.mark.parametrize("classifier,metric", COMBOS)
def test_perfect_when_queries_equal_supports(classifier, metric, k_shot):
  # Every example of a class shares its class's embedding.
  labels = _labels([6] * 15)
  centers = np.random.default_rng(0).normal(size=(15, 8)).astype(np.float32)
  emb = centers[labels - 10]
  eps = make_episodes(labels, n_way=10, k_shot=k_shot, n_query=3,
                      episodes=100)
  res = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                          metric=metric)
  assert res.accuracy == 1.0
  np.testing.assert_array_equal(res.per_episode, 1.0)
  assert res.ci95 == 0.0


@pytest.mark.parametrize("classifier,metric", COMBOS)
def test_chance_level_on_random_embeddings(classifier, metric):
  rng = np.random.default_rng(0)
  labels = _labels([6] * 40)
  emb = rng.normal(size=(len(labels), 16)).astype(np.float32)
  eps = make_episodes(labels, n_way=5, k_shot=1, n_query=1, episodes=2000)
  res = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                          metric=metric)
  assert abs(res.accuracy - 0.2) < 0.03
  assert res.ci95 < 0.03


@pytest.mark.parametrize("classifier,metric", COMBOS)
def test_well_separated_clusters(classifier, metric):
  emb, labels = _clustered(30, 8, 32, 0.05, seed=1)
  eps = make_episodes(labels, n_way=20, k_shot=1, n_query=2, episodes=300,
                      seed=2)
  res = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                          metric=metric)
  assert res.accuracy > 0.99


@pytest.mark.parametrize("classifier,metric", COMBOS)
def test_ties_go_to_lowest_index(classifier, metric):
  # Row 2 ([1, 1], class 0) is exactly equidistant from both supports under
  # both metrics (the values are small integers, so the arithmetic is exact);
  # the tie goes to the first way of the episode.
  emb = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 1], [0, 3]], np.float32)
  labels = np.array([0, 1, 0, 0, 1, 1])
  eps = Episodes(classes=[[0, 1], [1, 0]],
                 support=[[[0], [1]], [[1], [0]]],
                 query=[[[2, 3], [4, 5]], [[4, 5], [2, 3]]],
                 group=[-1, -1])
  res = few_shot_accuracy(emb, labels, eps, classifier=classifier,
                          metric=metric)
  np.testing.assert_array_equal(res.per_episode, [1.0, 0.75])


def test_accepts_float16_and_float64_and_grouped_flag():
  emb, labels = _clustered(8, 5, 4, 0.3, seed=4)
  groups = (labels - 10) % 2
  eps = make_episodes(labels, n_way=3, k_shot=1, n_query=2, episodes=30,
                      groups=groups)
  a = few_shot_accuracy(emb, labels, eps)
  b = few_shot_accuracy(emb.astype(np.float16), labels, eps)
  assert a.grouped and b.grouped
  assert abs(a.accuracy - b.accuracy) < 0.1


def test_result_summary_and_ci95():
  emb, labels = _clustered(10, 6, 4, 1.0, seed=6)
  eps = make_episodes(labels, n_way=5, k_shot=1, n_query=2, episodes=200)
  res = few_shot_accuracy(emb, labels, eps, classifier="prototype",
                          metric="cosine")
  assert isinstance(res, FewShotResult)
  p = res.per_episode
  assert p.shape == (200,)
  assert res.accuracy == pytest.approx(p.mean())
  assert res.ci95 == pytest.approx(1.96 * p.std(ddof=1) / math.sqrt(200))
  assert res.ci95 > 0
  d = res.as_dict()
  assert "per_episode" not in d
  assert json.loads(json.dumps(d)) == d
  assert d == {"accuracy": res.accuracy, "ci95": res.ci95, "episodes": 200,
               "n_way": 5, "k_shot": 1, "n_query": 2,
               "classifier": "prototype", "metric": "cosine",
               "grouped": False}
  assert all(type(v) in (float, int, str, bool) for v in d.values())
  assert str(res) == (f"5-way 1-shot (prototype, cosine): {res.accuracy:.3f} "
                      f"\u00b1 {res.ci95:.3f} (200 episodes)")
  one = few_shot_accuracy(emb, labels, make_episodes(labels, n_way=5,
                                                     k_shot=1, episodes=1))
  assert one.ci95 == 0.0 and len(one.per_episode) == 1


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------

LABELS = _labels([4, 4, 4, 2])  # three classes with >= 3 examples


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_way=1, k_shot=1), "n_way must be an integer >= 2, got 1"),
    (dict(n_way=2, k_shot=0), "k_shot must be an integer >= 1, got 0"),
    (dict(n_way=2, k_shot=1, n_query=0), "n_query .* got 0"),
    (dict(n_way=2, k_shot=1, episodes=0), "episodes .* got 0"),
    (dict(n_way=2.0, k_shot=1), "n_way .* got 2.0"),
    (dict(n_way=4, k_shot=2), r"n_way=4 .* k_shot \+ n_query = 3 .* only 3 "
                              "of 4 classes"),
    (dict(n_way=2, k_shot=1, groups=np.zeros(5, int)), r"shape \(14,\).*"
                                                       r"got shape \(5,\)"),
    (dict(n_way=2, k_shot=1, groups=np.full(14, 0.5)), "dtype float64"),
    (dict(n_way=2, k_shot=1, groups=np.full(14, -2)), "got -2"),
    (dict(n_way=2, k_shot=1, groups=np.arange(14) % 2), "class 1[0-3] spans"),
    (dict(n_way=2, k_shot=1, groups=LABELS - 10),
     r"no group has n_way=2 .* largest group has 1"),
])
def test_make_episodes_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_episodes(LABELS, **kwargs)


@pytest.mark.parametrize("labels,match", [
    (np.zeros((2, 3), int), r"shape \(2, 3\)"),
    (np.zeros(6, np.float32), "dtype float32"),
    (np.zeros(6, bool), "dtype bool"),
])
def test_make_episodes_label_errors(labels, match):
  with pytest.raises(ValueError, match=match):
    make_episodes(labels, n_way=2, k_shot=1)


def test_class_spanning_groups_is_named():
  labels = np.array([0, 0, 1, 1, 7, 7, 7])
  groups = np.array([0, 0, 1, 1, 0, 1, 1])
  with pytest.raises(ValueError,
                     match=r"class 7 spans several groups \[0, 1\]"):
    make_episodes(labels, n_way=2, k_shot=1, groups=groups)


EMB, EMB_LABELS = _clustered(5, 4, 3, 1.0, seed=0)
EPS = make_episodes(EMB_LABELS, n_way=3, k_shot=1, n_query=1, episodes=5)


@pytest.mark.parametrize("emb,kwargs,match", [
    (EMB[:, 0], {}, r"2-D float .* shape \(20,\)"),
    (EMB.astype(int), {}, "dtype int64"),
    (EMB[:7], {}, "7 rows but labels has 20"),
    (np.where(np.arange(20)[:, None] % 9 == 0, np.nan, EMB), {},
     r"3 row\(s\) with non-finite"),
    (EMB, dict(classifier="knn"), r"'knn'.*\['nearest', 'prototype'\]"),
    (EMB, dict(metric="ip"), r"'ip'.*\['l2', 'cosine'\]"),
])
def test_accuracy_errors(emb, kwargs, match):
  with pytest.raises(ValueError, match=match):
    few_shot_accuracy(emb, EMB_LABELS, EPS, **kwargs)


def test_accuracy_episode_index_errors():
  labels = np.array([0, 0, 1, 1])
  emb = np.eye(4)
  bad = Episodes(classes=[[0, 1]], support=[[[0], [2]]],
                 query=[[[1], [99]]], group=[-1])
  with pytest.raises(ValueError, match="query has row index 99 out of range"):
    few_shot_accuracy(emb, labels, bad)
  wrong = Episodes(classes=[[0, 1]], support=[[[0], [1]]],
                   query=[[[2], [3]]], group=[-1])
  with pytest.raises(ValueError, match=r"support has 1 row\(s\) whose label"):
    few_shot_accuracy(emb, labels, wrong)
  with pytest.raises(ValueError, match="Episodes"):
    few_shot_accuracy(emb, labels, {"support": None})


@pytest.mark.parametrize("fields,match", [
    (dict(classes=[[0, 0]]), "repeats a class"),
    (dict(query=[[[0], [3]]]), "uses a row twice"),
    (dict(group=[-1, -1]), "inconsistent episode shapes"),
    (dict(support=[[[0.0], [2.0]]]), "support must be a 3-D integer"),
    (dict(group=[-3]), "group must be all -1"),
])
def test_episodes_validation(fields, match):
  base = dict(classes=[[0, 1]], support=[[[0], [2]]], query=[[[1], [3]]],
              group=[-1])
  with pytest.raises(ValueError, match=match):
    Episodes(**{**base, **fields})
