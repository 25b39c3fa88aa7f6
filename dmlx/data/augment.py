"""Jittable image augmentation and normalisation, run on device in the step.

The papers' recipe is resize to 256, random crop 224 and horizontal flip in
training, centre crop at test. dmlx stores images already resized to
``image_size`` (the "256"); ``crop_size`` (the "224") is cut from them, so the
scale of the recipe carries over to small images (e.g. 36 → 32).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop_flip(rng: jax.Array, images: jax.Array, crop_size: int,
                     flip: bool = True) -> jax.Array:
  """Per-example random ``crop_size`` crop and horizontal flip of ``[B,H,W,C]``."""
  b, h, w, c = images.shape
  if crop_size > min(h, w):
    raise ValueError(f"crop_size {crop_size} larger than images {h}x{w}.")
  k_y, k_x, k_f = jax.random.split(rng, 3)
  ys = jax.random.randint(k_y, (b,), 0, h - crop_size + 1)
  xs = jax.random.randint(k_x, (b,), 0, w - crop_size + 1)

  def crop(img, y, x):
    return jax.lax.dynamic_slice(img, (y, x, 0), (crop_size, crop_size, c))

  out = jax.vmap(crop)(images, ys, xs)
  if flip:
    do_flip = jax.random.bernoulli(k_f, 0.5, (b,))
    out = jnp.where(do_flip[:, None, None, None], out[:, :, ::-1], out)
  return out


def centre_crop(images: jax.Array, crop_size: int) -> jax.Array:
  """Centre ``crop_size`` crop of ``[B,H,W,C]`` (test-time view)."""
  _, h, w, _ = images.shape
  y, x = (h - crop_size) // 2, (w - crop_size) // 2
  return images[:, y:y + crop_size, x:x + crop_size]


def normalise(images: jax.Array, mean, std) -> jax.Array:
  """uint8 → float32 in 0..1, then ``(x - mean) / std`` per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def preprocess(images: jax.Array, rng: jax.Array | None, *, crop_size: int,
               flip: bool, mean, std, train: bool, bgr: bool = False) -> jax.Array:
  """The whole input pipeline: crop (random in training, centre at test),
  flip in training, normalise, and reverse the channels for networks trained
  on BGR input (Caffe BN-Inception)."""
  if crop_size and crop_size < images.shape[1]:
    images = (random_crop_flip(rng, images, crop_size, flip) if train
              else centre_crop(images, crop_size))
  elif train and flip:
    do_flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
    images = jnp.where(do_flip[:, None, None, None], images[:, :, ::-1], images)
  x = normalise(images, mean, std)
  return x[..., ::-1] if bgr else x
