"""The plain method: one registry loss on the embedding, no host state.

``config.loss.name`` picks the loss (triplet_semihard, contrastive, npair,
margin, proxy_nca, lifted_structure, nca, softmax, ...), ``config.loss.kwargs``
its hyper-parameters; loss parameters (β, proxies, classifier weights) live in
``params['method']``.
"""
from __future__ import annotations

from dmlx import losses
from dmlx.methods.base import Method, ModelInfo


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

  return Method(name=f"loss:{name}", loss=loss, init_params=init_params)
