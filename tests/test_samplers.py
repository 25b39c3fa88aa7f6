"""Samplers: P×K composition, every example visited each epoch, determinism."""
import numpy as np
import pytest

from dmlx.data import samplers


def _labels():
  # Unequal classes, two with fewer than K=4 images.
  return np.repeat(np.arange(9), [3, 5, 8, 8, 9, 2, 12, 6, 7])


def test_pk_batches_have_p_classes_of_k_images():
  labels = _labels()
  s = samplers.PKSampler(labels, classes_per_batch=3, images_per_class=4, seed=0)
  for step in range(s.steps_per_epoch):
    b = s.batch(step)
    assert b.shape == (12,)
    classes, counts = np.unique(labels[b], return_counts=True)
    assert len(classes) == 3 and np.all(counts == 4), labels[b]


def test_pk_visits_every_example_each_epoch():
  labels = _labels()
  s = samplers.PKSampler(labels, 3, 4, seed=1)
  for epoch in range(3):
    seen = np.concatenate([s.batch(epoch * s.steps_per_epoch + i) for i in range(s.steps_per_epoch)])
    assert set(seen.tolist()) == set(range(len(labels)))


def test_pk_is_deterministic_and_epochs_differ():
  labels = _labels()
  a = samplers.PKSampler(labels, 3, 4, seed=5)
  b = samplers.PKSampler(labels, 3, 4, seed=5)
  np.testing.assert_array_equal(a.batch(2 * a.steps_per_epoch + 1), b.batch(2 * b.steps_per_epoch + 1))
  assert not np.array_equal(a.batch(0), a.batch(1 * a.steps_per_epoch + 0))


def test_pk_rejects_too_many_classes():
  with pytest.raises(ValueError, match="classes_per_batch"):
    samplers.PKSampler(np.array([0, 0, 1, 1]), 3, 2)


def test_random_and_whole_class_cover_epoch():
  labels = _labels()
  for s in (samplers.RandomSampler(len(labels), 16, 0),
            samplers.WholeClassSampler(labels, 16, 0)):
    seen = np.concatenate([s.batch(i) for i in range(s.steps_per_epoch)])
    assert set(seen.tolist()) == set(range(len(labels)))


def test_whole_class_keeps_classes_together():
  labels = _labels()
  s = samplers.WholeClassSampler(labels, 20, 0)
  flat = np.concatenate([s.batch(i) for i in range(s.steps_per_epoch)])[:len(labels)]
  # Classes appear as contiguous runs in the epoch's order.
  runs = np.count_nonzero(np.diff(labels[flat]) != 0) + 1
  assert runs == 9


def _class_counts_per_batch(labels, sampler, epoch):
  for step in range(sampler.steps_per_epoch):
    b = sampler.batch(epoch * sampler.steps_per_epoch + step)
    assert b.shape == (sampler.batch_size,)
    yield np.unique(labels[b], return_counts=True)[1]


@pytest.mark.parametrize("batch_size", [5, 7, 16, 20, 33])
def test_whole_class_every_class_in_a_batch_has_two_images(batch_size):
  """DML-DA measures each class's density in the batch (eq. 5): no class may
  be cut to a single image at a batch boundary, for any batch size."""
  labels = np.concatenate([_labels(), np.full(1, 9)])  # + a one-image class
  s = samplers.WholeClassSampler(labels, batch_size, seed=3)
  for epoch in range(4):
    for counts in _class_counts_per_batch(labels, s, epoch):
      assert counts.min() >= 2, counts
    seen = np.concatenate([s.batch(epoch * s.steps_per_epoch + i) for i in range(s.steps_per_epoch)])
    assert set(seen.tolist()) == set(range(len(labels)))


def test_whole_class_packs_without_extra_steps_for_many_small_classes():
  # SOP-like: many classes of 2-12 images, batches of 100.
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(400), rng.integers(2, 13, 400))
  s = samplers.WholeClassSampler(labels, 100, seed=0)
  assert s.steps_per_epoch == -(-len(labels) // 100)
  for counts in _class_counts_per_batch(labels, s, 1):
    assert counts.min() >= 2
  # Cuts happen only at batch ends, so each class forms about one run.
  flat = np.concatenate([s.batch(1 * s.steps_per_epoch + i) for i in range(s.steps_per_epoch)])
  runs = np.count_nonzero(np.diff(labels[flat][:len(labels)]) != 0) + 1
  assert runs <= 400 + s.steps_per_epoch  # classes stay (nearly) contiguous


def test_whole_class_rejects_batch_of_one():
  with pytest.raises(ValueError, match="batch_size"):
    samplers.WholeClassSampler(_labels(), 1)


def test_proportional_pk_draws_classes_by_size():
  """Vo & Hays's sampler: P distinct classes with probability ∝ size
  (single-image classes never), K distinct images each, a pure function of
  (seed, step)."""
  from dmlx.data.samplers import ProportionalPKSampler  # pylint: disable=g-import-not-at-top
  labels = np.concatenate([np.full(40, 0), np.full(10, 1), np.full(10, 2),
                           np.full(1, 3)])
  s = ProportionalPKSampler(labels, 2, 2, seed=3)
  counts = np.zeros(4)
  for step in range(2000):
    rows = s.batch(step)
    assert rows.shape == (4,)
    classes = labels[rows].reshape(2, 2)
    assert (classes[:, 0] == classes[:, 1]).all() and classes[0, 0] != classes[1, 0]
    assert len(set(rows.tolist())) == 4
    counts[classes[:, 0]] += 1
  assert counts[3] == 0
  # P(class 0 in a 2-of-3 draw without replacement, p = 2/3, 1/6, 1/6) = 0.933.
  assert 0.90 < counts[0] / 2000 < 0.96
  np.testing.assert_array_equal(s.batch(17), s.batch(17))
  with pytest.raises(ValueError, match="two or more images"):
    ProportionalPKSampler(labels, 4, 2)


def test_a_batch_larger_than_memory_is_refused_naming_the_keys():
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  pk = ConfigDict({"name": "pk", "classes_per_batch": 8, "images_per_class": 4,
                   "batch_size": 32})
  samplers.check_batch_fits(pk, (64, 64, 3))     # 32 images: 1.5 MiB
  pk.images_per_class = 10**9
  with pytest.raises(ValueError, match=r"images_per_class = 8000000000 images a "
                     r"batch: 9.16e\+04 GiB of \(32, 32, 3\) float32 images"):
    samplers.check_batch_fits(pk, (32, 32, 3))
  rand = ConfigDict({"name": "random", "batch_size": 10**9})
  with pytest.raises(ValueError, match=r"config.sampler.batch_size = 1000000000"):
    samplers.check_batch_fits(rand, (32, 32, 3))
