"""Device-side augmentation in jnp, run inside the jitted train step.

Images arrive as uint8 batches and are augmented in raw pixel space ([0, 255] floats); the model's input
normalisation (resnet_jax.classifier.Classifier) comes after. The CIFAR recipe of He et al. 2015 Sec. 4.2:
"4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded image or its
horizontal flip".
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def random_crop_with_padding(key: jax.Array, images: jax.Array, padding: int,
                             pad_value: jax.Array | float = 0.0) -> jax.Array:
  """Pads `padding` pixels on each side with `pad_value` (per channel) and takes a random crop of the
  original size from each image independently."""
  if padding == 0:
    return images
  batch, height, width, _ = images.shape
  pad_value = jnp.asarray(pad_value, images.dtype)
  padded = jnp.pad(images - pad_value, ((0, 0), (padding, padding), (padding, padding), (0, 0))) + pad_value
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def random_flip_left_right(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


@dataclasses.dataclass(frozen=True)
class SmallImageAugment:
  """Pad-and-crop plus horizontal flip for small images (CIFAR, SVHN, digits).

  pad_value: per-channel value shown in the padding. fb.resnet.torch normalises before padding, so its
  padding is the mean colour; pass the channel means to reproduce that, or 0 to pad with black.
  """
  crop_padding: int = 4
  flip: bool = True
  pad_value: Sequence[float] = (0.0,)

  def __call__(self, key: jax.Array, images_uint8: jax.Array) -> jax.Array:
    crop_key, flip_key = jax.random.split(key)
    images = images_uint8.astype(jnp.float32)
    images = random_crop_with_padding(crop_key, images, self.crop_padding, np.asarray(self.pad_value, np.float32))
    if self.flip:
      images = random_flip_left_right(flip_key, images)
    return images
