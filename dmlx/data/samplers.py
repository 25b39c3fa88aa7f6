"""Batch samplers: deterministic functions of (seed, epoch, step).

A sampler answers ``batch(epoch, step, state=None) -> indices [B]`` and knows
``steps_per_epoch``. Because each epoch's plan is a pure function of the seed
and the epoch number, a resumed run recomputes exactly the batches it would
have seen: the sampler position *is* the global step.

* :class:`RandomSampler`: a shuffled pass over the data, the last batch
  completed with examples drawn from the start of the permutation.
* :class:`PKSampler`: P classes × K images per class, the batch construction of
  all five seed papers. Unlike samplers that draw classes at random every step,
  it still visits every example once per epoch: each class's examples are
  shuffled and cut into groups of K (a short last group, or a class with fewer
  than K images, is completed by repeating that class's examples), and groups
  are packed P at a time into batches of P distinct classes, always taking from
  the classes with most groups left (ties broken at random), which uses the
  minimal number of batches whenever no class holds more than a batch's share
  of the epoch.
* :class:`WholeClassSampler`: whole classes accumulated up to the batch size
  (DML-DA's batches for SOP, where classes have few images).
"""
from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np


class Sampler(Protocol):
  steps_per_epoch: int
  batch_size: int

  def batch(self, epoch: int, step: int, state: Any = None) -> np.ndarray:
    ...


def _class_members(labels: np.ndarray) -> list[np.ndarray]:
  order = np.argsort(labels, kind="stable")
  counts = np.bincount(labels)
  return np.split(order, np.cumsum(counts)[:-1])


class RandomSampler:
  """Uniformly shuffled batches; every example is seen once per epoch."""

  def __init__(self, num_examples: int, batch_size: int, seed: int = 0):
    if batch_size < 1 or num_examples < 1:
      raise ValueError(f"RandomSampler needs batch_size >= 1 and data; got "
                       f"batch_size={batch_size}, num_examples={num_examples}.")
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = -(-num_examples // batch_size)

  @functools.lru_cache(maxsize=2)
  def _plan(self, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    total = self.steps_per_epoch * self.batch_size
    return np.resize(perm, total).reshape(self.steps_per_epoch, self.batch_size)

  def batch(self, epoch: int, step: int, state: Any = None) -> np.ndarray:
    del state
    return self._plan(epoch)[step]


class PKSampler:
  """P classes × K images per class, every example visited each epoch.

  Args:
    labels: ``[N]`` integer labels of the training set.
    classes_per_batch: P.
    images_per_class: K.
    seed: base seed; epoch ``e`` uses ``default_rng([seed, e])``.
  """

  def __init__(self, labels: np.ndarray, classes_per_batch: int,
               images_per_class: int, seed: int = 0):
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    present = np.unique(labels)
    if images_per_class < 1:
      raise ValueError(f"images_per_class (K) must be >= 1, got {images_per_class}.")
    if classes_per_batch < 1 or classes_per_batch > len(present):
      raise ValueError(
          f"classes_per_batch (P) = {classes_per_batch} must be between 1 and "
          f"the number of classes with examples ({len(present)}).")
    del num_classes
    self.members = [m for m in _class_members(labels) if len(m)]
    self.P, self.K = classes_per_batch, images_per_class
    self.batch_size = self.P * self.K
    self.seed = seed
    num_groups = sum(-(-len(m) // self.K) for m in self.members)
    self.steps_per_epoch = -(-num_groups // self.P)

  @functools.lru_cache(maxsize=2)
  def _plan(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    queues = []  # per class: its shuffled groups of K
    for members in self.members:
      perm = rng.permutation(members)
      n_groups = -(-len(perm) // self.K)
      short = n_groups * self.K - len(perm)
      if short:
        perm = np.concatenate([perm, rng.choice(members, short, replace=len(members) < short)])
      queues.append(list(perm.reshape(n_groups, self.K)))
    batches = []
    for _ in range(self.steps_per_epoch):
      # Largest-remaining-first with random tie-breaking packs the groups into
      # the minimal number of batches (every example visited) while classes
      # with equal counts are combined at random.
      remaining = np.array([len(q) for q in queues], np.float64)
      priority = remaining + rng.uniform(0.0, 0.5, len(queues))
      priority[remaining == 0] = -1.0
      chosen_classes = np.argsort(-priority)[:self.P]
      chosen = []
      for c in chosen_classes:
        if queues[c]:
          chosen.append(queues[c].pop())
        else:  # the epoch ran dry: complete the batch with extra groups
          members = self.members[c]
          chosen.append(rng.choice(members, self.K, replace=len(members) < self.K))
      batches.append(np.concatenate([chosen[i] for i in rng.permutation(len(chosen))]))
    return np.stack(batches)

  def batch(self, epoch: int, step: int, state: Any = None) -> np.ndarray:
    del state
    return self._plan(epoch)[step]


class WholeClassSampler:
  """Whole classes accumulated until the batch is full (DML-DA on SOP).

  Classes are visited in a shuffled order; each batch takes every image of the
  next classes while they fit, and the last class that does not fit is cut
  (its remaining images start the next batch), so every example is visited.
  """

  def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0):
    self.members = [m for m in _class_members(np.asarray(labels)) if len(m)]
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = -(-len(labels) // batch_size)

  @functools.lru_cache(maxsize=2)
  def _plan(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    flat = np.concatenate([rng.permutation(self.members[c])
                           for c in rng.permutation(len(self.members))])
    return np.resize(flat, (self.steps_per_epoch, self.batch_size))

  def batch(self, epoch: int, step: int, state: Any = None) -> np.ndarray:
    del state
    return self._plan(epoch)[step]


def make_sampler(config, labels: np.ndarray, seed: int) -> Sampler:
  """Builds the sampler named by ``config.name`` ('pk', 'random', 'whole_class')."""
  name = config.name
  if name == "pk":
    return PKSampler(labels, config.classes_per_batch, config.images_per_class, seed)
  if name == "random":
    return RandomSampler(len(labels), config.batch_size, seed)
  if name == "whole_class":
    return WholeClassSampler(labels, config.batch_size, seed)
  raise ValueError(f"Unknown sampler {name!r}; expected 'pk', 'random' or 'whole_class'.")
