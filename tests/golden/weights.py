"""Deterministic NumPy weights and inputs for torchvision ResNets: the one generator that the golden-file script
(`make_torchvision_golden.py`, with torch) and the test suite (`tests/test_convert.py`, without torch) share.

Each tensor is a function of its torchvision name, its shape and `BASE_SEED` only (its own generator, seeded with
crc32(name) ^ BASE_SEED), so the test rebuilds the exact state dict from a manifest of names and shapes.

Scales: BN weight ~ 1 + 0.1 N, bias ~ 0.1 N, running_mean ~ 0.1 N, running_var ~ U(0.5, 1.5); fc ~ N(0, 1/C);
convolutions N(0, 1/fan_in) with fan_in = I/groups * kh * kw (LeCun normal: He's 2/fan_in times 1/2). Not He's
own scale: in eval mode BatchNorm divides by fixed running statistics, not by the activations' spread, so with
He's scale every residual branch is as large as its input and the stream grows about 1.6x per unit (ResNet-50's
features reach ~6000 and its logits ~1e4). With 1/fan_in each conv-BN-ReLU halves the second moment, a branch
adds a fraction of its input, and the features stay O(1) through all four stages: logits with a spread of a few
units (make_torchvision_golden.py prints and checks it), to which every tensor contributes.

Inputs: random noise is the same image to a network that pools globally (every noise image has the same
statistics), so each image is a blocky random pattern (32-pixel cells) plus fine noise, with its own colour
offset and contrast.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

BASE_SEED = 0x5EED_2015
INPUT_SEED = 7


def tensor_value(name: str, shape, base_seed: int = BASE_SEED) -> np.ndarray:
  """The value of torchvision tensor `name` of `shape` (float32; num_batches_tracked int64)."""
  shape = tuple(int(d) for d in shape)
  rng = np.random.default_rng(zlib.crc32(name.encode()) ^ base_seed)
  leaf = name.rsplit('.', 1)[-1]
  if leaf == 'num_batches_tracked':
    return np.zeros(shape, np.int64)
  if leaf == 'running_var':
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if len(shape) == 4:  # conv (O, I/groups, kh, kw)
    return (rng.standard_normal(shape) * math.sqrt(1.0 / math.prod(shape[1:]))).astype(np.float32)
  if len(shape) == 2:  # fc (classes, features)
    return (rng.standard_normal(shape) * math.sqrt(1.0 / shape[1])).astype(np.float32)
  if leaf == 'weight':  # BN scale
    return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
  return (0.1 * rng.standard_normal(shape)).astype(np.float32)  # BN bias, running_mean, fc bias


def state_dict(tensors, base_seed: int = BASE_SEED) -> dict[str, np.ndarray]:
  """name -> value for a manifest [(name, shape), ...] (the order of torchvision's `state_dict()`)."""
  return {name: tensor_value(name, shape, base_seed) for name, shape in tensors}


def images(batch: int, size: int, seed: int = INPUT_SEED) -> np.ndarray:
  """A fixed input batch, NCHW float32 on the scale of normalised images (see the module docstring)."""
  rng = np.random.default_rng([seed, size])
  cells = -(-size // 32)
  coarse = rng.standard_normal((batch, 3, cells, cells))
  pattern = np.repeat(np.repeat(coarse, 32, axis=2), 32, axis=3)[:, :, :size, :size]
  pattern = pattern + 0.5 * rng.standard_normal(pattern.shape)
  offset = rng.standard_normal((batch, 3, 1, 1))
  contrast = rng.uniform(0.3, 2.0, (batch, 1, 1, 1))
  return (offset + contrast * pattern).astype(np.float32)
