"""NNGK's centre bank kept on the host (``config.method.bank_placement =
'host'``, for a bank larger than a device's memory): each batch carries its
rows' neighbour centres, the loss and its gradients are those of the bank on
the device, and the device state holds nothing of size N."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmlx.losses import CentreBank
from dmlx.methods import nngk as nngk_method
from dmlx.methods.base import ModelInfo


def _bank(n=40, d=6, k=7, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(n, d)).astype(np.float32)
  labels = rng.integers(0, 5, n).astype(np.int32)
  bank, _ = nngk_method.build_bank(centres, labels, num_neighbours=k)
  mask = bank.mask.copy()
  mask[3, -2:] = False                # some padding, as an approximate index leaves
  return CentreBank(centres=bank.centres, labels=bank.labels,
                    neighbours=bank.neighbours, mask=mask)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_host_bank_gives_the_device_banks_loss_and_gradients(reduction):
  bank = _bank()
  rows = np.array([3, 0, 17, 17, 39, 8])        # a repeated row, the padded row
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(len(rows), 6)), jnp.float32)
  params = {"weights": jnp.asarray(rng.uniform(0.5, 1.5, 40), jnp.float32)}
  batch = {"labels": jnp.asarray(bank.labels[rows]), "index": jnp.asarray(rows)}
  on_device = nngk_method.Config(reduction=reduction, sigma=1.0, num_neighbours=7)
  on_host = nngk_method.Config(reduction=reduction, sigma=1.0, num_neighbours=7,
                               bank_placement="host")
  extra = nngk_method.batch_inputs(on_host, bank, rows)
  assert nngk_method.batch_inputs(on_device, bank, rows) == {}
  assert extra["bank_centres"].shape == (6, 7, 6)

  def device_loss(p, x):
    return nngk_method.loss(on_device, p, {"embedding": x}, batch,
                            jax.tree_util.tree_map(jnp.asarray, bank), None)

  def host_loss(p, x):
    return nngk_method.loss(on_host, p, {"embedding": x},
                            {**batch, **jax.tree_util.tree_map(jnp.asarray, extra)},
                            (), None)

  (a, aux_a), grads_a = jax.value_and_grad(device_loss, (0, 1), has_aux=True)(params, x)
  (b, aux_b), grads_b = jax.value_and_grad(host_loss, (0, 1), has_aux=True)(params, x)
  np.testing.assert_allclose(b, a, rtol=1e-6)
  for key in aux_a:
    np.testing.assert_allclose(aux_b[key], aux_a[key], rtol=1e-6, err_msg=key)
  for g_a, g_b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
    np.testing.assert_allclose(g_b, g_a, rtol=1e-5, atol=1e-7)
  # Row 3's own centre never counts, and its padding stays out.
  own = extra["bank_neighbours"] == rows[:, None]
  assert not np.any(extra["bank_mask"] & own)
  assert not extra["bank_mask"][0, -2:].any()


def test_host_placement_keeps_the_bank_out_of_the_device_state():
  info = ModelInfo(num_classes=5, num_train=1000, embedding_dim=16)
  host = nngk_method.init_state(nngk_method.Config(bank_placement="host", num_neighbours=9), info)
  device = nngk_method.init_state(nngk_method.Config(num_neighbours=9), info)
  assert jax.tree_util.tree_leaves(host.device) == []
  assert host.host.centres.shape == device.device.centres.shape == (1000, 16)
  with pytest.raises(ValueError, match="bank_placement.*'disk'"):
    nngk_method.Config(bank_placement="disk")


@pytest.mark.slow
def test_a_run_with_the_bank_on_the_host_trains_as_with_it_on_the_device(tmp_path):
  """Two epochs of the tiny NNGK config, bank refreshes included: the same
  network either way; the host bank is checkpointed as host state."""
  import tiny_configs  # pylint: disable=g-import-not-at-top
  from dmlx import inference  # pylint: disable=g-import-not-at-top
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  from dmlx import train  # pylint: disable=g-import-not-at-top
  finals = {}
  for placement in ("device", "host"):
    c = tiny_configs.method_config("nngk", steps=3, epochs=2)
    c.method.bank_placement = placement
    finals[placement] = loop.train_and_evaluate(c, str(tmp_path / placement))
  for split in ("train", "test"):
    assert (finals["host"]["trained"][split]["embedding"]
            == pytest.approx(finals["device"]["trained"][split]["embedding"]))
  a = jax.tree_util.tree_leaves(inference.read_workdir(str(tmp_path / "device")).variables)
  b = jax.tree_util.tree_leaves(inference.read_workdir(str(tmp_path / "host")).variables)
  assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) < 1e-5
  c.method.bank_placement = "host"
  restored = train.restore(c, str(tmp_path / "host"))
  assert restored.host.centres.shape[0] == len(restored.run.train)
  assert np.abs(restored.host.centres).sum() > 0        # the refreshed bank, not zeros
  restored.close()
