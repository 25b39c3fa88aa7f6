"""DML-DA through the real trainer: the target densities α_c (DML-DA eq. 9's
learnable parameters) move during training, and they and the original
densities D⁽⁰⁾ are written to the checkpoint and restored from it."""
from __future__ import annotations

import jax
import numpy as np

import configs
from dmlx import train
from dmlx.methods import dmlda
from dmlx.train import checkpoint as ckpt_lib
from dmlx.train import loop


def _tiny_config():
  c = configs.load("dmlda.py:loss=contrastive,dataset=procedural")
  c.data.options.num_classes = 8
  c.data.options.per_class = 8
  c.data.image_size = 12
  c.data.crop_size = 0
  c.sampler.classes_per_batch = 4
  c.sampler.images_per_class = 4
  c.model.backbone_kwargs.width = 8
  c.model.backbone_kwargs.num_blocks = 2
  c.model.embedding_dim = 8
  c.optim.lr = 1e-2
  c.train.epochs = 2
  c.train.steps_per_epoch = 3
  c.train.progress = False
  c.train.tensorboard = False
  c.eval.untrained_baseline = False
  c.eval.train_subset = 32
  c.eval.ks = (1, 2)
  c.eval.metrics = ("recall",)
  return c


def test_target_density_moves_and_is_checkpointed(tmp_path, monkeypatch):
  config = _tiny_config()
  saved = {}
  original_save = ckpt_lib.Checkpointer.save

  def spy(self, step, state):
    host = jax.device_get(state["train"])
    saved[step] = (np.array(host.params["method"]["target_density"]),
                   np.array(host.method_state.original_density))
    original_save(self, step, state)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", spy)
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  assert final["steps"] == 6 and sorted(saved) == [3, 6]

  alpha_init = np.full(4, config.method.alpha_init, np.float32)
  (alpha3, d0_3), (alpha6, d0_6) = saved[3], saved[6]
  assert alpha3.shape == (4,)          # one α_c per training class
  # α_c is trained: it moves from its initial value, and keeps moving.
  assert np.all(np.abs(alpha3 - alpha_init) > 1e-3), alpha3
  assert np.all(np.abs(alpha6 - alpha3) > 1e-3), (alpha3, alpha6)
  # D0 is measured once before training and then held fixed.
  np.testing.assert_array_equal(d0_3, d0_6)
  assert np.all(d0_3 > 0)

  # Restoring the workdir gives exactly what was saved last.
  restored = train.restore(config, workdir)
  assert restored.step == 6
  assert isinstance(restored.state.method_state, dmlda.DensityState)
  np.testing.assert_array_equal(
      np.asarray(restored.state.params["method"]["target_density"]), alpha6)
  np.testing.assert_array_equal(
      np.asarray(restored.state.method_state.original_density), d0_6)
  restored.close()
