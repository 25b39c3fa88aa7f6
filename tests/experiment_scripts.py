"""Loads a script of ``experiments/`` as a module, for its tests."""
import importlib.util
import os
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str) -> types.ModuleType:
  """``experiments/<name>.py`` as a module. Experiment scripts may define
  absl flags at import; they are dropped again so two scripts loaded into one
  test process do not clash."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"{name}_experiment_script", path)
  module = importlib.util.module_from_spec(spec)
  before = set(flags.FLAGS)
  spec.loader.exec_module(module)
  for flag in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, flag)
  return module
