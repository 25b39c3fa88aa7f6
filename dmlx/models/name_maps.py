"""Maps torch state dicts onto dmlx backbone variables.

Recognises the architecture of a torchvision / Cadene state dict, renames
each torch module to its dmlx module path and transposes each tensor into
its dmlx leaf (see ``dmlx.models.pretrained`` for the rules); the ImageNet
classifier is dropped.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.traverse_util
import numpy as np

from dmlx.models.alexnet import TORCHVISION_ALEXNET_INDEX
from dmlx.models.preprocessing import ARCHS, PREPROCESSING
from dmlx.models.vgg import TORCHVISION_VGG16_BN_INDEX

# State-dict prefixes of the ImageNet classifier, dropped on conversion.
IGNORED = {
    "resnet": ("fc.",),
    "vgg16_bn": ("classifier.", "pre_logits.", "head."),  # torchvision, timm
    "googlenet": ("fc.", "aux1.", "aux2."),
    "bn_inception": ("last_linear.", "fc."),
    "alexnet": ("classifier.6.",),
}
_RESNET_STAGES = {((2, 2, 2, 2), False): "resnet18",
                  ((3, 4, 6, 3), False): "resnet34",
                  ((3, 4, 6, 3), True): "resnet50",
                  ((3, 4, 23, 3), True): "resnet101"}

StateDict = dict[str, np.ndarray]


def family(arch: str) -> str:
  """The name-map family of ``arch`` (all ResNets share one)."""
  if arch not in PREPROCESSING:
    raise ValueError(f"Unknown pretrained arch {arch!r}; expected one of "
                     f"{list(ARCHS)}.")
  return "resnet" if arch.startswith("resnet") else arch


def detect_arch(state_dict: Mapping[str, Any]) -> str:
  """Recognises the architecture of a torchvision / Cadene state dict from
  its tensor names (and, for ResNets, its blocks per stage)."""
  keys = set(state_dict)
  if any(k.startswith("inception_3a_") for k in keys):
    return "bn_inception"
  if any(k.startswith("inception3a.") for k in keys):
    return "googlenet"
  if "layer1.0.conv1.weight" in keys:
    stages = tuple(len({k.split(".")[1] for k in keys
                        if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in keys
    if (stages, bottleneck) in _RESNET_STAGES:
      return _RESNET_STAGES[(stages, bottleneck)]
    raise ValueError(f"ResNet with {stages} blocks per stage "
                     f"(bottleneck={bottleneck}) is not a registered arch.")
  if "features.0.weight" in keys:
    if "features.1.running_mean" in keys:
      return "vgg16_bn"
    if np.shape(state_dict["features.0.weight"])[-1] == 11:
      return "alexnet"
    raise ValueError("a VGG without BatchNorm: dmlx maps only vgg16_bn.")
  raise ValueError("cannot tell the architecture of a state dict starting "
                   f"{sorted(keys)[:6]}; pass arch= explicitly.")


def module_path(arch: str, module: str) -> tuple[str, ...] | None:
  """The dmlx module path of the torch module ``module`` (``None``: not a
  backbone layer), e.g. ``('layer1_0', 'downsample_conv')`` for ResNet's
  ``layer1.0.downsample.0``."""
  fam = family(arch)
  if fam in ("resnet", "googlenet"):
    parts: list[str] = []
    for p in module.split("."):
      if p.isdigit() and parts:
        parts[-1] += f"_{p}"
      else:
        parts.append(p)
    renames = {"downsample_0": "downsample_conv",
               "downsample_1": "downsample_bn"}
    return tuple(renames.get(p, p) for p in parts)
  if fam == "bn_inception":
    m = re.fullmatch(r"(inception_\d[a-z])_(.+)", module)
    return (m.group(1), m.group(2)) if m else (module,)
  if fam in ("vgg16_bn", "alexnet"):
    index = (TORCHVISION_VGG16_BN_INDEX if fam == "vgg16_bn" else
             dict(TORCHVISION_ALEXNET_INDEX))
    names = {f"features.{n}": name for name, n in index.items()}
    if fam == "alexnet":
      names.update({"classifier.1": "fc6", "classifier.4": "fc7"})
    return (names[module],) if module in names else None
  raise AssertionError(fam)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str
                       ) -> tuple[dict, dict, dict[str, str]]:
  """Renames and transposes a torch state dict into dmlx variables.

  Returns:
    ``(params, batch_stats, sources)``: nested dicts of the backbone's
    variables and ``{'params/conv1/kernel': 'conv1.weight', ...}``.

  Raises:
    ValueError: tensors that map to no backbone layer (listed).
  """
  ignored = IGNORED[family(arch)]
  modules: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    if key.startswith(ignored) or key.endswith("num_batches_tracked"):
      continue
    mod, _, leaf = key.rpartition(".")
    modules.setdefault(mod, {})[leaf] = np.asarray(value)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  sources, unexpected = {}, []
  for mod, leaves in modules.items():
    path = module_path(arch, mod)
    is_bn = "running_mean" in leaves or "running_var" in leaves
    for leaf, value in leaves.items():
      target = _leaf(arch, mod, leaf, value, is_bn) if path else None
      if target is None:
        unexpected.append(f"{mod}.{leaf} {tuple(value.shape)}")
        continue
      (collection, name), array = target
      flat[(collection,) + path + (name,)] = array
      sources["/".join((collection,) + path + (name,))] = f"{mod}.{leaf}"
  if unexpected:
    raise ValueError(
        f"{len(unexpected)} tensor(s) of the {arch} state dict map to no "
        f"dmlx layer: {_cap(unexpected)}")
  tree = flax.traverse_util.unflatten_dict(flat)
  return tree.get("params", {}), tree.get("batch_stats", {}), sources


def _leaf(arch: str, module: str, leaf: str, value: np.ndarray, is_bn: bool):
  """``((collection, dmlx leaf), array)`` of one torch tensor, or None."""
  if is_bn:
    if value.ndim == 2 and value.shape[0] == 1:  # the older Caffe port's [1, C]
      value = value[0]
    names = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"),
             "running_var": ("batch_stats", "var")}
    return (names[leaf], value) if leaf in names else None
  if leaf == "bias" and value.ndim == 1:
    return ("params", "bias"), value
  if leaf != "weight":
    return None
  if value.ndim == 4:
    return ("params", "kernel"), value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    if family(arch) == "alexnet" and module == "classifier.1":
      # torch flattens pool5 as [C, 6, 6], dmlx as [6, 6, C].
      out, c = value.shape[0], value.shape[1] // 36
      value = value.reshape(out, c, 6, 6).transpose(0, 2, 3, 1).reshape(
          out, -1)
    return ("params", "kernel"), value.T
  return None


def _cap(items: list[str], n: int = 12) -> str:
  more = f", ... and {len(items) - n} more" if len(items) > n else ""
  return ", ".join(items[:n]) + more
