"""Input normalisation: the one (mean, std) value of a run, in [0, 255] pixel units.

Decided here, once per run, for either pipeline (`for_run`: the config's `input.mean/std`, or the mode
`config.augment.normalization` applied to the training split); the train data hands it on as
`train_data.normalization`; `classifier.Classifier` carries it, applies (x - mean) / std inside the jitted step
and describes it for the checkpoint (`classifier.describe`), so a loaded run classifies raw pixels with nothing
else to know. Modes:
  'per_channel': mean and std per channel over all pixels of the training split (fb.resnet.torch; for CIFAR-10
     this gives its {125.3, 123.0, 113.9} / {63.0, 62.1, 66.7}).
  'per_pixel_mean': the mean image (float32 values), std 1 (He et al. 2015 Sec. 4.2: "the per-pixel mean
     subtracted").
  'imagenet': the published ImageNet statistics below (fb.resnet.torch, torchvision), not estimated: what
     torchvision's pretrained weights expect too (`resnet_jax.convert`).
"""

from __future__ import annotations

from typing import Any, Optional

from absl import logging
import numpy as np

from resnet_jax.config import nested_tuple
from resnet_jax.data import host_pipeline
from resnet_jax.data.sources import ExampleSource
from resnet_jax.errors import UserError

# fb.resnet.torch (datasets/imagenet.lua) / torchvision, in [0, 255] pixel units (0.485 * 255, ...).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
MODES = ('per_channel', 'per_pixel_mean', 'imagenet')


def statistics(images_uint8: np.ndarray, mode: str) -> tuple[Any, Any]:
  """(mean, std) of training images for `mode` as nested tuples (hashable attributes of the model)."""
  if mode == 'imagenet':
    return IMAGENET_MEAN, IMAGENET_STD
  images = np.asarray(images_uint8, np.float64)
  if mode == 'per_channel':
    std = images.std(axis=(0, 1, 2))
    return nested_tuple(images.mean(axis=(0, 1, 2))), nested_tuple(np.where(std > 0, std, 1.0))
  if mode == 'per_pixel_mean':
    return nested_tuple(images.mean(axis=0).astype(np.float32)), (1.0,)
  raise UserError(f"unknown normalization {mode!r}; choose one of {', '.join(MODES)}")


def for_run(options, source: ExampleSource, seed: int, images: Optional[np.ndarray] = None) -> tuple[Any, Any]:
  """The run's (mean, std) for the input options `options` (`pipelines.InputOptions`): the config's mean/std,
  the mode's constants, or the mode applied to `images` (the whole split, when it is on hand) or to a sample of
  `stats_examples` examples of `source`, the training split."""
  for name, values in (('mean', options.mean), ('std', options.std)):
    if values is not None and len(values) not in (1, source.channels):
      raise UserError(f"config.input.{name}={values} has {len(values)} values, but the images of "
                      f"{source.dataset} have {source.channels} channel(s); give 1 value or one per channel")
  if options.mean is not None:
    return options.mean, options.std
  if images is not None or options.normalization == 'imagenet':
    return statistics(images, options.normalization)
  if options.normalization == 'per_pixel_mean' and source.image_shape is None:
    raise UserError(f"config.augment.normalization='per_pixel_mean' needs images of one size, but "
                    f"{source.dataset} images vary; use 'per_channel'")
  count = min(len(source), max(1, options.stats_examples))
  indices = np.sort(np.random.default_rng([seed, 0x57A7]).permutation(len(source))[:count])
  crop = 'none' if source.image_shape is not None else 'center'
  transform = host_pipeline.EvalTransform(crop=crop, resize=options.eval_resize, crop_size=options.eval_crop,
                                          channels=source.channels, image_shape=source.image_shape,
                                          interpolation=options.interpolation)
  sample = []
  for start in range(0, count, 256):
    decoded, _ = host_pipeline.transform_rows(source, indices[start:start + 256], lambda raw, row: transform(raw),
                                              'skip')
    sample += [image for image in decoded if image is not None]
  if not sample:
    raise UserError(f"{source.dataset} {source.split!r}: no readable image to compute normalisation statistics")
  logging.info('normalisation statistics of %s estimated from %d examples', source.dataset, len(sample))
  return statistics(np.stack(sample), options.normalization)
