"""The network of a dmlx run as a function from images to embeddings."""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from dmlx.inference import workdir as workdir_lib
from dmlx.inference.embeddings import Embeddings
from dmlx.inference.inputs import DecodeOptions
from dmlx.inference.inputs import ImageSet
from dmlx.inference.inputs import read_images


class Embedder:
  """Embeds images with a trained network, in inference mode (no dropout,
  BatchNorm's running statistics), batched and jitted over every local
  device: exactly the features the trainer evaluates (``dmlx.train.step``'s
  feature function and batching).

  ``Embedder.from_workdir(workdir)`` loads a finished or running run (its
  ``config.json`` and latest checkpoint) without loading its dataset.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: dict[str, Any], *,
               step: int = 0, batch_size: int | None = None, workdir: str = ""):
    from dmlx import models  # pylint: disable=g-import-not-at-top
    from dmlx.train import run as run_lib  # pylint: disable=g-import-not-at-top
    from dmlx.train import step as step_lib  # pylint: disable=g-import-not-at-top
    self.config = config
    self.step = int(step)
    self.workdir = workdir
    self.batch_size = int(batch_size or config.eval.batch_size)
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    pretrained = config.model.get("pretrained", "")
    # config.json holds the resolved normalisation: the weights file it came
    # from is needed only for a config that was not written by a run.
    self.data_config = (run_lib.data_config(config) if pretrained and os.path.exists(
        pretrained) else config.data)
    self.model = models.build_model(config.model)
    self.mesh = step_lib.make_mesh()
    self._variables = step_lib.replicate(self.mesh, variables)
    channels = _input_channels(variables)
    self.decode = DecodeOptions.from_data_config(self.data_config, channels)
    self._features = step_lib.make_feature_fn(self.model, self.data_config)
    self._extract = step_lib.extract_features
    self.metric = "cosine" if config.eval.get("l2_normalise", False) else "l2"

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None,
                   config: ml_collections.ConfigDict | None = None,
                   batch_size: int | None = None) -> "Embedder":
    """The network of ``workdir`` at its latest checkpoint (or ``step``);
    ``config`` defaults to the run's own ``config.json``."""
    state = workdir_lib.read_workdir(workdir, step, config)
    return cls(state.config, state.variables, step=state.step,
               batch_size=batch_size, workdir=state.workdir)

  @property
  def layers(self) -> tuple[str, ...]:
    """The named outputs of the network (``embedding``, ``pooled``, ...);
    a map output also takes a ``'name@G'`` grid pooling."""
    size = self.data_config.crop_size or self.data_config.image_size
    dummy = jax.ShapeDtypeStruct((1, size, size, self.decode.channels), np.float32)
    out = jax.eval_shape(lambda v, x: self.model.apply(v, x, train=False),
                         self._variables, dummy)
    return tuple(sorted(out))

  def images(self, source: Any, num_workers: int | None = None) -> ImageSet:
    """``source`` (arrays, PIL images, files, a folder or a zip) decoded as
    the run's dataset decodes its files."""
    return read_images(source, self.decode, num_workers=num_workers)

  def __call__(self, source: Any, layer: str = "embedding") -> np.ndarray:
    """``[N, D]`` float32 features of ``source`` at ``layer``."""
    return self.features(self.images(source).images, (layer,))[layer]

  def features(self, images: np.ndarray, layers: Sequence[str] = ("embedding",)
               ) -> dict[str, np.ndarray]:
    """``{layer: [N, D]}`` of decoded uint8 ``images`` ``[N, H, W, C]``."""
    images = np.asarray(images)
    want = (self.decode.image_size, self.decode.image_size, self.decode.channels)
    if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8:
      raise ValueError(f"Expected uint8 images [N, {want[0]}, {want[1]}, {want[2]}], "
                       f"got {images.dtype} {images.shape}; pass them through "
                       "Embedder.images() to decode and resize.")
    if not len(images):
      return {layer: np.zeros((0, 0), np.float32) for layer in layers}
    return self._extract(self._features, self._variables, images, self.mesh,
                         self.batch_size, tuple(layers))

  def embed(self, source: Any, layer: str = "embedding",
            num_workers: int | None = None) -> Embeddings:
    """:class:`Embeddings` of ``source``: the vectors with the images'
    names, labels (class folders) and the metric the run evaluates with."""
    image_set = self.images(source, num_workers)
    vectors = self.features(image_set.images, (layer,))[layer]
    return Embeddings(vectors=vectors, names=image_set.names,
                      labels=image_set.labels, class_names=image_set.class_names,
                      layer=layer, metric=self.metric, source=image_set.source,
                      model=f"{self.workdir}@{self.step}" if self.workdir else "")


def _input_channels(variables: dict[str, Any]) -> int | None:
  """The input channels of the first convolution or dense kernel."""
  leaves = jax.tree_util.tree_flatten_with_path(variables.get("params", {}))[0]
  for path, leaf in leaves:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if name.endswith("kernel") and np.ndim(leaf) == 4:
      return int(np.shape(leaf)[2])
  return None
