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

The name and tensor maps live in ``name_maps``, the input normalisations in
``preprocessing`` and the record format (convert, assign, save, load) in
``records``; this module loads weights into a network and exports runs, and
gathers the rest under its one import path.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

# pylint: disable=unused-import
from dmlx.models.name_maps import IGNORED
from dmlx.models.name_maps import StateDict
from dmlx.models.name_maps import _RESNET_STAGES
from dmlx.models.name_maps import _cap
from dmlx.models.name_maps import _leaf
from dmlx.models.name_maps import convert_state_dict
from dmlx.models.name_maps import detect_arch
from dmlx.models.name_maps import family
from dmlx.models.name_maps import module_path
from dmlx.models.preprocessing import ARCHS
from dmlx.models.preprocessing import PREPROCESSING
from dmlx.models.preprocessing import _IMAGENET
from dmlx.models.preprocessing import data_normalisation
from dmlx.models.records import FORMAT
from dmlx.models.records import FORMAT_VERSION
from dmlx.models.records import Record
from dmlx.models.records import _flat
from dmlx.models.records import _is_record
from dmlx.models.records import _plain
from dmlx.models.records import _to_numpy
from dmlx.models.records import assign
from dmlx.models.records import backbone_shapes
from dmlx.models.records import convert
from dmlx.models.records import load
from dmlx.models.records import save
# pylint: enable=unused-import


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


def preprocessing_for(path: str) -> dict[str, Any]:
  """The input normalisation the weights in ``path`` expect, as
  ``dict(mean, std, bgr, scale)`` (see :data:`PREPROCESSING`)."""
  record = load(path)
  prep = dict(record["preprocessing"])
  prep["mean"], prep["std"] = tuple(prep["mean"]), tuple(prep["std"])
  return prep


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
  from dmlx.inference import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:
    config = workdir_lib.read_config(workdir).to_dict()
    state, step = workdir_lib.read_checkpoint(workdir, step)
  except FileNotFoundError as e:
    raise ValueError(str(e)) from e
  state = state.get("train", state)  # {'train': TrainState, 'host': ...}
  model = config["model"]
  params = state["params"]["model"]
  if "backbone" not in params:
    raise ValueError(f"the checkpoint of {workdir!r} has no backbone.")
  source = model.get("pretrained") or ""
  if source and os.path.exists(source):
    prep = preprocessing_for(source)
  else:
    data = config["data"]
    prep = dict(mean=tuple(data["mean"]), std=tuple(data["std"]),
                bgr=bool(data.get("bgr", False)),
                scale=1.0)
  return dict(format=FORMAT, version=FORMAT_VERSION, arch=model["backbone"],
              params=_to_numpy(params["backbone"]),
              batch_stats=_to_numpy(state.get("batch_stats", {}).get(
                  "backbone", {})),
              preprocessing=dict(prep), source=f"{workdir}@{step}",
              sources={}, backbone_kwargs=dict(model.get("backbone_kwargs")
                                               or {}))


__all__ = ["ARCHS", "PREPROCESSING", "assign", "backbone_shapes", "convert",
           "convert_state_dict", "data_normalisation", "detect_arch",
           "export_workdir", "family", "load", "load_into", "module_path",
           "preprocessing_for", "save"]
