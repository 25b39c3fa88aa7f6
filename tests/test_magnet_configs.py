"""Magnet's configs (Rippel et al., 2016, Appendix B) and one short run of
``configs/magnet.py:dataset=procedural`` through the generic trainer: the
Magnet sampler, the on-device loss caching, the epoch refresh and the kNC /
kNN evaluation all wired together."""
from __future__ import annotations

import re

import pytest

import configs
from configs import magnet as magnet_configs
from dmlx.methods import magnet

# Appendix B, Table 1 (Magnet): K, gap α, learning rate.
APPENDIX_B = {
    "pets": ("pets", 8, 7.18, 0.00184),
    "flowers": ("flowers102", 1, 2.43, 0.0240),
    "dogs": ("dogs", 1, 0.710, 0.00292),
}


def _config(dataset):
  return configs.load(f"magnet.py:dataset={dataset}"), magnet_configs.__doc__


@pytest.mark.parametrize("name", sorted(APPENDIX_B))
def test_dataset_configs_follow_appendix_b(name):
  config, doc = _config(name)
  data, k, alpha, lr = APPENDIX_B[name]
  assert config.data.name == data and config.data.split == "predefined"
  assert (config.method.name, config.method.M, config.method.D) == ("magnet",
                                                                    12, 4)
  assert config.method.K == k and config.method.L == 128
  assert config.method.alpha == pytest.approx(alpha)
  assert config.optim.lr == pytest.approx(lr)
  assert (config.optim.name, config.optim.momentum) == ("sgd", 0.9)
  assert config.model.embedding_dim == 1024
  assert config.model.backbone in ("bn_inception", "googlenet", "resnet50")
  assert config.model.pretrained == ""
  assert "--config=configs/magnet.py:dataset=dogs" in doc
  opts = magnet.METHOD.settings(config)
  assert (opts.K, opts.alpha) == (k, pytest.approx(alpha))


def test_command_line_overrides_of_defaults_keep_int_type():
  config, _ = _config("procedural")
  # 0 means "the default" so the fields stay ints on the command line.
  assert config.method.knn_k == 0 and config.method.steps_per_epoch == 0
  assert magnet.METHOD.settings(config).knn_k == 0
  with pytest.raises(ValueError, match="knn_k"):
    magnet.Config(knn_k=-1)


def _tiny(config, split, workdir):
  config.data.split = split
  config.data.options.num_classes = 16
  config.data.options.per_class = 12
  config.data.image_size = 16
  config.model.backbone_kwargs.width = 8
  config.model.backbone_kwargs.num_blocks = 2
  config.model.embedding_dim = 16
  config.method.K = 2
  config.method.M = 4
  config.method.L = 16
  config.train.epochs = 2
  config.train.steps_per_epoch = 3
  config.train.progress = False
  config.train.tensorboard = False
  config.eval.untrained_baseline = False
  config.eval.train_subset = 64
  config.eval.metrics = ("recall",)
  config.eval.ks = (1,)
  return config


def test_procedural_config_trains_end_to_end(tmp_path):
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  config, _ = _config("procedural")
  final = loop.train_and_evaluate(
      _tiny(config, "classification", str(tmp_path / "cls")),
      str(tmp_path / "cls"))
  assert final["steps"] == 6
  # kNC and soft kNN (eq. 6), and the trainer's 1-NN accuracy.
  assert set(final["method"]) == {"knc_accuracy", "knn_accuracy",
                                  "1nn_accuracy"}
  for value in final["method"].values():
    assert 0.0 <= value <= 1.0
  log = (tmp_path / "cls" / "train.log").read_text()
  # Refreshed at the start of epoch 2; the running σ² differs from the
  # index's eq. 4 σ² only if the step cached the batch estimates σ̂².
  line = re.search(r"magnet refresh \(epoch 1\): .* sigma2 index=(\S+) "
                   r"running=(\S+)", log)
  assert line is not None, log
  assert float(line.group(1)) != float(line.group(2))


@pytest.mark.slow  # the default variant trains end to end in the suite
def test_procedural_config_zero_shot_variant(tmp_path):
  from dmlx.train import loop  # pylint: disable=g-import-not-at-top
  config, _ = _config("procedural")
  final = loop.train_and_evaluate(
      _tiny(config, "zero_shot", str(tmp_path / "zs")), str(tmp_path / "zs"))
  assert final["method"] == {}  # no clusters for unseen classes
  assert 0.0 <= final["trained"]["test"]["embedding"]["recall@1"] <= 1.0
