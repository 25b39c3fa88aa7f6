"""configs/ as a package: every configuration that ever had a file is
reachable by name, every declared variant loads, ``runlocal`` shrinks a run,
and the layout rules hold (configs ≤ 15 files, dmlx modules ≤ 400 lines)."""
from __future__ import annotations

import glob
import os

import pytest

import configs
from dmlx import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(c):
  """A loadable run config: its method settings read back without error."""
  method, settings = methods.from_config(c)
  assert method.name == c.method.name
  return settings


@pytest.mark.parametrize("name", sorted(configs.NAMES))
def test_every_former_config_file_is_reachable_by_name(name):
  _check(configs.load(name))
  assert configs.load(f"configs/{name}.py").to_dict() == configs.load(name).to_dict()


@pytest.mark.parametrize("spec", configs.variants())
def test_every_declared_variant_loads(spec):
  _check(configs.load(spec))


def test_the_former_files_are_variants_not_files():
  assert len(glob.glob(os.path.join(ROOT, "configs", "*.py"))) <= 15
  assert os.path.exists(os.path.join(ROOT, "configs", "nngk_cub.py"))
  assert os.path.exists(os.path.join(ROOT, "configs", "default.py"))
  for name, spec in configs.NAMES.items():
    module = spec.partition(":")[0][:-3]
    assert module in configs.MODULES, (name, spec)


def test_runlocal_shrinks_a_run():
  full = configs.load("real_data.py:dataset=omniglot,method=nngk")
  small = configs.load("real_data.py:dataset=omniglot,method=nngk,runlocal")
  assert small.train.epochs * small.train.steps_per_epoch == 3
  assert full.train.epochs * full.train.steps_per_epoch == 300
  small.train.epochs = full.train.epochs
  assert small.method.to_dict() == full.method.to_dict()


def test_unknown_names_and_arguments_are_errors():
  with pytest.raises(ValueError, match="Unknown config 'omniglot_nngg'"):
    configs.load("omniglot_nngg")
  with pytest.raises(ValueError, match="Unknown config argument 'datset'"):
    configs.load("real_data.py:datset=omniglot")
  with pytest.raises(ValueError, match="needs a value"):
    configs.load("real_data.py:dataset")
  with pytest.raises(ValueError, match="must be of type int"):
    configs.load("nngk.py:dims=large")


def test_no_dmlx_module_is_over_400_lines():
  sizes = {p: sum(1 for _ in open(p)) for p in
           glob.glob(os.path.join(ROOT, "dmlx", "**", "*.py"), recursive=True)}
  assert max(sizes.values()) <= 400, max(sizes.items(), key=lambda kv: kv[1])
