"""The input normalisation each pretrained checkpoint was trained on
(:data:`PREPROCESSING`, which also names the supported architectures) and its
translation to the units of ``dmlx.data.augment.normalise``."""
from __future__ import annotations

from typing import Any, Mapping

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
