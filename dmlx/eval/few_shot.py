"""N-way K-shot few-shot classification accuracy of embeddings.

Few-shot classification is a standard use of a learned metric: every query of
an *episode* is classified among the episode's ``n_way`` classes using its
``k_shot`` supports per class only, and the accuracy is averaged over many
episodes (Omniglot's 20-way one-shot task of Lake, Salakhutdinov & Tenenbaum,
"Human-level concept learning through probabilistic program induction",
Science 2015; Vinyals et al., "Matching Networks for One Shot Learning",
NeurIPS 2016; Snell, Swersky & Zemel, "Prototypical Networks for Few-shot
Learning", NeurIPS 2017).

:func:`few_shot_accuracy` scores embeddings on fixed episodes with a
1-nearest-neighbour or a nearest-prototype classifier, vectorised over
episodes in memory-bounded chunks. The episodes come from
:func:`make_episodes` (:mod:`dmlx.eval.episodes`, re-exported here with
:class:`Episodes`).

Example::

  eps = make_episodes(labels, n_way=20, k_shot=1, episodes=1000, seed=0)
  res = few_shot_accuracy(embeddings, labels, eps)
  print(res)  # 20-way 1-shot (nearest, l2): 0.912 ± 0.011 (1000 episodes)

Everything is NumPy on the host; the embeddings may be any array convertible
with ``np.asarray`` (a JAX array included).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from dmlx.eval.episodes import Episodes, make_episodes

__all__ = [
    "CLASSIFIERS",
    "METRICS",
    "Episodes",
    "FewShotResult",
    "few_shot_accuracy",
    "make_episodes",
]

Classifier = Literal["nearest", "prototype"]
Metric = Literal["l2", "cosine"]

CLASSIFIERS: tuple[str, ...] = ("nearest", "prototype")
METRICS: tuple[str, ...] = ("l2", "cosine")

# Upper bound on the elements materialised per chunk of episodes (gathered
# supports + queries + the distance tables): 2**23 (32 MiB in float32).
_CHUNK_ELEMENTS = 2**23


@dataclasses.dataclass(frozen=True, eq=False)
class FewShotResult:
  """Few-shot accuracy over a list of episodes.

  Attributes:
    accuracy: mean over episodes of the per-episode accuracy.
    ci95: half-width of the 95% normal confidence interval of the mean,
      ``1.96 * std(per_episode, ddof=1) / sqrt(E)`` (0 for one episode).
    per_episode: ``[E]`` fraction of each episode's ``n_way * n_query``
      queries classified correctly.
    n_way, k_shot, n_query: the episode sizes.
    classifier: ``'nearest'`` or ``'prototype'``.
    metric: ``'l2'`` or ``'cosine'``.
    grouped: whether the episodes were drawn within groups.
  """

  accuracy: float
  ci95: float
  per_episode: np.ndarray
  n_way: int
  k_shot: int
  n_query: int
  classifier: str
  metric: str
  grouped: bool

  @property
  def episodes(self) -> int:
    """Number of episodes."""
    return int(len(self.per_episode))

  def as_dict(self) -> dict[str, Any]:
    """JSON-able summary (plain floats, ints, strs and a bool), without
    ``per_episode``."""
    return {
        "accuracy": float(self.accuracy),
        "ci95": float(self.ci95),
        "episodes": self.episodes,
        "n_way": int(self.n_way),
        "k_shot": int(self.k_shot),
        "n_query": int(self.n_query),
        "classifier": str(self.classifier),
        "metric": str(self.metric),
        "grouped": bool(self.grouped),
    }

  def __str__(self) -> str:
    return (f"{self.n_way}-way {self.k_shot}-shot ({self.classifier}, "
            f"{self.metric}): {self.accuracy:.3f} \u00b1 {self.ci95:.3f} "
            f"({self.episodes} episodes)")


def _check_embeddings(embeddings: Any, labels: np.ndarray) -> np.ndarray:
  emb = np.asarray(embeddings)
  if emb.dtype.name == "bfloat16":
    emb = emb.astype(np.float32)
  if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
    raise ValueError("embeddings must be a 2-D float array, got shape "
                     f"{emb.shape} and dtype {emb.dtype}")
  if len(emb) != len(labels):
    raise ValueError(f"embeddings has {len(emb)} rows but labels has "
                     f"{len(labels)}")
  bad = int(np.count_nonzero(~np.isfinite(emb).all(axis=1)))
  if bad:
    raise ValueError(f"embeddings has {bad} row(s) with non-finite values")
  return emb


def _normalise(x: np.ndarray) -> np.ndarray:
  norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
  return x / np.maximum(norm, np.finfo(x.dtype).tiny)


def _predict_ways(emb: np.ndarray, support: np.ndarray, query: np.ndarray,
                  classifier: str, metric: str) -> np.ndarray:
  """Predicted way ``[c, n_way * n_query]`` of each query of a chunk of
  episodes (queries in way-major order)."""
  c, n_way, k_shot = support.shape
  dtype = np.result_type(emb.dtype, np.float32)
  s = emb[support.reshape(c, -1)].astype(dtype, copy=False)  # [c, S, D]
  q = emb[query.reshape(c, -1)].astype(dtype, copy=False)  # [c, Q, D]
  if metric == "cosine":
    s = _normalise(s)
  if classifier == "prototype":
    s = s.reshape(c, n_way, k_shot, -1).mean(axis=2)  # Snell et al., eq. 1
    if metric == "cosine":
      s = _normalise(s)
  dots = np.matmul(q, np.ascontiguousarray(s.transpose(0, 2, 1)))  # [c, Q, S]
  if metric == "l2":
    # ||q - s||^2 up to the per-query constant ||q||^2.
    dist = np.einsum("csd,csd->cs", s, s)[:, None, :] - 2 * dots
  else:
    # -cos(q, s) up to the per-query factor 1 / ||q|| (> 0), so the queries
    # need not be normalised; an all-zero query ties everywhere.
    dist = -dots
  nearest = np.argmin(dist, axis=-1)  # first (lowest) index among ties
  return nearest // k_shot if classifier == "nearest" else nearest


def few_shot_accuracy(
    embeddings: np.ndarray,
    labels: np.ndarray,
    episodes: Episodes,
    *,
    classifier: Classifier = "nearest",
    metric: Metric = "l2",
) -> FewShotResult:
  """N-way K-shot classification accuracy of embeddings on fixed episodes.

  Each query of an episode is classified among the episode's ``n_way``
  classes from the supports only:

  * ``'nearest'``: the label of its nearest support example (1-NN over the
    ``n_way * k_shot`` supports; with ``k_shot=1`` the classic one-shot rule
    of Lake et al., Science 2015, and of matching networks' nearest-neighbour
    baseline, Vinyals et al., NeurIPS 2016);
  * ``'prototype'``: the nearest class prototype, the mean of the class's
    support embeddings (Snell et al., "Prototypical Networks for Few-shot
    Learning", NeurIPS 2017, eq. 1). With ``metric='cosine'`` the prototype
    is the mean of the L2-normalised supports, compared by cosine.

  Distances: ``'l2'`` is the squared Euclidean distance; ``'cosine'``
  L2-normalises the features first and ranks by cosine similarity (an
  all-zero row stays zero). Ties between exactly equal distances go to the
  lowest index: the support listed first in ``support[e]`` (way-major) for
  ``'nearest'``, the way listed first in ``classes[e]`` for ``'prototype'``.
  The arithmetic is in the embeddings' float dtype (at least float32) and
  vectorised over episodes, in chunks that keep the temporaries to about
  2**23 elements.

  Args:
    embeddings: ``[N, D]`` float embeddings of the dataset.
    labels: ``[N]`` integer labels, those the episodes were drawn from.
    episodes: the :class:`Episodes` from :func:`make_episodes`.
    classifier: ``'nearest'`` or ``'prototype'``.
    metric: ``'l2'`` or ``'cosine'``.

  Returns:
    A :class:`FewShotResult`.

  Raises:
    ValueError: on bad embeddings (not 2-D float, wrong length, non-finite
      rows), an unknown classifier or metric, episode indices out of range,
      or episodes whose classes disagree with ``labels``.
  """
  if classifier not in CLASSIFIERS:
    raise ValueError(f"unknown classifier {classifier!r}; choose one of "
                     f"{list(CLASSIFIERS)}")
  if metric not in METRICS:
    raise ValueError(f"unknown metric {metric!r}; choose one of "
                     f"{list(METRICS)}")
  if not isinstance(episodes, Episodes):
    raise ValueError("episodes must be an Episodes (see make_episodes), got "
                     f"{type(episodes).__name__}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError("labels must be a 1-D integer array, got shape "
                     f"{labels.shape} and dtype {labels.dtype}")
  emb = _check_embeddings(embeddings, labels)
  n = len(labels)
  for name in ("support", "query"):
    idx = getattr(episodes, name)
    if idx.min() < 0 or idx.max() >= n:
      bad = idx.min() if idx.min() < 0 else idx.max()
      raise ValueError(f"episodes.{name} has row index {bad} out of range "
                       f"[0, {n})")
    wrong = int(np.count_nonzero(labels[idx] != episodes.classes[:, :, None]))
    if wrong:
      raise ValueError(f"episodes.{name} has {wrong} row(s) whose label is not "
                       "their episode's class; were the episodes drawn from "
                       "these labels?")

  e, n_way, k_shot, n_query = (len(episodes), episodes.n_way, episodes.k_shot,
                               episodes.n_query)
  n_sup, n_qry, dim = n_way * k_shot, n_way * n_query, emb.shape[1]
  per_episode_elems = (n_sup + n_qry) * (dim + 1) + 2 * n_qry * n_sup
  chunk = max(1, _CHUNK_ELEMENTS // per_episode_elems)
  truth = np.repeat(np.arange(n_way), n_query)  # way of each query
  correct = np.empty(e, np.int64)
  for start in range(0, e, chunk):
    stop = min(e, start + chunk)
    ways = _predict_ways(emb, episodes.support[start:stop],
                         episodes.query[start:stop], classifier, metric)
    correct[start:stop] = np.count_nonzero(ways == truth, axis=1)
  per_episode = correct / n_qry
  per_episode.setflags(write=False)
  ci95 = (1.96 * float(np.std(per_episode, ddof=1)) / np.sqrt(e)
          if e > 1 else 0.0)
  return FewShotResult(
      accuracy=float(per_episode.mean()),
      ci95=float(ci95),
      per_episode=per_episode,
      n_way=n_way,
      k_shot=k_shot,
      n_query=n_query,
      classifier=classifier,
      metric=metric,
      grouped=episodes.grouped,
  )
