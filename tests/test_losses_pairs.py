"""Contrastive, N-pair, lifted structured and NCA losses against NumPy loops."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx import losses

from loss_testing import check_grads as _check_grads  # pylint: disable=unused-import
from loss_testing import jit  # pylint: disable=unused-import
from loss_testing import x64  # pylint: disable=unused-import  (autouse fixture)


def _batch(seed=0, sizes=(5, 4, 2, 1), d=5, scale=0.5):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(sizes)), sizes)
  labels = labels[rng.permutation(len(labels))]
  return rng.normal(size=(len(labels), d)) * scale, labels


def _d(x, i, j):
  return np.sqrt(np.sum((x[i] - x[j]) ** 2))


def _ref_contrastive(x, y, pos_margin, neg_margin, squared):
  total, count = 0.0, 0
  for i in range(len(y)):
    for j in range(len(y)):
      if i == j:
        continue
      d = _d(x, i, j) ** 2 if squared else _d(x, i, j)
      if y[i] == y[j]:
        total += max(0.0, d - pos_margin) ** 2
      else:
        total += max(0.0, neg_margin - d) ** 2
      count += 1
  return total / max(count, 1)


def _ref_npair(x, y, l2_reg):
  per_anchor = []
  for a in range(len(y)):
    positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
    if not positives:
      continue
    terms = []
    for p in positives:
      s = sum(np.exp(x[a] @ x[n] - x[a] @ x[p])
              for n in range(len(y)) if y[n] != y[a])
      terms.append(np.log(1.0 + s))
    per_anchor.append(np.mean(terms))
  main = np.mean(per_anchor) if per_anchor else 0.0
  return main + l2_reg * np.mean([x[i] @ x[i] for i in range(len(y))])


def _ref_npair_one_per_class(x, y, l2_reg):
  """Sohn's eq. 3: anchor = each class's first example, positive = its second,
  negatives = the other pairs' positives (as PML's NPairsLoss)."""
  anchors, positives = [], []
  for c in dict.fromkeys(y):  # classes in order of first appearance
    members = [i for i in range(len(y)) if y[i] == c]
    if len(members) >= 2:
      anchors.append(members[0])
      positives.append(members[1])
  terms = []
  for i, a in enumerate(anchors):
    own = x[a] @ x[positives[i]]
    s = sum(np.exp(x[a] @ x[p] - own) for j, p in enumerate(positives)
            if j != i)
    terms.append(np.log(1.0 + s))
  main = np.mean(terms) if terms else 0.0
  return main + l2_reg * np.mean([x[i] @ x[i] for i in range(len(y))])


def _ref_lifted(x, y, margin):
  total, num_pairs = 0.0, 0
  for i in range(len(y)):
    for j in range(i + 1, len(y)):
      if y[i] != y[j]:
        continue
      num_pairs += 1
      s = sum(np.exp(margin - _d(x, i, k)) for k in range(len(y))
              if y[k] != y[i])
      s += sum(np.exp(margin - _d(x, j, l)) for l in range(len(y))
               if y[l] != y[j])
      if s > 0:
        total += max(0.0, np.log(s) + _d(x, i, j)) ** 2
  return total / max(2 * num_pairs, 1)


def _ref_nca(x, y, scale):
  terms = []
  for i in range(len(y)):
    if not any(y[j] == y[i] for j in range(len(y)) if j != i):
      continue
    w = {j: np.exp(-scale * _d(x, i, j) ** 2) for j in range(len(y)) if j != i}
    z = sum(w.values())
    terms.append(-np.log(sum(v for j, v in w.items() if y[j] == y[i]) / z))
  return np.mean(terms) if terms else 0.0


@pytest.mark.parametrize("pos_margin,neg_margin,squared",
                         [(0.0, 1.0, False), (0.3, 1.2, True)])
def test_contrastive_matches_loops(pos_margin, neg_margin, squared):
  x, y = _batch(0)
  loss, aux = jit(functools.partial(
      losses.contrastive, pos_margin=pos_margin, neg_margin=neg_margin,
      squared=squared))(x, y)
  np.testing.assert_allclose(
      loss, _ref_contrastive(x, y, pos_margin, neg_margin, squared),
      rtol=1e-9)
  assert 0 < aux["fraction_active_negative"] <= 1


def test_npair_matches_loops():
  x, y = _batch(1)
  loss, aux = jit(functools.partial(losses.npair, l2_reg=0.01))(x, y)
  np.testing.assert_allclose(loss, _ref_npair(x, y, 0.01), rtol=1e-9)
  np.testing.assert_allclose(aux["npair_loss"], _ref_npair(x, y, 0.0),
                             rtol=1e-9)
  assert 0 <= aux["accuracy"] <= 1


@pytest.mark.parametrize("sizes", [
    (5, 4, 2, 1),           # 3 pairs of 12 examples: the B // 4 table
    (2, 2, 2, 2, 2, 1, 3),  # 6 pairs of 14: more than B // 4, the B // 2 one
    (3, 1),                 # one pair: loss 0
    (1, 1, 1),              # no pair: only the L2 term
])
def test_npair_one_per_class_matches_loops(sizes):
  x, y = _batch(8, sizes=sizes)
  fn = jit(functools.partial(losses.npair, l2_reg=0.01,
                             pairs="one_per_class"))
  loss, aux = fn(x, y)
  np.testing.assert_allclose(loss, _ref_npair_one_per_class(x, y, 0.01),
                             rtol=1e-9)
  np.testing.assert_allclose(aux["npair_loss"],
                             _ref_npair_one_per_class(x, y, 0.0), rtol=1e-9,
                             atol=1e-12)
  assert 0 <= aux["accuracy"] <= 1


def test_npair_one_per_class_matches_pml():
  torch = pytest.importorskip("torch")
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  x, y = _batch(9, sizes=(4, 4, 4, 4, 4, 4, 4, 4), d=8)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)  # PML's cosine similarity
  loss, _ = jit(functools.partial(losses.npair, l2_reg=0.0,
                                  pairs="one_per_class"))(x, y)
  ref = pml_losses.NPairsLoss()(torch.from_numpy(x), torch.from_numpy(y))
  np.testing.assert_allclose(loss, float(ref), rtol=1e-9)


def test_lifted_structure_matches_loops():
  for seed, margin in [(2, 1.0), (3, 0.5)]:
    x, y = _batch(seed)
    loss, aux = jit(losses.lifted_structure)(x, y, margin=margin)
    np.testing.assert_allclose(loss, _ref_lifted(x, y, margin), rtol=1e-9)
    assert loss > 0 and 0 < aux["fraction_active"] <= 1


def test_nca_matches_loops():
  for seed, scale in [(4, 1.0), (5, 3.0)]:
    x, y = _batch(seed)
    loss, aux = jit(losses.nca)(x, y, scale=scale)
    np.testing.assert_allclose(loss, _ref_nca(x, y, scale), rtol=1e-9)


def test_nca_expected_accuracy_is_mean_probability():
  x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
  y = np.array([0, 0, 1])
  _, aux = jit(losses.nca)(x, y)
  np.testing.assert_allclose(aux["expected_accuracy"],
                             (0.5 + 1 / (1 + np.exp(-1))) / 2, rtol=1e-9)


@pytest.mark.parametrize("fn,hyper", [
    (losses.contrastive, {"neg_margin": 2.0}),
    (losses.npair, {}),
    (losses.npair, {"pairs": "one_per_class"}),
    (losses.lifted_structure, {}),
    (losses.nca, {}),
])
def test_gradients(fn, hyper):
  x, y = _batch(6)
  _check_grads(lambda x: fn(x, y, **hyper)[0], (x,))


def test_lifted_far_negatives_are_stable():
  # exp(alpha - D) underflows for D ~ 1e3; the log-sum-exp form must not.
  x, y = _batch(7, scale=200.0)
  loss, _ = jit(losses.lifted_structure)(x, y)
  grad = jit(jax.grad(lambda x: losses.lifted_structure(x, y)[0]))(x)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(loss, _ref_lifted_log(x, y, 1.0), rtol=1e-9)


def _ref_lifted_log(x, y, margin):
  """Loop reference in log space (plain exp underflows at these distances)."""
  total, num_pairs = 0.0, 0
  for i in range(len(y)):
    for j in range(i + 1, len(y)):
      if y[i] != y[j]:
        continue
      num_pairs += 1
      logs = [margin - _d(x, i, k) for k in range(len(y)) if y[k] != y[i]]
      logs += [margin - _d(x, j, l) for l in range(len(y)) if y[l] != y[j]]
      if logs:
        m = max(logs)
        lse = m + np.log(sum(np.exp(v - m) for v in logs))
        total += max(0.0, lse + _d(x, i, j)) ** 2
  return total / max(2 * num_pairs, 1)


def test_bad_hyper_parameters():
  x, y = _batch(0)
  with pytest.raises(ValueError, match="scale"):
    losses.nca(x, y, scale=0.0)
  with pytest.raises(ValueError, match="neg_margin"):
    losses.contrastive(x, y, neg_margin=-1.0)
  with pytest.raises(ValueError, match="l2_reg"):
    losses.npair(x, y, l2_reg=-0.1)
  with pytest.raises(ValueError, match="pairs"):
    losses.npair(x, y, pairs="some")


def test_gradient_check_detects_a_wrong_gradient():
  x, _ = _batch(0)
  _check_grads(lambda x: jnp.sum(jnp.sin(x)), (x,))
  with pytest.raises(AssertionError):
    _check_grads(lambda x: jnp.sum(jnp.sin(x)) + jax.lax.stop_gradient(
        jnp.sum(x ** 3)), (x,))


@pytest.mark.parametrize("labels", [
    np.arange(16) // 2, np.arange(16) // 4,
    np.random.default_rng(3).integers(0, 3, size=16),   # overflows 7
    np.zeros(16, int)])                                  # no negatives at all
def test_lifted_positive_table_gives_the_full_matrix_values_and_gradients(
    labels):
  # The pair terms on the positive table (any width the switch picks) and on
  # the whole [B, B] matrix (max_positives=None) agree in value and gradient.
  x = np.random.default_rng(1).normal(size=(16, 3)) * 0.5
  y = jnp.asarray(labels)

  def value(x, max_positives):
    return losses.lifted_structure(x, y, max_positives=max_positives)[0]

  table = jax.value_and_grad(value)(x, 7)
  exact = jax.value_and_grad(value)(x, None)
  np.testing.assert_allclose(table[0], exact[0], rtol=1e-9)
  np.testing.assert_allclose(table[1], exact[1], rtol=1e-7, atol=1e-12)
  np.testing.assert_allclose(exact[0], _ref_lifted(x, labels, 1.0), rtol=1e-9)
  if labels.max() > 0:
    assert np.abs(exact[1]).max() > 1e-3
  _check_grads(lambda x: value(x, None), (x,))
