"""dmlx's run configurations, a package of ml_collections config files.

Each module has ``get_config(arg)``, with ``arg`` in big_vision's form
(``key=value,key2=value2,flag``, parsed by :func:`dmlx.config.parse_arg`)
and ``VARIANTS``, the arguments of its named configurations:

  python launch/train.py --config=configs/default.py              # main job
  python launch/train.py --config=configs/nngk_cub.py --config.data.data_dir=...
  python launch/train.py --config=configs/real_data.py:dataset=omniglot,method=nngk
  python launch/train.py --config=configs/baselines.py:loss=margin,runlocal

:data:`NAMES` maps the name of every configuration that had a file of its
own (``omniglot_nngk``, ``procedural_baseline``, ...) to its config spec,
and :func:`load` loads a spec or a name; ``launch/train.py`` accepts the old
file paths and says what they are now.
"""
from __future__ import annotations

import importlib
import os
import sys

from ml_collections import ConfigDict

_REAL_DATA_METHODS = (
    "contrastive", "dmlda_contrastive", "dmlda_contrastive_base",
    "dmlda_triplet", "dmlda_triplet_base", "lifted_structure", "magnet",
    "margin", "mic", "nngk", "normalized_softmax", "npair", "proxy_nca",
    "smooth_triplet", "softmax", "triplet_batch_hard", "triplet_semihard")

# name -> "module.py:arg".
NAMES: dict[str, str] = {
    "default": "default.py",
    "nngk_cub": "nngk_cub.py",
    "digits_triplet": "baselines.py:dataset=digits,loss=triplet_semihard",
    "procedural_baseline": "baselines.py",
    "dmlda_procedural": "dmlda.py:dataset=procedural",
    **{f"dmlda_{loss}_{ds}": f"dmlda.py:loss={loss},dataset={ds}"
       for loss in ("contrastive", "npair", "triplet")
       for ds in ("cars", "cub", "sop")},
    **{f"magnet_{ds}": f"magnet.py:dataset={ds}"
       for ds in ("dogs", "flowers", "pets", "procedural")},
    **{f"mic_margin_{ds}": f"mic.py:dataset={ds}"
       for ds in ("cars", "cub", "inshop", "sop")},
    "mic_procedural": "mic.py:dataset=procedural",
    "nngk_cars": "nngk.py:dataset=cars",
    **{f"nngk_cls_{ds}": f"nngk.py:dataset={ds},cls"
       for ds in ("cars", "cub", "flowers", "folder")},
    "nngk_digits": "nngk.py:dataset=digits",
    "nngk_procedural": "nngk.py:dataset=procedural",
    **{f"{ds}_{m}": f"real_data.py:dataset={ds},method={m}"
       for ds in ("omniglot", "tinyimagenet") for m in _REAL_DATA_METHODS},
    **{f"vohays_{net}_{ds}": f"vohays.py:net={net},dataset={ds}"
       for net in ("neta", "nete") for ds in ("cars", "cub", "sop")},
    "vohays_procedural": "vohays.py:dataset=procedural",
}

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = ("baselines", "default", "dmlda", "magnet", "mic", "nngk", "nngk_cub",
           "pretrain", "real_data", "vohays")


def spec_of(name_or_spec: str) -> str:
  """The spec ``module.py[:arg]`` of a name of :data:`NAMES` or a spec."""
  text = name_or_spec
  if text.startswith("configs/"):
    text = text[len("configs/"):]
  if text.endswith(".py") and text[:-3] in NAMES:
    text = text[:-3]
  return NAMES.get(text, text)


def load(name_or_spec: str) -> ConfigDict:
  """The config of ``name_or_spec``: a name of :data:`NAMES`
  (``'omniglot_nngk'``) or a spec (``'real_data.py:dataset=omniglot,...'``,
  optionally prefixed ``configs/``)."""
  spec = spec_of(name_or_spec)
  path, _, arg = spec.partition(":")
  module_name = path[:-3] if path.endswith(".py") else path
  if module_name not in MODULES:
    raise ValueError(f"Unknown config {name_or_spec!r}; the config modules "
                     f"are {', '.join(m for m in MODULES)}, and configs.NAMES "
                     f"names {len(NAMES)} more (e.g. omniglot_nngk).")
  module = importlib.import_module(f"configs.{module_name}")
  return module.get_config(arg or None)


def variants() -> list[str]:
  """Every declared spec: each module's ``VARIANTS`` (tests load each)."""
  out = []
  for name in MODULES:
    if not os.path.exists(os.path.join(HERE, f"{name}.py")):
      continue
    module = importlib.import_module(f"configs.{name}")
    out.extend(f"{name}.py:{v}" if v else f"{name}.py"
               for v in getattr(module, "VARIANTS", ("",)))
  return out


def translate_argv(argv: list[str], root: str) -> list[str]:
  """Rewrites ``--config=configs/<name>.py`` of a removed per-name file to
  its spec (with a note on stderr); every other argument is kept."""
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      value = arg[len("--config="):]
      path, sep, rest = value.partition(":")
      name = os.path.splitext(os.path.basename(path))[0]
      if (not os.path.exists(os.path.join(root, path)) and name in NAMES
          and os.path.basename(os.path.dirname(os.path.abspath(path))) == "configs"):
        if sep:
          raise SystemExit(f"{path} is now {NAMES[name]}; pass its arguments "
                           f"as key=value there (got ':{rest}').")
        spec = NAMES[name]
        print(f"note: {path} is now configs/{spec}", file=sys.stderr)
        arg = f"--config={os.path.join(os.path.dirname(path), spec)}"
    out.append(arg)
  return out
