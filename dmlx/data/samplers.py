"""Batch samplers: deterministic functions of (seed, step).

A sampler answers ``batch(step, state=None) -> indices [B]`` for the global
step and knows ``steps_per_epoch``; epoch ``step // steps_per_epoch`` has a
plan that is a pure function of the seed and the epoch number, so a resumed
run recomputes exactly the batches it would have seen: the sampler position
*is* the global step, and every process of a multi-process run agrees on the
global batch without talking. ``state`` is the method's host state, read by
samplers that depend on it (Magnet's neighbourhoods).

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
* :class:`ProportionalPKSampler`: P classes drawn in proportion to their
  size, K images each (Vo & Hays's code).
"""
from __future__ import annotations

import collections
import functools
import os
from typing import Any, Protocol

import numpy as np

from dmlx import registry


class Sampler(Protocol):
  steps_per_epoch: int
  batch_size: int

  def batch(self, step: int, state: Any = None) -> np.ndarray:
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

  def batch(self, step: int, state: Any = None) -> np.ndarray:
    """The training rows of global step ``step``."""
    del state
    epoch, within = divmod(int(step), self.steps_per_epoch)
    return self._plan(epoch)[within]


class PKSampler:
  """P classes × K images per class, every example visited each epoch.

  Each class's shuffled examples are cut into groups of K; the last group of
  a class whose size is not a multiple of K is completed with other examples
  of that class, and a class with fewer than K examples repeats some of them
  (drawn with replacement), so such a batch holds the same image more than
  once (a zero-distance positive pair). ``short_classes`` counts those
  classes; the training loop logs it.

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
    self.short_classes = sum(len(m) < self.K for m in self.members)
    self.batch_size = self.P * self.K
    self.seed = seed
    groups = [-(-len(m) // self.K) for m in self.members]
    # A batch takes at most one group of a class: a class of g groups needs
    # g batches, however few groups the others have.
    self.steps_per_epoch = max(-(-sum(groups) // self.P), max(groups))

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

  def batch(self, step: int, state: Any = None) -> np.ndarray:
    """The training rows of global step ``step``."""
    del state
    epoch, within = divmod(int(step), self.steps_per_epoch)
    return self._plan(epoch)[within]


class ProportionalPKSampler:
  """P classes drawn in proportion to their size without replacement, K
  images of each without replacement: the sampler of Vo & Hays's code
  (``np.random.choice(classes, P, replace=False, p=n_c / N)``, classes of one
  image never drawn). Unlike :class:`PKSampler` it does not visit every
  example each epoch; an epoch is ⌈N / (P·K)⌉ steps. Step ``s`` uses
  ``default_rng([seed, s])``.
  """

  def __init__(self, labels: np.ndarray, classes_per_batch: int,
               images_per_class: int, seed: int = 0):
    labels = np.asarray(labels)
    self.members = [m for m in _class_members(labels) if len(m)]
    sizes = np.array([len(m) for m in self.members], np.float64)
    sizes[sizes < 2] = 0.0                      # as the authors: n = 1 → 0
    if images_per_class < 1:
      raise ValueError(f"images_per_class (K) must be >= 1, got {images_per_class}.")
    drawable = int(np.sum(sizes > 0))
    if classes_per_batch < 1 or classes_per_batch > drawable:
      raise ValueError(
          f"classes_per_batch (P) = {classes_per_batch} must be between 1 and "
          f"the number of classes with two or more images ({drawable}).")
    self.p = sizes / sizes.sum()
    self.P, self.K, self.seed = classes_per_batch, images_per_class, seed
    self.batch_size = self.P * self.K
    self.steps_per_epoch = -(-len(labels) // self.batch_size)

  def batch(self, step: int, state: Any = None) -> np.ndarray:
    """The training rows of global step ``step``."""
    del state
    rng = np.random.default_rng([self.seed, int(step)])
    classes = rng.choice(len(self.members), self.P, replace=False, p=self.p)
    return np.concatenate([
        rng.choice(self.members[c], self.K, replace=len(self.members[c]) < self.K)
        for c in classes])


class WholeClassSampler:
  """Whole classes accumulated until the batch is full (DML-DA on SOP).

  DML-DA (Li et al., 2019, Sec. IV-A) builds each SOP batch "by accumulating
  all the images for randomly sampled classes until the maximum size of
  mini-batch is achieved", so that every class in a batch has a measurable
  density (eq. 5). Classes are visited in a shuffled order and packed into
  batches of exactly ``batch_size``, with **every class in a batch holding at
  least two of its images**:

  * a class that fits in the space left goes in whole, unless it would leave
    exactly one free slot (no class could use it); the next class of the
    shuffled order that fits is taken instead;
  * a class larger than the space left is cut, the cut never leaving a single
    image on either side (its rest starts the next batch, so classes stay
    contiguous in the epoch's order);
  * a class with a single image is shown twice (as :class:`PKSampler`
    completes short classes by repetition);
  * the last batch is completed with repeats of its own images.

  Every example is visited once per epoch. Where the packing leaves a hole
  (every class left has one image more or fewer than the space left, which
  needs small batches or few classes), the hole is filled with repeats of the
  batch's images. ``steps_per_epoch`` is ceil(N / batch_size) (single-image
  classes counted twice), or the length of epoch 0's packing if that needs
  more; an epoch whose packing is longer is drawn again in another order, and
  one that is shorter is completed with extra batches of whole classes.

  Args:
    labels: ``[N]`` integer labels of the training set.
    batch_size: images per batch (>= 2).
    seed: base seed; epoch ``e`` uses ``default_rng([seed, e])``.
  """

  MAX_ORDERS = 100

  def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0):
    labels = np.asarray(labels)
    if batch_size < 2:
      raise ValueError(f"WholeClassSampler needs batch_size >= 2 (two images "
                       f"of each class), got {batch_size}.")
    if len(labels) < 1:
      raise ValueError("WholeClassSampler needs a non-empty training set.")
    # A single-image class counts twice: it is shown with a repeat.
    self.members = [m if len(m) > 1 else np.repeat(m, 2)
                    for m in _class_members(labels) if len(m)]
    self.batch_size = batch_size
    self.seed = seed
    total = sum(len(m) for m in self.members)
    first = len(self._pack(np.random.default_rng([seed, 0])))
    self.steps_per_epoch = max(-(-total // batch_size), first)

  def _pack(self, rng: np.random.Generator) -> list[np.ndarray]:
    """One packing of all classes in a random order."""
    order = rng.permutation(len(self.members))
    return _pack_classes([rng.permutation(self.members[c]) for c in order],
                         self.batch_size)

  @functools.lru_cache(maxsize=2)
  def _plan(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    for _ in range(self.MAX_ORDERS):
      batches = self._pack(rng)
      if len(batches) <= self.steps_per_epoch:
        break
    else:
      raise ValueError(
          f"WholeClassSampler: could not pack classes of sizes "
          f"{sorted({len(m) for m in self.members})} into "
          f"{self.steps_per_epoch} batches of {self.batch_size} with >= 2 "
          f"images per class in {self.MAX_ORDERS} orders; change batch_size.")
    while len(batches) < self.steps_per_epoch:  # extra whole-class batches
      batches += self._pack(rng)[:self.steps_per_epoch - len(batches)]
    return np.stack(batches)

  def batch(self, step: int, state: Any = None) -> np.ndarray:
    """The training rows of global step ``step``."""
    del state
    epoch, within = divmod(int(step), self.steps_per_epoch)
    return self._plan(epoch)[within]


def _fits(n: int, k: int, space: int) -> bool:
  """Whether ``k`` of a class's ``n`` remaining images may go into a batch
  with ``space`` free slots: at least two of them, and neither the batch
  left with one free slot nor the class with one image for later."""
  return 2 <= k <= min(n, space) and n - k != 1 and space - k != 1


def _choose(queue: collections.deque, space: int) -> tuple[int, int]:
  """``(position, count)`` of the next piece: the first class of the queue
  that goes in whole (or fills the batch), else the first that can be cut
  somewhere; ``(0, 0)`` when none can."""
  for pos, members in enumerate(queue):
    if _fits(len(members), min(len(members), space), space):
      return pos, min(len(members), space)
  for pos, members in enumerate(queue):
    for k in range(min(len(members), space) - 1, 1, -1):
      if _fits(len(members), k, space):
        return pos, k
  return 0, 0


def _pack_classes(classes: list[np.ndarray], batch_size: int
                  ) -> list[np.ndarray]:
  """Packs ``classes`` (index arrays of >= 2 images, in visiting order) into
  batches of ``batch_size`` with >= 2 images of every class in a batch. The
  rest of a class cut at a batch's end goes first into the next batch."""
  queue = collections.deque(classes)
  batches, current, space = [], [], batch_size
  while queue:
    pos, k = _choose(queue, space)
    if k:
      members = queue[pos]
      del queue[pos]
      current.append(members[:k])
      space -= k
      if k < len(members):
        queue.appendleft(members[k:])
    elif current:  # a hole: fill it with repeats of the batch's own images
      current.append(np.resize(np.concatenate(current), space))
      space = 0
    else:  # nothing fits an empty batch (tiny batch_size): use repeats
      members = queue.popleft()
      piece, rest = members[:space], members[space:]
      current.append(np.resize(piece, space))
      space = 0
      if len(rest):  # a single leftover image is shown with a repeat
        queue.appendleft(rest if len(rest) > 1 else
                         np.concatenate([rest, piece[:1]]))
    if space == 0:
      batches.append(np.concatenate(current))
      current, space = [], batch_size
  if current:  # complete the last batch with repeats of its own images
    batches.append(np.resize(np.concatenate(current), batch_size))
  return batches


SAMPLERS = registry.Registry("sampler.name", {
    "pk": lambda cfg, labels, seed: PKSampler(
        labels, cfg.classes_per_batch, cfg.images_per_class, seed),
    "random": lambda cfg, labels, seed: RandomSampler(
        len(labels), cfg.batch_size, seed),
    "whole_class": lambda cfg, labels, seed: WholeClassSampler(
        labels, cfg.batch_size, seed),
    "proportional_pk": lambda cfg, labels, seed: ProportionalPKSampler(
        labels, cfg.classes_per_batch, cfg.images_per_class, seed),
})


# The samplers whose batch is P x K (classes_per_batch x images_per_class).
_PK_SAMPLERS = ("pk", "proportional_pk")


def batch_size(config) -> int:
  """Images per batch of the sampler that ``config`` (``config.sampler``)
  names: P x K for the P x K samplers, ``batch_size`` for the others."""
  if config.name in _PK_SAMPLERS:
    return int(config.classes_per_batch) * int(config.images_per_class)
  return int(config.batch_size)


def check_batch_fits(config, image_shape: tuple[int, ...]) -> None:
  """Raises ``ValueError`` naming the keys when one batch of ``config``'s
  sampler, as float32 images of ``image_shape``, would need more memory than
  this machine has: a typo such as ``images_per_class=10**9`` would otherwise
  be found only when the first epoch's index arrays (8 GB) are drawn, or by
  the kernel's OOM killer."""
  size = batch_size(config)
  need = size * int(np.prod(image_shape)) * 4
  try:
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):   # not a POSIX system
    return
  if need <= have:
    return
  keys = ("config.sampler.classes_per_batch x config.sampler.images_per_class"
          if config.name in _PK_SAMPLERS else
          "config.sampler.batch_size")
  raise ValueError(f"{keys} = {size} images a batch: {need / 2**30:.3g} GiB "
                   f"of {tuple(image_shape)} float32 images, more than this "
                   f"machine's {have / 2**30:.3g} GiB of memory.")


def make_sampler(config, labels: np.ndarray, seed: int) -> Sampler:
  """Builds the sampler named by ``config.name`` (:data:`SAMPLERS`) over
  ``labels`` from the fields of ``config`` (``config.sampler``)."""
  return SAMPLERS.get(config.name)(config, labels, seed)
