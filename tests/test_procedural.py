"""The procedural dataset: deterministic, class-structured, attributes independent."""
import numpy as np

from dmlx.data.digits import load_digits
from dmlx.data.procedural import load_procedural


def test_deterministic_and_shapes():
  a = load_procedural(num_classes=6, per_class=5, image_size=24, seed=3)
  b = load_procedural(num_classes=6, per_class=5, image_size=24, seed=3)
  c = load_procedural(num_classes=6, per_class=5, image_size=24, seed=4)
  assert a.images.shape == (30, 24, 24, 3) and a.images.dtype == np.uint8
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.images, c.images)
  assert set(a.attributes) == {"colour", "orientation", "scale", "background"}


def test_attributes_independent_of_class():
  ds = load_procedural(num_classes=20, per_class=30, image_size=16, seed=0)
  # Every colour occurs in most classes: attributes are shared across classes.
  per_class = [len(np.unique(ds.attributes["colour"][ds.labels == c])) for c in range(20)]
  assert np.mean(per_class) > 4


def test_digits_upsampled():
  ds = load_digits(16)
  assert ds.images.shape == (1797, 16, 16, 1) and ds.num_classes == 10
  assert ds.images.max() == 255
