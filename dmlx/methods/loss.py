"""The plain method: one registry loss on a named output, no state.

``config.loss.name`` picks the loss (triplet_semihard, contrastive, npair,
margin, proxy_nca, lifted_structure, nca, softmax, ...), ``config.loss.kwargs``
its hyper-parameters; loss parameters (β, proxies, classifier weights) live in
``params['method']``. ``config.method.layer`` is the network output the loss
sees (``'embedding'``; Vo & Hays's classification variant uses
``'fc6_relu'``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dmlx import losses
from dmlx.methods import base

# Losses whose parameters are a classifier over the training classes.
CLASSIFIERS = ("softmax", "normalized_softmax", "proxy_nca")


@dataclasses.dataclass(frozen=True)
class Config:
  """``config.method`` of the plain method."""
  layer: str = "embedding"
  loss: Any = base.loss_field()


def init_params(cfg: Config, rng, info: base.ModelInfo):
  """The loss's own parameters (``{}`` for parameter-free losses)."""
  dim = info.feature_dims.get(cfg.layer, info.embedding_dim)
  return cfg.loss.init(rng, info.num_classes, dim)


def loss(cfg: Config, params, outputs, batch, state, rng):
  """``config.loss`` on ``outputs[cfg.layer]``."""
  del state
  return cfg.loss.apply(outputs[cfg.layer], batch["labels"], params=params,
                        rng=rng)


def classifier_logits(name: str, params, embeddings: np.ndarray) -> np.ndarray:
  """Class scores of a classifier loss's parameters for ``embeddings``:
  ``x·W + b`` (softmax), cosine to the class weights (normalized softmax,
  Zhai & Wu 2019) or minus the squared distance to the unit proxies (ProxyNCA,
  Movshovitz-Attias et al. 2017, eq. 6 with one proxy per class)."""
  x = np.asarray(embeddings, np.float64)
  if name == "softmax":
    return x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  unit = lambda a, axis: a / np.maximum(np.linalg.norm(a, axis=axis,
                                                       keepdims=True), 1e-12)
  if name == "normalized_softmax":
    return unit(x, 1) @ unit(np.asarray(params["kernel"], np.float64), 0)
  if name == "proxy_nca":
    proxies = unit(np.asarray(params["proxies"], np.float64), 1)
    xu = unit(x, 1)
    return -(np.sum(xu**2, 1, keepdims=True) - 2 * xu @ proxies.T
             + np.sum(proxies**2, 1)[None])
  raise ValueError(f"classifier_logits: {name!r} is not one of {CLASSIFIERS}.")


def evaluate_classifier(ctx) -> dict:
  """Accuracy of the loss's own classifier (softmax, normalised softmax,
  ProxyNCA) on the test images of the training classes; ``{}`` for other
  losses or another layer. An evaluator (``'loss_classifier'``)."""
  cfg = ctx.method_config
  if cfg.loss.name not in CLASSIFIERS or cfg.layer != "embedding":
    return {}
  logits = classifier_logits(cfg.loss.name, ctx.params,
                             ctx.test_features["embedding"])
  pred = np.argmax(logits, axis=1)
  return {"classifier_accuracy":
          float(np.mean(pred == np.asarray(ctx.test.labels)))}


METHOD = base.Method(name="loss", Config=Config, loss=loss,
                     init_params=init_params, evaluators=("loss_classifier",))
