"""Device-side augmentation in jnp, run inside the jitted train step (small, device-resident datasets).

Images arrive as uint8 batches and are augmented in raw pixel space ([0, 255] floats); the model's input
normalisation (resnet_jax.classifier.Classifier) comes after. The CIFAR recipe of He et al. 2015 Sec. 4.2:
"4 pixels are padded on each side, and a 32x32 crop is randomly sampled from the padded image or its
horizontal flip".

Padding before or after normalisation (`config.augment.pad_after_normalize`):
  - before (False): the raw image is padded with black (0) and the model normalises the crop, so the padding
    reaches the network as (0 - mean) / std.
  - after (True): the image is normalised first and padded with zeros -- fb.resnet.torch's order
    (ColorNormalize, then RandomCrop(32, 4)) for per-channel statistics, and He et al. 2015's "per-pixel mean
    subtracted" image padded with zeros. Because the model normalises *after* this function, the ops are done
    on the centred image and the mean is added back at the crop's coordinates:
        out = T(x - m) + m,   T = zero-pad, crop, flip,
    so that the model computes (out - m) / s = T(x - m) / s = T((x - m) / s) exactly, both for per-channel
    m (the padding then shows the mean colour) and for a per-pixel mean image m (the padding is zero after
    mean subtraction, whatever the crop offset). With a mean image the output can leave [0, 255] slightly.
Host-side (streaming) augmentation for large images lives in `resnet_jax.data.host_augment`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.config import nested_tuple


def crop_offsets(key: jax.Array, batch: int, padding: int) -> jax.Array:
  """The random crop's top-left corners in the padded image, int32 [batch, 2] (row, column) in [0, 2 * padding]:
  the one draw `random_crop_with_padding` makes (and `SmallImageAugment.draw` exports)."""
  return jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)


def flip_mask(key: jax.Array, batch: int) -> jax.Array:
  """Which images are mirrored, bool [batch]: the one draw `random_flip_left_right` makes."""
  return jax.random.bernoulli(key, 0.5, (batch,))


def random_crop_with_padding(key: jax.Array, images: jax.Array, padding: int,
                             pad_value: jax.Array | float = 0.0) -> jax.Array:
  """Pads `padding` pixels on each side with `pad_value` (per channel) and takes a random crop of the
  original size from each image independently."""
  if padding == 0:
    return images
  batch, height, width, _ = images.shape
  pad_value = jnp.asarray(pad_value, images.dtype)
  padded = jnp.pad(images - pad_value, ((0, 0), (padding, padding), (padding, padding), (0, 0))) + pad_value
  offsets = crop_offsets(key, batch, padding)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def random_flip_left_right(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image with probability 1/2."""
  flip = flip_mask(key, images.shape[0])
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _pad_crop(key: jax.Array, images: jax.Array, augment: 'SmallImageAugment') -> jax.Array:
  pad_value = 0.0 if augment.center is not None else np.asarray(augment.pad_value, np.float32)
  return random_crop_with_padding(key, images, augment.crop_padding, pad_value)


def _flip(key: jax.Array, images: jax.Array, augment: 'SmallImageAugment') -> jax.Array:
  return random_flip_left_right(key, images) if augment.flip else images


#: The per-batch device operations of training, in the order they run inside the jitted step: name ->
#: function(key, float images [B, H, W, C], the SmallImageAugment holding the options) -> images. Each is the one
#: implementation of its operation, for both pipelines (the streaming pipeline's host operations are
#: `host_pipeline.HOST_OPERATIONS`); normalisation follows in the model (`classifier.Classifier`). The step's
#: augmentation key is split into one key per entry, in this order. Adding an operation: a function and its entry
#: here, its option in `pipelines.InputOptions` (docs/extending.md). An entry added after these two changes their
#: keys, i.e. the augmentation of earlier runs: give the new one `jax.random.fold_in(key, ...)` of the step key
#: instead if earlier runs must stay bitwise.
DEVICE_OPERATIONS = {'pad_crop': _pad_crop, 'flip': _flip}


@dataclasses.dataclass(frozen=True)
class SmallImageAugment:
  """The device operations (`DEVICE_OPERATIONS`: pad-and-crop, horizontal flip) for every pipeline; float32 out,
  raw pixel scale. crop_padding 0 and flip False leave only the cast (what the host has augmented already).

  pad_value: per-channel raw value shown in the padding (0: black; the channel means reproduce padding
    after per-channel normalisation). Ignored when `center` is set.
  center: the normalisation mean (nested tuples: per channel [C] or a mean image [H, W, C]); when set, the
    image is centred, zero-padded, cropped and flipped, and the mean added back (see the module docstring):
    exactly "normalise, then pad" for the model that normalises with that mean.
  """
  crop_padding: int = 4
  flip: bool = True
  pad_value: Sequence[float] = (0.0,)
  center: Any = None

  def __post_init__(self):  # nested tuples keep the module hashable (it is a static part of jitted code)
    object.__setattr__(self, 'pad_value', nested_tuple(self.pad_value))
    object.__setattr__(self, 'center', nested_tuple(self.center))

  def draw(self, key: jax.Array, batch: int) -> dict[str, jax.Array]:
    """The random choices `self(key, images)` makes for a batch of `batch` images, for another implementation to
    replay them (benchmarks/peers/torch_reference.py): 'offsets' int32 [batch, 2], the crop's top-left (row,
    column) in the image padded by `crop_padding` on each side (zeros when crop_padding is 0: no crop), and
    'flip' bool [batch] (all False when flip is off). Same keys, same calls: the draws are bitwise the ones the
    augmentation uses (tests/test_training_parity.py replays them in NumPy against it)."""
    crop_key, flip_key = jax.random.split(key, len(DEVICE_OPERATIONS))
    offsets = (crop_offsets(crop_key, batch, self.crop_padding) if self.crop_padding
               else jnp.zeros((batch, 2), jnp.int32))
    flip = flip_mask(flip_key, batch) if self.flip else jnp.zeros((batch,), bool)
    return {'offsets': offsets, 'flip': flip}

  def __call__(self, key: jax.Array, images_uint8: jax.Array) -> jax.Array:
    images = images_uint8.astype(jnp.float32)
    mean = 0.0 if self.center is None else jnp.asarray(np.asarray(self.center, np.float32))
    if self.center is not None:
      images = images - mean
    for operation_key, operation in zip(jax.random.split(key, len(DEVICE_OPERATIONS)), DEVICE_OPERATIONS.values()):
      images = operation(operation_key, images, self)
    return images + mean if self.center is not None else images
