"""Seeded N-way K-shot episodes for few-shot classification.

An *episode* draws ``n_way`` classes, ``k_shot`` labelled *support* examples
of each and ``n_query`` further *query* examples of each (Omniglot's 20-way
one-shot task of Lake, Salakhutdinov & Tenenbaum, "Human-level concept
learning through probabilistic program induction", Science 2015; Vinyals et
al., "Matching Networks for One Shot Learning", NeurIPS 2016; Snell, Swersky
& Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017).

:func:`make_episodes` draws a fixed, seeded list of episodes from the labels
(optionally within groups, e.g. Omniglot alphabets) as an :class:`Episodes`,
so that several models can be scored on exactly the same episodes by
:func:`dmlx.eval.few_shot.few_shot_accuracy`.

Example::

  eps = make_episodes(labels, n_way=20, k_shot=1, episodes=1000, seed=0)
  print(eps)  # Episodes(1000 x 20-way 1-shot, 1 queries/class, grouped=False)

Everything is NumPy on the host.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "Episodes",
    "make_episodes",
]


def _int_array(name: str, value: Any, ndim: int) -> np.ndarray:
  arr = np.asarray(value)
  if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"Episodes.{name} must be a {ndim}-D integer array, got "
                     f"shape {arr.shape} and dtype {arr.dtype}")
  arr = arr.astype(np.int64, copy=True)
  arr.setflags(write=False)
  return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Episodes:
  """A fixed, seeded list of N-way K-shot episodes (see :func:`make_episodes`).

  Attributes:
    classes: ``[E, n_way]`` label values of each episode's classes, distinct
      within an episode; the position of a class in its row is its *way*.
    support: ``[E, n_way, k_shot]`` row indices into the dataset;
      ``support[e, w]`` are examples of class ``classes[e, w]``.
    query: ``[E, n_way, n_query]`` row indices, likewise per way, disjoint
      from the episode's supports.
    group: ``[E]`` the group value each episode was drawn in, or ``-1`` for
      every episode when the episodes were drawn without groups.

  The arrays are stored as read-only ``int64`` copies. Two ``Episodes`` are
  equal (``==``) when all four arrays are equal.
  """

  classes: np.ndarray
  support: np.ndarray
  query: np.ndarray
  group: np.ndarray

  def __post_init__(self):
    classes = _int_array("classes", self.classes, 2)
    support = _int_array("support", self.support, 3)
    query = _int_array("query", self.query, 3)
    group = _int_array("group", self.group, 1)
    e, n_way = classes.shape
    if (support.shape[:2] != (e, n_way) or query.shape[:2] != (e, n_way)
        or group.shape != (e,)):
      raise ValueError(
          "inconsistent episode shapes: classes "
          f"{classes.shape}, support {support.shape}, query {query.shape}, "
          f"group {group.shape} (want [E, n_way], [E, n_way, k_shot], "
          "[E, n_way, n_query], [E])")
    if e < 1 or n_way < 2 or support.shape[2] < 1 or query.shape[2] < 1:
      raise ValueError(
          "need E >= 1 episodes, n_way >= 2, k_shot >= 1 and n_query >= 1; "
          f"got classes {classes.shape}, support {support.shape}, query "
          f"{query.shape}")
    if np.any(group < -1) or (np.any(group == -1) and np.any(group >= 0)):
      raise ValueError("Episodes.group must be all -1 (ungrouped) or all "
                       f">= 0, got values in [{group.min()}, {group.max()}]")
    if np.any(np.diff(np.sort(classes, axis=1), axis=1) == 0):
      bad = int(np.flatnonzero(
          np.any(np.diff(np.sort(classes, axis=1), axis=1) == 0, axis=1))[0])
      raise ValueError(f"episode {bad} repeats a class: {classes[bad]}")
    rows = np.sort(np.concatenate(
        [support.reshape(e, -1), query.reshape(e, -1)], axis=1), axis=1)
    if np.any(np.diff(rows, axis=1) == 0):
      bad = int(np.flatnonzero(np.any(np.diff(rows, axis=1) == 0, axis=1))[0])
      raise ValueError(f"episode {bad} uses a row twice (its support and "
                       "query examples must be distinct)")
    for name, arr in (("classes", classes), ("support", support),
                      ("query", query), ("group", group)):
      object.__setattr__(self, name, arr)

  @property
  def n_way(self) -> int:
    """Classes per episode."""
    return int(self.classes.shape[1])

  @property
  def k_shot(self) -> int:
    """Support examples per class."""
    return int(self.support.shape[2])

  @property
  def n_query(self) -> int:
    """Query examples per class."""
    return int(self.query.shape[2])

  @property
  def grouped(self) -> bool:
    """Whether the episodes were drawn within groups."""
    return bool(self.group[0] >= 0)

  def __len__(self) -> int:
    return int(self.classes.shape[0])

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Episodes):
      return NotImplemented
    return all(
        np.array_equal(getattr(self, f), getattr(other, f))
        for f in ("classes", "support", "query", "group"))

  __hash__ = None  # type: ignore[assignment]  # mutable-looking, like arrays

  def __repr__(self) -> str:
    return (f"Episodes({len(self)} x {self.n_way}-way {self.k_shot}-shot, "
            f"{self.n_query} queries/class, grouped={self.grouped})")


def _check_int(name: str, value: Any, minimum: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _draw_distinct(rng: np.random.Generator, sizes: np.ndarray,
                   m: int) -> np.ndarray:
  """``[P, m]`` offsets; row p is a uniformly random *ordered* sample of m
  distinct values of ``range(sizes[p])`` (all ``sizes >= m``).

  Vectorised sequential sampling without replacement: the j-th draw is
  uniform over the ``sizes - j`` unused values, mapped to the r-th unused
  value by stepping over the (sorted) values already drawn.
  """
  sizes = np.asarray(sizes, np.int64)
  u = rng.random((len(sizes), m))
  out = np.zeros((len(sizes), m), np.int64)
  for j in range(m):
    left = sizes - j
    r = np.minimum((u[:, j] * left).astype(np.int64), left - 1)
    prev = np.sort(out[:, :j], axis=1)
    for i in range(j):
      r += prev[:, i] <= r
    out[:, j] = r
  return out


def make_episodes(
    labels: np.ndarray,
    *,
    n_way: int,
    k_shot: int,
    n_query: int = 1,
    episodes: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> Episodes:
  """Draws a fixed, seeded list of N-way K-shot episodes.

  The N-way K-shot protocol of Vinyals et al., "Matching Networks for One
  Shot Learning" (NeurIPS 2016) and Snell et al., "Prototypical Networks for
  Few-shot Learning" (NeurIPS 2017); with ``groups`` (e.g. Omniglot's
  alphabet per example) and ``n_way=20, k_shot=1`` the within-alphabet
  20-way one-shot task of Lake et al., "Human-level concept learning through
  probabilistic program induction" (Science 2015).

  Each episode, independently of the others:

  1. without groups, draws ``n_way`` distinct classes uniformly among the
     *eligible* classes (those with at least ``k_shot + n_query`` examples);
     with groups, first draws a group **uniformly among the eligible groups**
     (those with at least ``n_way`` eligible classes; smaller groups are never
     drawn), then ``n_way`` distinct eligible classes uniformly within it;
  2. for each class draws ``k_shot + n_query`` distinct examples uniformly
     without replacement: the first ``k_shot`` are its support, the rest its
     queries (so support and query are disjoint).

  The classes of an episode appear in random order. The result is a pure
  function of ``(labels, groups, n_way, k_shot, n_query, episodes, seed)``:
  the same inputs give identical arrays (``np.random.default_rng(seed)``).

  Args:
    labels: ``[N]`` integer class labels of the dataset.
    n_way: classes per episode, ``>= 2``.
    k_shot: support examples per class, ``>= 1``.
    n_query: query examples per class, ``>= 1``.
    episodes: number of episodes ``E``, ``>= 1``.
    seed: seed of the generator.
    groups: optional ``[N]`` non-negative integer group per example; every
      class must lie in a single group.

  Returns:
    The :class:`Episodes`; ``group`` holds the group of each episode, or -1
    without groups.

  Raises:
    ValueError: on a bad size, labels that are not a 1-D integer array,
      groups of the wrong length or type, a class spanning several groups,
      fewer than ``n_way`` eligible classes, or no group with ``n_way``
      eligible classes.
  """
  n_way = _check_int("n_way", n_way, 2)
  k_shot = _check_int("k_shot", k_shot, 1)
  n_query = _check_int("n_query", n_query, 1)
  episodes = _check_int("episodes", episodes, 1)
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError("labels must be a 1-D integer array, got shape "
                     f"{labels.shape} and dtype {labels.dtype}")
  labels = labels.astype(np.int64)
  per_class = k_shot + n_query

  order = np.argsort(labels, kind="stable")
  class_values, starts, counts = np.unique(
      labels[order], return_index=True, return_counts=True)
  eligible = np.flatnonzero(counts >= per_class)
  if len(eligible) < n_way:
    raise ValueError(
        f"need n_way={n_way} classes with >= k_shot + n_query = {per_class} "
        f"examples, but only {len(eligible)} of {len(class_values)} classes "
        "have that many")

  rng = np.random.default_rng(seed)
  if groups is None:
    episode_group = np.full(episodes, -1, np.int64)
    pick = _draw_distinct(rng, np.full(episodes, len(eligible)), n_way)
    chosen = eligible[pick]  # [E, n_way] indices into class_values
  else:
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != len(labels):
      raise ValueError(f"groups must have shape ({len(labels)},) like labels, "
                       f"got shape {groups.shape}")
    if not np.issubdtype(groups.dtype, np.integer):
      raise ValueError(f"groups must be integers, got dtype {groups.dtype}")
    groups = groups.astype(np.int64)
    if len(groups) and groups.min() < 0:
      raise ValueError(f"groups must be >= 0, got {groups.min()}")
    sorted_groups = groups[order]
    class_group = sorted_groups[starts]
    spans = np.flatnonzero(
        sorted_groups != np.repeat(class_group, counts))
    if len(spans):
      cls = labels[order][spans[0]]
      found = np.unique(groups[labels == cls])
      raise ValueError(f"class {cls} spans several groups {found.tolist()}; "
                       "each class must lie in one group")
    group_values, members = np.unique(class_group[eligible],
                                      return_inverse=True)
    sizes = np.bincount(members, minlength=len(group_values))
    usable = np.flatnonzero(sizes >= n_way)
    if not len(usable):
      raise ValueError(
          f"no group has n_way={n_way} classes with >= k_shot + n_query = "
          f"{per_class} examples (the largest group has {sizes.max()})")
    # Padded table of the eligible classes of each usable group.
    table = np.zeros((len(usable), sizes[usable].max()), np.int64)
    for row, g in enumerate(usable):
      cls = eligible[members == g]
      table[row, :len(cls)] = cls
    g = rng.integers(len(usable), size=episodes)
    episode_group = group_values[usable][g]
    pick = _draw_distinct(rng, sizes[usable][g], n_way)
    chosen = table[g[:, None], pick]

  flat = chosen.reshape(-1)
  offsets = _draw_distinct(rng, counts[flat], per_class)
  rows = order[starts[flat][:, None] + offsets].reshape(
      episodes, n_way, per_class)
  return Episodes(
      classes=class_values[chosen],
      support=rows[:, :, :k_shot],
      query=rows[:, :, k_shot:],
      group=episode_group,
  )
