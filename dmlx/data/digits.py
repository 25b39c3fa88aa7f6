"""scikit-learn's bundled handwritten digits as a tiny offline image dataset.

1,797 greyscale 8×8 images of 10 digit classes, shipped inside scikit-learn,
so tests and the quick default run need no download.
"""
from __future__ import annotations

import numpy as np

from dmlx.data.base import Dataset, make_dataset


def load_digits(image_size: int = 16) -> Dataset:
  """Loads scikit-learn's digits, upsampled to ``image_size`` (a multiple of 8)
  by pixel repetition, values scaled to 0..255, one grey channel."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  if image_size % 8:
    raise ValueError(f"digits image_size must be a multiple of 8, got {image_size}.")
  raw = datasets.load_digits()
  images = raw.images.astype(np.float32) * (255.0 / 16.0)
  factor = image_size // 8
  images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
  return make_dataset(np.round(images).astype(np.uint8), raw.target,
                      class_names=tuple(str(d) for d in range(10)),
                      name="digits")
