"""The DML-DA configs carry the paper's settings (Li et al. 2019, Sec. IV-A)
and the per-name files agree with the parameterised ``configs/dmlda.py``."""
from __future__ import annotations

import os
import runpy

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _get_config(name, *arg):
  return runpy.run_path(os.path.join(CONFIGS, name))["get_config"](*arg)


# (dataset, loader name, Adam learning rate) of the paper.
PAPER = [("cars", "cars196", 5e-4), ("cub", "cub200", 1e-5),
         ("sop", "sop", 3e-5)]


@pytest.mark.parametrize("loss", ["contrastive", "npair", "triplet"])
@pytest.mark.parametrize("dataset,loader,lr", PAPER)
def test_paper_configs(loss, dataset, loader, lr):
  c = _get_config(f"dmlda_{loss}_{dataset}.py")
  assert c.to_dict() == _get_config("dmlda.py", f"{loss},{dataset}").to_dict()
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
    assert c.method.base == "dmlda_contrastive"
    assert dict(c.loss.kwargs) == {"margin": 1.0}
  elif loss == "npair":
    assert c.method.base == "registry" and c.loss.name == "npair"
  else:
    assert c.loss.name == "triplet_all" and c.loss.kwargs.margin == 1.0
    assert c.loss.kwargs.squared


def test_procedural_config_and_regularizer_argument():
  c = _get_config("dmlda_procedural.py")
  assert c.data.name == "procedural" and c.data.split == "zero_shot"
  assert c.method.base == "dmlda_contrastive"
  c = _get_config("dmlda_procedural.py", "triplet,gor")
  assert c.method.regularizer == "gor" and c.loss.name == "triplet_all"


@pytest.mark.parametrize("arg", ["contrastive", "softmax,cars",
                                 "npair,mnist", "npair,cars,l2",
                                 "npair,cars,density,x"])
def test_bad_argument_raises(arg):
  with pytest.raises(ValueError, match="configs/dmlda.py"):
    _get_config("dmlda.py", arg)
