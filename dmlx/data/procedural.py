"""A procedural image dataset with object classes and shared latent attributes.

Each class is an object identity: a closed shape with a class-specific radial
profile r(θ) = 1 + Σ_k a_k cos(kθ + φ_k) and a class-specific stripe texture.
Four latent attributes vary independently of the class and are shared by all
classes: foreground colour, orientation, scale and background type. They are
stored with every example, so analyses that ask "what else do the embeddings
encode?" (Magnet's attribute concentration, MIC's shared characteristics)
can be measured. Images are generated deterministically from a seed.
"""
from __future__ import annotations

import numpy as np

from dmlx.data.base import Dataset

PALETTE = np.array([
    [230, 60, 50], [60, 180, 75], [60, 100, 230], [240, 200, 40],
    [170, 70, 200], [40, 200, 210]], np.float32)
NUM_ORIENTATIONS = 8
SCALES = (0.55, 0.7, 0.85)
NUM_BACKGROUNDS = 4


def _class_shapes(num_classes: int, rng: np.random.Generator) -> dict:
  harmonics = np.arange(2, 7)
  amps = rng.uniform(0.0, 0.35, (num_classes, len(harmonics)))
  amps *= (rng.uniform(size=(num_classes, len(harmonics))) < 0.7)
  return dict(
      harmonics=harmonics,
      amps=amps,
      phases=rng.uniform(0, 2 * np.pi, (num_classes, len(harmonics))),
      stripe_freq=rng.uniform(1.5, 5.0, num_classes),
      stripe_angle=rng.uniform(0, np.pi, num_classes),
      stripe_depth=rng.uniform(0.0, 0.6, num_classes))


def _background(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if kind == 0:  # dark plain
    bg = np.full((size, size, 3), 25.0, np.float32)
  elif kind == 1:  # light plain
    bg = np.full((size, size, 3), 200.0, np.float32)
  elif kind == 2:  # gradient in a random direction
    a = rng.uniform(0, 2 * np.pi)
    g = (np.cos(a) * xx + np.sin(a) * yy)
    g = (g - g.min()) / (np.ptp(g) + 1e-6)
    bg = np.repeat((40 + 160 * g)[..., None], 3, axis=-1)
  else:  # coloured noise
    bg = rng.uniform(0, 255, (size // 4 + 1, size // 4 + 1, 3)).astype(np.float32)
    bg = np.repeat(np.repeat(bg, 4, 0), 4, 1)[:size, :size]
  return bg


def load_procedural(num_classes: int = 120, per_class: int = 40,
                    image_size: int = 32, seed: int = 0) -> Dataset:
  """Generates the procedural object dataset.

  Args:
    num_classes: number of object identities (classes).
    per_class: images per class.
    image_size: side of the square RGB images.
    seed: generation seed; the same seed always yields the same images.

  Returns:
    A :class:`Dataset` with attributes ``colour``, ``orientation``, ``scale``,
    ``background`` (each an int array drawn independently of the class).
  """
  if num_classes < 2 or per_class < 1 or image_size < 8:
    raise ValueError(
        f"procedural dataset needs num_classes >= 2, per_class >= 1, "
        f"image_size >= 8; got {num_classes}, {per_class}, {image_size}.")
  rng = np.random.default_rng(seed)
  shapes = _class_shapes(num_classes, rng)
  n = num_classes * per_class
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  attrs = {
      "colour": rng.integers(0, len(PALETTE), n),
      "orientation": rng.integers(0, NUM_ORIENTATIONS, n),
      "scale": rng.integers(0, len(SCALES), n),
      "background": rng.integers(0, NUM_BACKGROUNDS, n),
  }
  yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
  images = np.empty((n, image_size, image_size, 3), np.uint8)
  for i in range(n):
    c = labels[i]
    centre = image_size / 2 + rng.normal(0, image_size * 0.04, 2)
    theta0 = attrs["orientation"][i] * (2 * np.pi / NUM_ORIENTATIONS)
    radius = SCALES[attrs["scale"][i]] * image_size / 2 / 1.35
    dy, dx = yy - centre[0], xx - centre[1]
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx) - theta0
    profile = 1.0 + (shapes["amps"][c][:, None, None] * np.cos(
        shapes["harmonics"][:, None, None] * theta[None] +
        shapes["phases"][c][:, None, None])).sum(0)
    inside = np.clip((radius * profile - rho) + 0.5, 0.0, 1.0)  # antialiased
    # Class texture: stripes in the object's frame.
    ang = shapes["stripe_angle"][c] + theta0
    u = (np.cos(ang) * dx + np.sin(ang) * dy) / max(radius, 1.0)
    stripes = 1.0 - shapes["stripe_depth"][c] * (
        0.5 + 0.5 * np.sign(np.sin(2 * np.pi * shapes["stripe_freq"][c] * u)))
    fg = PALETTE[attrs["colour"][i]] * stripes[..., None]
    fg = fg * rng.uniform(0.85, 1.15)
    bg = _background(int(attrs["background"][i]), image_size, rng)
    img = inside[..., None] * fg + (1 - inside[..., None]) * bg
    img += rng.normal(0, 6.0, img.shape)
    images[i] = np.clip(img, 0, 255).astype(np.uint8)
  return Dataset(images=images, labels=labels,
                 class_names=tuple(f"object{c:03d}" for c in range(num_classes)),
                 attributes={k: v.astype(np.int32) for k, v in attrs.items()},
                 name="procedural")
