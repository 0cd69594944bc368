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
Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) are the last device operation (`mix_images`), with the
semantics of timm's `Mixup` in mode 'batch' (timm/data/mixup.py at 066e490; the lines are cited where used): one
mixing weight lambda per batch, each example paired with its mirror in the global batch, the labels mixed with the
same lambda (`SmallImageAugment.mix_targets`). Mixing is affine per pixel, so it gives the same images before or
after the model's normalisation (timm mixes normalised tensors), and with `center` set.
Host-side (streaming) augmentation for large images lives in `resnet_jax.data.host_augment`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

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


class DeviceBatch(NamedTuple):
  """A training batch on its way through the device operations.

  images: float [B, H, W, C], raw pixel scale (centred when `SmallImageAugment.center` is set).
  label_weight: float32 scalar lambda: each example's target is lambda * its own label + (1 - lambda) * the label
    of its partner (`partner`); 1 for a batch that is not mixed.
  """
  images: jax.Array
  label_weight: jax.Array


def partner(batch_values: jax.Array) -> jax.Array:
  """The partner of each example in the global batch, along axis 0: example i is mixed with example B - 1 - i
  (timm's `x.flip(0)` and `target.flip(0)`, mixup.py L25-26 and `Mixup._mix_batch`). The batch is one global
  array, so pairs cross devices and processes and the result does not depend on how the batch is split."""
  return batch_values[::-1]


def mixing_draws(key: jax.Array, augment: 'SmallImageAugment', height: int, width: int) -> dict[str, jax.Array]:
  """The random choices of one batch's mixing, timm's `Mixup._params_per_batch` (mixup.py L141-157) and
  `rand_bbox`'s centre (L30-51): 'mixed' (the batch is mixed: probability mix_prob), 'cutmix' (CutMix rather than
  mixup: probability mix_switch_prob when both alphas are > 0, always when only cutmix_alpha is), 'lambda'
  ~ Beta(alpha, alpha) of the chosen operation, and 'center' (row in [0, height), column in [0, width)), the
  CutMix box's centre. JAX draws, not NumPy's: the same distributions as timm, not the same numbers."""
  mixed_key, switch_key, lambda_key, row_key, column_key = jax.random.split(key, 5)
  mixed = jax.random.uniform(mixed_key) < augment.mix_prob
  if augment.mixup_alpha > 0 and augment.cutmix_alpha > 0:
    cutmix = jax.random.uniform(switch_key) < augment.mix_switch_prob
    alpha = jnp.where(cutmix, jnp.float32(augment.cutmix_alpha), jnp.float32(augment.mixup_alpha))
  else:
    cutmix = jnp.asarray(augment.cutmix_alpha > 0)
    alpha = jnp.float32(max(augment.mixup_alpha, augment.cutmix_alpha))
  center = jnp.stack([jax.random.randint(row_key, (), 0, height), jax.random.randint(column_key, (), 0, width)])
  return {'mixed': mixed, 'cutmix': cutmix, 'lambda': jax.random.beta(lambda_key, alpha, alpha), 'center': center}


def cutmix_box(mixing_weight: jax.Array, center: jax.Array, height: int, width: int) -> jax.Array:
  """timm's `rand_bbox` (mixup.py L30-51) for a drawn centre: cut sides int(side * sqrt(1 - lambda)), the box
  centre -/+ half of each (integer halves), clipped to the image. int32 [4]: top, bottom, left, right (bottom
  and right exclusive, as the slices x[:, :, yl:yh, xl:xh])."""
  ratio = jnp.sqrt(1.0 - mixing_weight)
  cut_height = jnp.floor(height * ratio).astype(jnp.int32)
  cut_width = jnp.floor(width * ratio).astype(jnp.int32)
  top, bottom = jnp.clip(center[0] - cut_height // 2, 0, height), jnp.clip(center[0] + cut_height // 2, 0, height)
  left, right = jnp.clip(center[1] - cut_width // 2, 0, width), jnp.clip(center[1] + cut_width // 2, 0, width)
  return jnp.stack([top, bottom, left, right])


def box_corrected_weight(box: jax.Array, height: int, width: int) -> jax.Array:
  """timm's `correct_lam` (default True; `cutmix_bbox_and_lam`, mixup.py L77-87): lambda = 1 - box area / image
  area, the fraction of each image that stays its own once the box is clipped at the border (clipping makes the
  box smaller than the drawn lambda asks, so the labels follow the pixels actually pasted)."""
  area = (box[1] - box[0]) * (box[3] - box[2])
  return 1.0 - area.astype(jnp.float32) / float(height * width)


def mix_images(key: jax.Array, images: jax.Array, augment: 'SmallImageAugment') -> DeviceBatch:
  """Mixup or CutMix of a whole batch with its mirror (`partner`), timm's `Mixup._mix_batch`: mixup blends
  lambda * x + (1 - lambda) * partner(x); CutMix pastes the partner's pixels into the box (`cutmix_box`) and
  lambda becomes the box-corrected weight. Both are written as one per-pixel weight w: w * x + (1 - w) *
  partner(x), w = lambda (mixup), 0 inside the box and 1 outside it (CutMix: exact copies), 1 unmixed."""
  _, height, width, _ = images.shape
  draws = mixing_draws(key, augment, height, width)
  box = cutmix_box(draws['lambda'], draws['center'], height, width)
  rows, columns = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  in_box = (rows >= box[0]) & (rows < box[1]) & (columns >= box[2]) & (columns < box[3])
  cutmix_weight = jnp.where(in_box, 0.0, 1.0)
  pixel_weight = jnp.where(draws['mixed'], jnp.where(draws['cutmix'], cutmix_weight, draws['lambda']), 1.0)
  label_weight = jnp.where(draws['cutmix'], box_corrected_weight(box, height, width), draws['lambda'])
  label_weight = jnp.where(draws['mixed'], label_weight, 1.0).astype(jnp.float32)
  pixel_weight = pixel_weight.astype(images.dtype)[None, :, :, None]
  return DeviceBatch(pixel_weight * images + (1 - pixel_weight) * partner(images), label_weight)


#: Random erasing's fill values (timm --remode; random_erasing.py `_get_pixels`), in the normalised space the
#: model sees: 'const' 0 (torchvision's RandomErasing value=0 is the same), 'rand' one N(0, 1) colour per box
#: (per channel), 'pixel' N(0, 1) per pixel and channel (timm's default mode).
ERASE_MODES = ('const', 'rand', 'pixel')
#: timm RandomErasing's defaults (random_erasing.py L46-111), used by both recipes that erase: erased area a
#: fraction U[0.02, 1/3] of the image (divided by the number of boxes), aspect exp(U[ln 0.3, ln 1/0.3]), up to
#: 10 tries for a box that fits.
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (float(np.log(0.3)), float(np.log(1 / 0.3)))
ERASE_TRIES = 10


def erasing_draws(key: jax.Array, batch: int, augment: 'SmallImageAugment') -> dict[str, jax.Array]:
  """The uniform draws of random erasing for `batch` images, per example (S = random_erase_count slots, T =
  ERASE_TRIES): 'erase' U[0, 1) [B] (erased when < random_erase_prob), 'count' U[0, 1) [B] (timm's
  randint(1, count) boxes: 1 + floor(u * count)), and for every slot and try [B, S, T] 'area' U[.02, 1/3),
  'log_aspect' U[ln .3, ln 1/.3), 'top' and 'left' U[0, 1) (the box's corner, uniform over the positions where
  it fits: floor(u * (H - h + 1))). `erase_images` turns them into boxes as timm's loop does."""
  keys = jax.random.split(key, 6)
  slots = (batch, augment.random_erase_count, ERASE_TRIES)
  return {'erase': jax.random.uniform(keys[0], (batch,)), 'count': jax.random.uniform(keys[1], (batch,)),
          'area': jax.random.uniform(keys[2], slots, minval=ERASE_AREA[0], maxval=ERASE_AREA[1]),
          'log_aspect': jax.random.uniform(keys[3], slots, minval=ERASE_LOG_ASPECT[0], maxval=ERASE_LOG_ASPECT[1]),
          'top': jax.random.uniform(keys[4], slots), 'left': jax.random.uniform(keys[5], slots)}


def erasing_boxes(draws: dict[str, jax.Array], height: int, width: int, prob: float,
                  count: int) -> tuple[jax.Array, jax.Array]:
  """timm's `RandomErasing._erase` (random_erasing.py L80-101) for given draws, vectorised: with probability
  `prob`, n = randint(1, count) boxes; each takes the first of its tries whose h = round(sqrt(A * r)) and
  w = round(sqrt(A / r)) (A = area * H * W / n, r = exp(log_aspect)) satisfy h < H and w < W, and no box when
  none does. Returns (int32 [B, S, 4] top, left, h, w of each slot's box; bool [B, S] whether it is erased)."""
  boxes_wanted = 1 + jnp.minimum(jnp.floor(draws['count'] * count), count - 1).astype(jnp.int32)  # [B]
  target_area = draws['area'] * (height * width) / boxes_wanted[:, None, None].astype(jnp.float32)
  aspect = jnp.exp(draws['log_aspect'])
  box_height = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  box_width = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (box_height < height) & (box_width < width)  # [B, S, T]
  first = jnp.argmax(fits, axis=-1)[..., None]  # the first try that fits (0 when none does: masked below)
  pick = lambda values: jnp.take_along_axis(values, first, axis=-1)[..., 0]
  box_height, box_width = pick(box_height), pick(box_width)
  top = jnp.floor(pick(draws['top']) * (height - box_height + 1).astype(jnp.float32)).astype(jnp.int32)
  left = jnp.floor(pick(draws['left']) * (width - box_width + 1).astype(jnp.float32)).astype(jnp.int32)
  erased = ((draws['erase'] < prob)[:, None] & (jnp.arange(count)[None, :] < boxes_wanted[:, None])
            & jnp.any(fits, axis=-1))
  return jnp.stack([top, left, box_height, box_width], axis=-1), erased


def erase_images(key: jax.Array, images: jax.Array, augment: 'SmallImageAugment') -> jax.Array:
  """Random erasing (Zhong et al. 2020; timm's RandomErasing, `erasing_boxes`), per example, after the model's
  normalisation: the fill is drawn in normalised units (ERASE_MODES) and written as mean + std * fill in the
  raw pixels that reach the model, which normalises them back to the fill exactly (in the centred space of
  `center`, as std * fill). Boxes are written in slot order, later ones over earlier ones, as timm's loop."""
  batch, height, width, channels = images.shape
  draw_key, fill_key = jax.random.split(key)
  boxes, erased = erasing_boxes(erasing_draws(draw_key, batch, augment), height, width,
                                augment.random_erase_prob, augment.random_erase_count)
  std = jnp.asarray(np.asarray(augment.std, np.float32))
  mean = 0.0 if augment.center is not None else jnp.asarray(np.asarray(augment.mean, np.float32))
  rows, columns = jnp.arange(height)[None, :, None], jnp.arange(width)[None, None, :]
  for slot, slot_key in enumerate(jax.random.split(fill_key, augment.random_erase_count)):
    if augment.random_erase_mode == 'pixel':
      fill = jax.random.normal(slot_key, (batch, height, width, channels))
    elif augment.random_erase_mode == 'rand':
      fill = jax.random.normal(slot_key, (batch, 1, 1, channels))
    else:
      fill = jnp.zeros((batch, 1, 1, 1))
    top, left, box_height, box_width = (boxes[:, slot, index][:, None, None] for index in range(4))
    inside = ((rows >= top) & (rows < top + box_height) & (columns >= left) & (columns < left + box_width)
              & erased[:, slot][:, None, None])
    images = jnp.where(inside[..., None], mean + std * fill, images)
  return images


def _pad_crop(key: jax.Array, batch: DeviceBatch, augment: 'SmallImageAugment') -> DeviceBatch:
  pad_value = 0.0 if augment.center is not None else np.asarray(augment.pad_value, np.float32)
  return batch._replace(images=random_crop_with_padding(key, batch.images, augment.crop_padding, pad_value))


def _flip(key: jax.Array, batch: DeviceBatch, augment: 'SmallImageAugment') -> DeviceBatch:
  return batch._replace(images=random_flip_left_right(key, batch.images)) if augment.flip else batch


def _erase(key: jax.Array, batch: DeviceBatch, augment: 'SmallImageAugment') -> DeviceBatch:
  # Per example, before mixing: timm erases in each example's transform (after Normalize) and mixes the batch
  # in the loader's collate, torchvision the same (presets.py, then the collate's mixup/CutMix).
  if augment.random_erase_prob == 0:
    return batch
  return batch._replace(images=erase_images(key, batch.images, augment))


def _mix(key: jax.Array, batch: DeviceBatch, augment: 'SmallImageAugment') -> DeviceBatch:
  # Mixing comes last, as in timm and torchvision (after the per-example crops and flips, on the batch).
  return mix_images(key, batch.images, augment) if augment.mixes_labels else batch


#: The per-batch device operations of training, in the order they run inside the jitted step: name ->
#: function(key, DeviceBatch, the SmallImageAugment holding the options) -> DeviceBatch. Each is the one
#: implementation of its operation, for both pipelines (the streaming pipeline's host operations are
#: `host_pipeline.HOST_OPERATIONS`); normalisation follows in the model (`classifier.Classifier`). An operation
#: that mixes examples also sets the batch's label weight, which the train step applies to the targets
#: (`SmallImageAugment.mix_targets`). Adding an operation: a function and its entry here, its option in
#: `pipelines.InputOptions` (docs/extending.md). Keys (`operation_keys`): the first `_SPLIT_OPERATIONS` entries
#: take jax.random.split(step key, _SPLIT_OPERATIONS), as before any other existed; each later entry takes
#: jax.random.fold_in(step key, its position), so adding one leaves the keys, i.e. the augmentation of earlier
#: runs, bitwise unchanged.
DEVICE_OPERATIONS = {'pad_crop': _pad_crop, 'flip': _flip, 'erase': _erase, 'mix': _mix}
_SPLIT_OPERATIONS = 2
#: The operations in the order they were added, which decides their keys (`operation_keys`): an operation
#: placed before others in DEVICE_OPERATIONS (random erasing comes before mixing, as in timm) takes the next
#: position here, so the keys of the earlier ones stay what they were.
_KEY_ORDER = ('pad_crop', 'flip', 'mix', 'erase')


def operation_keys(key: jax.Array) -> list[jax.Array]:
  """One key per operation, in `_KEY_ORDER`, from the step's augmentation key (see the note above
  DEVICE_OPERATIONS)."""
  keys = list(jax.random.split(key, _SPLIT_OPERATIONS))
  return keys + [jax.random.fold_in(key, index) for index in range(_SPLIT_OPERATIONS, len(_KEY_ORDER))]


@dataclasses.dataclass(frozen=True)
class SmallImageAugment:
  """The device operations (`DEVICE_OPERATIONS`: pad-and-crop, horizontal flip, random erasing, mixup/CutMix) for
  every pipeline;
  float32 out, raw pixel scale. crop_padding 0, flip False and no mixing leave only the cast (what the host has
  augmented already).

  pad_value: per-channel raw value shown in the padding (0: black; the channel means reproduce padding
    after per-channel normalisation). Ignored when `center` is set.
  center: the normalisation mean (nested tuples: per channel [C] or a mean image [H, W, C]); when set, the
    image is centred, zero-padded, cropped and flipped, and the mean added back (see the module docstring):
    exactly "normalise, then pad" for the model that normalises with that mean.
  mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob: mixup/CutMix (`mix_images`), timm's --mixup, --cutmix,
    --mixup-prob, --mixup-switch-prob; the alphas at 0 turn each off.
  random_erase_prob, random_erase_mode, random_erase_count: random erasing (`erase_images`), timm's --reprob,
    --remode, --recount; probability 0 turns it off.
  mean, std: the model's normalisation (nested tuples, per channel or per pixel), which random erasing's fill
    is given in.
  """
  crop_padding: int = 4
  flip: bool = True
  pad_value: Sequence[float] = (0.0,)
  center: Any = None
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  mix_switch_prob: float = 0.5
  random_erase_prob: float = 0.0
  random_erase_mode: str = 'pixel'
  random_erase_count: int = 1
  mean: Any = (0.0,)
  std: Any = (1.0,)

  def __post_init__(self):  # nested tuples keep the module hashable (it is a static part of jitted code)
    for name in ('pad_value', 'center', 'mean', 'std'):
      object.__setattr__(self, name, nested_tuple(getattr(self, name)))

  @property
  def mixes_labels(self) -> bool:
    """Whether batches can be mixed (an alpha > 0 and mix_prob > 0), so that the targets must be mixed too."""
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

  def draw(self, key: jax.Array, batch: int) -> dict[str, jax.Array]:
    """The random choices `self(key, images)` makes for a batch of `batch` images, for another implementation to
    replay them (benchmarks/peers/torch_reference.py): 'offsets' int32 [batch, 2], the crop's top-left (row,
    column) in the image padded by `crop_padding` on each side (zeros when crop_padding is 0: no crop), and
    'flip' bool [batch] (all False when flip is off). Same keys, same calls: the draws are bitwise the ones the
    augmentation uses (tests/test_training_parity.py replays them in NumPy against it). Mixing's own draws are
    `mixing_draws` with the mix operation's key."""
    crop_key, flip_key = operation_keys(key)[:2]
    offsets = (crop_offsets(crop_key, batch, self.crop_padding) if self.crop_padding
               else jnp.zeros((batch, 2), jnp.int32))
    flip = flip_mask(flip_key, batch) if self.flip else jnp.zeros((batch,), bool)
    return {'offsets': offsets, 'flip': flip}

  def apply(self, key: jax.Array, images_uint8: jax.Array) -> DeviceBatch:
    """Every device operation on a uint8 batch: the float32 images and the label weight for `mix_targets`."""
    batch = DeviceBatch(images_uint8.astype(jnp.float32), jnp.float32(1.0))
    mean = 0.0 if self.center is None else jnp.asarray(np.asarray(self.center, np.float32))
    if self.center is not None:
      batch = batch._replace(images=batch.images - mean)
    keys = dict(zip(_KEY_ORDER, operation_keys(key)))
    for name, operation in DEVICE_OPERATIONS.items():
      batch = operation(keys[name], batch, self)
    return batch._replace(images=batch.images + mean) if self.center is not None else batch

  def mix_targets(self, targets: jax.Array, label_weight: jax.Array) -> jax.Array:
    """Probability targets [B, classes] of the batch `apply` returned with `label_weight`: lambda * targets +
    (1 - lambda) * partner(targets), timm's `mixup_target` (mixup.py L22-27). Label smoothing commutes with the
    mix (both are affine and the rows sum to 1), so smoothing the one-hot targets first gives timm's targets.
    Unchanged, and no operation compiled, when this augmentation never mixes."""
    if not self.mixes_labels:
      return targets
    return label_weight * targets + (1.0 - label_weight) * partner(targets)

  def __call__(self, key: jax.Array, images_uint8: jax.Array) -> jax.Array:
    """The augmented images of an augmentation that leaves labels alone (evaluation tools, throughput); a
    training step uses `apply` and `mix_targets`."""
    if self.mixes_labels:
      raise ValueError('this augmentation mixes labels: use apply() and mix_targets(), not the images alone')
    return self.apply(key, images_uint8).images
