"""The plain method: one registry loss on the embedding, no host state.

``config.loss.name`` picks the loss (triplet_semihard, contrastive, npair,
margin, proxy_nca, lifted_structure, nca, softmax, ...), ``config.loss.kwargs``
its hyper-parameters; loss parameters (β, proxies, classifier weights) live in
``params['method']``.
"""
from __future__ import annotations

import numpy as np

from dmlx import losses
from dmlx.methods.base import HostContext, Method, ModelInfo

# Losses whose parameters are a classifier over the training classes.
CLASSIFIERS = ("softmax", "normalized_softmax", "proxy_nca")


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


def make(config) -> Method:
  """A :class:`Method` that applies ``config.loss`` to ``outputs[layer]``."""
  name = config.loss.name
  losses.get(name)  # fail early on an unknown name
  kwargs = dict(config.loss.kwargs)
  layer = config.method.get("layer", "embedding")

  def init_params(rng, info: ModelInfo):
    dim = info.feature_dims.get(layer, info.embedding_dim)
    return losses.init(name, rng, info.num_classes, dim, **kwargs)

  def loss(params, outputs, batch, state, rng):
    del state
    return losses.apply(name, outputs[layer], batch["labels"], params=params,
                        rng=rng, **kwargs)

  def evaluate(ctx: HostContext, state, test_dataset, test_embeddings) -> dict:
    """Accuracy of the loss's own classifier on a classification split
    (test images of the training classes); {} on a zero-shot split."""
    del state
    if (name not in CLASSIFIERS or layer != "embedding" or
        tuple(test_dataset.class_names) != tuple(ctx.train.class_names)):
      return {}
    logits = classifier_logits(name, ctx.params, test_embeddings)
    pred = np.argmax(logits, axis=1)
    return {"classifier_accuracy":
            float(np.mean(pred == np.asarray(test_dataset.labels)))}

  return Method(name=f"loss:{name}", loss=loss, init_params=init_params,
                evaluate=evaluate)
