"""Input normalisation: the one (mean, std) value of a run, in [0, 255] pixel units.

The data layer decides it once per run (`pipelines.training_statistics`: the config's `input.mean/std`, or the
mode `config.augment.normalization` applied to the training split); `classifier.Classifier` carries it and
applies (x - mean) / std inside the jitted step; the checkpoint saves it with the model, so a loaded run
classifies raw pixels with nothing else to know. Modes:
  'per_channel': mean and std per channel over all pixels of the training split (fb.resnet.torch; for CIFAR-10
     this gives its {125.3, 123.0, 113.9} / {63.0, 62.1, 66.7}).
  'per_pixel_mean': the mean image (float32 values), std 1 (He et al. 2015 Sec. 4.2: "the per-pixel mean
     subtracted").
  'imagenet': the published ImageNet statistics below (fb.resnet.torch, torchvision), not estimated: what
     torchvision's pretrained weights expect too (`resnet_jax.convert`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resnet_jax.config import nested_tuple
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
