"""The dmlx pretrained record: a checkpoint converted to backbone variables
(:func:`convert`), checked against and cast to a backbone's variables
(:func:`assign`), and written to / read from msgpack (:func:`save`,
:func:`load`)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from dmlx.models import weight_files
from dmlx.models.name_maps import (_cap, convert_state_dict, detect_arch,
                                   family)
from dmlx.models.preprocessing import PREPROCESSING

FORMAT = "dmlx-pretrained"
FORMAT_VERSION = 1

Record = dict[str, Any]


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


def _is_record(head: bytes) -> bool:
  """msgpack map whose first key is ``'arch'`` (what :func:`save` writes)."""
  return (len(head) >= 6 and (0x81 <= head[0] <= 0x8f)
          and head[1:6] == b"\xa4arch")
