"""Synthetic images for the benchmark (`python -m resnet_jax.benchmark --synthetic`, `--input_only`): random
photographs whose JPEG size and decoding cost are those of natural ones, written as a `folder:` dataset.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
  """Encodes a uint8 H x W x C array as JPEG."""
  buffer = io.BytesIO()
  image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  image.save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A random RGB image (smooth colour fields plus pixel noise) whose JPEG size is close to that of a natural
  photograph of the same size (ImageNet training JPEGs average about 110 KB), so decoding it costs what a real
  photograph does; pure noise would compress several times worse. `throughput` reports the sizes it writes."""
  coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
  image += rng.integers(-30, 31, image.shape, dtype=np.int16)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg_folder(root: str, num_images: int, num_classes: int = 10, seed: int = 0,
                      sizes: Sequence[tuple[int, int]] = ((375, 500), (500, 375), (333, 500), (480, 640),
                                                          (500, 500), (281, 500)),
                      quality: int = 90) -> int:
  """ImageNet-like synthetic photographs (sizes of typical ImageNet JPEGs) in ROOT/<class>/ ; returns bytes."""
  rng = np.random.default_rng(seed)
  total = 0
  for i in range(num_images):
    folder = os.path.join(root, f'class{i % num_classes:03d}')
    os.makedirs(folder, exist_ok=True)
    height, width = sizes[i % len(sizes)]
    data = jpeg_bytes(synthetic_photo(rng, height, width), quality)
    with open(os.path.join(folder, f'{i:06d}.jpg'), 'wb') as f:
      f.write(data)
    total += len(data)
  return total
