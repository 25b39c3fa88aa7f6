"""ImageNet-pretrained backbones: standard checkpoint files to dmlx variables.

Every seed paper fine-tunes an ImageNet network (GoogLeNet / BN-Inception:
Magnet, DML-DA, MIC's baselines; ResNet-50: MIC, NNGK; VGG16-BN: Vo & Hays;
AlexNet: NNGK's Table 3). Users hold those weights as torchvision ``.pth``,
timm ``.safetensors`` or Cadene's Caffe-converted ``bninception-*.pth``; this
module maps them onto the dmlx backbones, whose parameter names mirror the
torchvision / Caffe names one to one (see the tables atop ``resnet.py``,
``vgg.py``, ``inception.py`` and ``alexnet.py``):

* names: ``.`` -> ``/`` with list indices joined to their module
  (``layer1.0.conv1`` -> ``layer1_0/conv1``; ``inception_3a_1x1_bn`` ->
  ``inception_3a/1x1_bn``; VGG's ``features.<n>`` via
  ``TORCHVISION_VGG16_BN_INDEX``);
* tensors: conv ``[O, I, kh, kw]`` -> ``kernel [kh, kw, I, O]``, Linear
  ``[out, in]`` -> ``kernel [in, out]``, BatchNorm ``weight`` -> ``scale``,
  ``running_mean`` / ``running_var`` -> ``batch_stats`` ``mean`` / ``var``;
* the ImageNet classifier (``fc``, ``classifier``, ``last_linear``, GoogLeNet's
  ``aux1`` / ``aux2``) is dropped.

``launch/convert_weights.py`` writes the result once as a msgpack file
(:func:`save`: ``{'arch', 'params', 'batch_stats', 'preprocessing', ...}``)
that ``config.model.pretrained`` names; the trainer calls :func:`load_into`.
:func:`load_into` also accepts a raw ``.pth`` / ``.safetensors`` / ``.npz``
file and converts it on the fly, the architecture read off its tensor names
(:func:`detect_arch`). :func:`export_workdir` writes a trained dmlx run's
backbone in the same format (Magnet's warm start from "a partly-trained
standard softmax classifier").
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from dmlx.models import weight_files
from dmlx.models.alexnet import TORCHVISION_ALEXNET_INDEX
from dmlx.models.vgg import TORCHVISION_VGG16_BN_INDEX

FORMAT = "dmlx-pretrained"
FORMAT_VERSION = 1

_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 bgr=False, scale=1.0)
# The input each checkpoint was trained on: ``x = (flip(image01 * scale) -
# mean) / std`` with ``image01`` RGB in 0..1, ``flip`` reversing the channels
# (RGB -> BGR) when ``bgr``, and mean / std in the network's channel order and
# units. torchvision's GoogLeNet weights (ported from TensorFlow) are used
# with ``transform_input=True``, which turns ImageNet-normalised input back
# into ``(x - 0.5) / 0.5``; Cadene's BN-Inception is Caffe's: BGR, 0..255,
# minus (104, 117, 128), unit std.
PREPROCESSING: dict[str, dict[str, Any]] = {
    "resnet18": _IMAGENET, "resnet34": _IMAGENET, "resnet50": _IMAGENET,
    "resnet101": _IMAGENET, "vgg16_bn": _IMAGENET, "alexnet": _IMAGENET,
    "googlenet": dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=False,
                      scale=1.0),
    "bn_inception": dict(mean=(104.0, 117.0, 128.0), std=(1.0, 1.0, 1.0),
                         bgr=True, scale=255.0),
}
ARCHS = tuple(PREPROCESSING)

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
Record = dict[str, Any]


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


def convert(src: str, arch: str | None = None,
            backbone_kwargs: Mapping[str, Any] | None = None,
            check: bool = True) -> Record:
  """Reads checkpoint ``src`` and converts it into a dmlx record.

  Args:
    src: a ``.pth`` / ``.safetensors`` / ``.npz`` / Keras ``.h5`` file.
    arch: the architecture (``None``: :func:`detect_arch`); checked against
      the tensor names when given.
    backbone_kwargs: keyword arguments of the dmlx backbone the record is for
      (``width``, ``num_filters``, ...), used by ``check``.
    check: compare every tensor with ``dmlx.models.get_backbone(arch,
      **backbone_kwargs)`` (shapes traced, nothing computed) and raise a
      ValueError listing missing / unexpected / mis-shaped tensors.

  Returns:
    ``{'format', 'version', 'arch', 'params', 'batch_stats',
    'preprocessing', 'source', 'sources', 'backbone_kwargs'}``.
  """
  state = weight_files.read_state_dict(src)
  if any(k.endswith(":0") for k in state):
    raise ValueError(
        f"{src!r} is a Keras file: dmlx has no map from Keras names (Keras' "
        "ResNet50 is ResNet v1 with biased convs, its VGG16 has no BN); use "
        "the torchvision or timm weights of the same network.")
  if arch is None:
    arch = detect_arch(state)
  else:
    try:
      detected = detect_arch(state)
    except ValueError:  # unusual names: the given arch's map will judge
      detected = arch
    if family(arch) != family(detected):
      raise ValueError(f"arch={arch!r} but {src!r} holds a {detected} "
                       "state dict.")
  params, stats, sources = convert_state_dict(state, arch)
  record = dict(format=FORMAT, version=FORMAT_VERSION, arch=arch,
                params=params, batch_stats=stats,
                preprocessing=dict(PREPROCESSING[arch]),
                source=os.path.basename(src), sources=sources,
                backbone_kwargs=dict(backbone_kwargs or {}))
  if check:
    model_params, model_stats = backbone_shapes(arch, backbone_kwargs)
    assign(record, model_params, model_stats, what=src)
  return record


def backbone_shapes(arch: str, backbone_kwargs: Mapping[str, Any] | None = None,
                    image_size: int = 224) -> tuple[dict, dict]:
  """``(params, batch_stats)`` shape trees of the registered dmlx backbone
  (``jax.eval_shape``: traced, never run)."""
  from dmlx import models  # pylint: disable=g-import-not-at-top
  backbone = models.get_backbone(arch, **dict(backbone_kwargs or {}))
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(backbone.init, jax.random.PRNGKey(0), x)
  return variables["params"], variables.get("batch_stats", {})


def assign(record: Record, params: Mapping, batch_stats: Mapping,
           what: str = "pretrained weights") -> tuple[dict, dict]:
  """The record's variables in the structure and dtypes of a backbone's
  ``params`` / ``batch_stats`` (arrays or shape structs).

  Raises:
    ValueError: listing every variable missing from the record, present only
      in the record, or of another shape (with the source tensor's name).
  """
  have = _flat({"params": record["params"],
                "batch_stats": record["batch_stats"]})
  want = _flat({"params": params, "batch_stats": batch_stats})
  sources = record.get("sources", {})

  def named(key):
    return f"{key} (from {sources[key]})" if key in sources else key

  missing = [f"{k} {tuple(want[k].shape)}" for k in want if k not in have]
  unexpected = [named(k) for k in have if k not in want]
  misshaped = [f"{named(k)}: file {tuple(have[k].shape)} vs backbone "
               f"{tuple(want[k].shape)}" for k in want
               if k in have and tuple(have[k].shape) != tuple(want[k].shape)]
  if missing or unexpected or misshaped:
    lines = [f"{what} ({record.get('arch')}) do not fit the backbone:"]
    for title, items in (("missing from the file", missing),
                         ("unexpected (no such backbone variable)", unexpected),
                         ("mis-shaped", misshaped)):
      if items:
        lines.append(f"  {len(items)} {title}: {_cap(items)}")
    lines.append(
        "  Build the backbone as the file was: model.backbone and "
        "model.backbone_kwargs (the file records backbone_kwargs="
        f"{record.get('backbone_kwargs')}); ImageNet weights need full "
        "widths, and a ResNet's small_inputs stem (3x3 conv1) cannot take "
        "them.")
    raise ValueError("\n".join(lines))
  out = {k: jnp.asarray(np.asarray(have[k]), dtype=want[k].dtype)
         for k in want}
  tree = flax.traverse_util.unflatten_dict(out, sep="/")
  return tree.get("params", {}), tree.get("batch_stats", {})


def load_into(path: str, params_model: Mapping[str, Any],
              batch_stats: Mapping[str, Any]) -> tuple[dict, dict]:
  """Replaces an :class:`EmbeddingNet`'s backbone with pretrained weights.

  Args:
    path: a file written by ``launch/convert_weights.py`` (or a raw
      ``.pth`` / ``.safetensors`` / ``.npz`` state dict, converted on the fly).
    params_model: the whole network's ``params`` (backbone under
      ``'backbone'``, heads beside it: kept as they are).
    batch_stats: the network's ``batch_stats`` collection.

  Returns:
    ``(params_model, batch_stats)``, new dicts with the ``'backbone'``
    sub-trees taken from the file.
  """
  if "backbone" not in params_model:
    raise ValueError(f"params have no 'backbone' sub-tree (keys "
                     f"{sorted(params_model)}); pass EmbeddingNet params.")
  record = load(path)
  params, stats = assign(record, params_model["backbone"],
                         batch_stats.get("backbone", {}), what=path)
  new_stats = dict(batch_stats)
  if stats or "backbone" in batch_stats:
    new_stats["backbone"] = stats
  return {**params_model, "backbone": params}, new_stats


def save(record: Record, dst: str) -> None:
  """Writes a record (``flax.serialization.msgpack_serialize``)."""
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  record = dict(record, params=_to_numpy(record["params"]),
                batch_stats=_to_numpy(record["batch_stats"]),
                preprocessing=_plain(record["preprocessing"]),
                backbone_kwargs=_plain(record.get("backbone_kwargs", {})))
  with open(dst + ".tmp", "wb") as f:
    f.write(flax.serialization.msgpack_serialize(record))
  os.replace(dst + ".tmp", dst)


def load(path: str) -> Record:
  """Reads a record written by :func:`save`, or converts a raw checkpoint
  (architecture detected, no backbone check)."""
  if not os.path.exists(path):
    raise ValueError(f"pretrained weights {path!r} do not exist.")
  with open(path, "rb") as f:
    head = f.read(8)
    if _is_record(head):
      record = flax.serialization.msgpack_restore(head + f.read())
      if record.get("format") != FORMAT:
        raise ValueError(f"{path!r} is a msgpack file but not a dmlx "
                         "pretrained record; write it with "
                         "launch/convert_weights.py.")
      return record
  return convert(path, check=False)


def preprocessing_for(path: str) -> dict[str, Any]:
  """The input normalisation the weights in ``path`` expect, as
  ``dict(mean, std, bgr, scale)`` (see :data:`PREPROCESSING`)."""
  record = load(path)
  prep = dict(record["preprocessing"])
  prep["mean"], prep["std"] = tuple(prep["mean"]), tuple(prep["std"])
  return prep


def data_normalisation(prep: Mapping[str, Any]) -> dict[str, Any]:
  """``preprocessing`` in the units of ``dmlx.data.augment.normalise``.

  The pipeline computes ``x = (image / 255 - mean) / std`` on RGB images; a
  network expecting ``(flip(image01 * scale) - m) / s`` gets it from
  ``mean = flip(m) / scale``, ``std = flip(s) / scale`` followed by reversing
  the channel axis when ``bgr`` (``x[..., ::-1]``).

  Returns:
    ``dict(mean=(r, g, b), std=(r, g, b), bgr=bool)``.
  """
  order = slice(None, None, -1) if prep["bgr"] else slice(None)
  scale = float(prep["scale"])
  return dict(mean=tuple(float(v) / scale for v in prep["mean"][order]),
              std=tuple(float(v) / scale for v in prep["std"][order]),
              bgr=bool(prep["bgr"]))


def export_workdir(workdir: str, step: int | None = None) -> Record:
  """A trained dmlx run's backbone as a pretrained record.

  Magnet (Rippel et al., 2016, Sec. 4) warm-starts every objective from "a
  partly-trained standard softmax classifier": train a dmlx run with the
  ``softmax`` loss for a few epochs, export it with this function
  (``launch/convert_weights.py --from_workdir``) and name the file in the
  next run's ``config.model.pretrained``. The run's ``config.json`` gives
  the arch and backbone kwargs; its preprocessing is that of the weights it
  started from, else its ``config.data.mean`` / ``std``.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{workdir!r} has no config.json: not a dmlx run.")
  with open(config_path) as f:
    config = json.load(f)
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ValueError(f"no checkpoint in {directory!r}.")
  state = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  model = config["model"]
  params = state["params"]["model"]
  if "backbone" not in params:
    raise ValueError(f"the checkpoint of {workdir!r} has no backbone.")
  source = model.get("pretrained") or ""
  if source and os.path.exists(source):
    prep = preprocessing_for(source)
  else:
    data = config["data"]
    prep = dict(mean=tuple(data["mean"]), std=tuple(data["std"]), bgr=False,
                scale=1.0)
  return dict(format=FORMAT, version=FORMAT_VERSION, arch=model["backbone"],
              params=_to_numpy(params["backbone"]),
              batch_stats=_to_numpy(state.get("batch_stats", {}).get(
                  "backbone", {})),
              preprocessing=dict(prep), source=f"{workdir}@{step}",
              sources={}, backbone_kwargs=dict(model.get("backbone_kwargs")
                                               or {}))


# --------------------------------------------------------------------- helpers


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


def _to_numpy(tree: Any) -> Any:
  return jax.tree_util.tree_map(np.asarray, tree)


def _plain(value: Any) -> Any:
  """Tuples as lists (msgpack has no tuple), NumPy scalars as Python's."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def _flat(tree: Mapping) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(dict(tree), sep="/")


def _cap(items: list[str], n: int = 12) -> str:
  more = f", ... and {len(items) - n} more" if len(items) > n else ""
  return ", ".join(items[:n]) + more


def _is_record(head: bytes) -> bool:
  """msgpack map whose first key is ``'arch'`` (what :func:`save` writes)."""
  return (len(head) >= 6 and (0x81 <= head[0] <= 0x8f)
          and head[1:6] == b"\xa4arch")


__all__ = ["ARCHS", "PREPROCESSING", "assign", "backbone_shapes", "convert",
           "convert_state_dict", "data_normalisation", "detect_arch",
           "export_workdir", "family", "load", "load_into", "module_path",
           "preprocessing_for", "save"]
