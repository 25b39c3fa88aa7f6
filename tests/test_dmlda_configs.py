"""The DML-DA configs carry the paper's settings (Li et al. 2019, Sec. IV-A)
and the former per-name configs are their ``configs/dmlda.py`` variants."""
from __future__ import annotations

import pytest

import configs


def _get_config(name, arg=""):
  return configs.load(f"{name}:{arg}" if arg else name)


# (dataset, loader name, Adam learning rate) of the paper.
PAPER = [("cars", "cars196", 5e-4), ("cub", "cub200", 1e-5),
         ("sop", "sop", 3e-5)]


@pytest.mark.parametrize("loss", ["contrastive", "npair", "triplet"])
@pytest.mark.parametrize("dataset,loader,lr", PAPER)
def test_paper_configs(loss, dataset, loader, lr):
  c = _get_config(f"dmlda_{loss}_{dataset}")
  assert c.to_dict() == _get_config(
      "dmlda.py", f"loss={loss},dataset={dataset}").to_dict()
  assert c.method.name == "dmlda" and c.method.regularizer == "density"
  assert (c.method.lam, c.method.eta, c.method.alpha_init) == (10.0, 0.5, 0.5)
  assert c.model.backbone == "googlenet" and c.model.embedding_dim == 128
  assert c.model.normalise and c.model.pretrained == ""
  assert c.optim.name == "adam" and c.optim.lr == lr
  assert c.train.steps_per_epoch * c.train.epochs == 30_000
  assert c.data.name == loader and c.data.split == "predefined"
  if dataset == "sop":
    assert c.sampler.name == "whole_class" and c.sampler.batch_size == 100
  else:
    assert c.sampler.name == "pk"
    assert (c.sampler.classes_per_batch, c.sampler.images_per_class) == (10, 10)
  if loss == "contrastive":
    assert c.loss.name == "dmlda_contrastive"
    assert dict(c.loss.kwargs) == {"margin": 1.0}
  elif loss == "npair":
    assert c.loss.name == "npair"
  else:
    assert c.loss.name == "triplet_all" and c.loss.kwargs.margin == 1.0
    assert c.loss.kwargs.squared


def test_procedural_config_and_regularizer_argument():
  c = _get_config("dmlda_procedural")
  assert c.data.name == "procedural" and c.data.split == "zero_shot"
  assert c.loss.name == "dmlda_contrastive"
  c = _get_config("dmlda.py", "loss=triplet,dataset=procedural,regularizer=gor")
  assert c.method.regularizer == "gor" and c.loss.name == "triplet_all"


@pytest.mark.parametrize("arg,match", [
    ("loss=softmax", "configs/dmlda.py"), ("dataset=mnist", "configs/dmlda.py"),
    ("regularizer=l2", "configs/dmlda.py"), ("lam=3", "Unknown config argument"),
    ("contrastive", "Unknown config argument")])
def test_bad_argument_raises(arg, match):
  with pytest.raises(ValueError, match=match):
    _get_config("dmlda.py", arg)
