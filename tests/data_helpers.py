"""Small synthetic datasets and array helpers for the tests (no download, no TensorFlow).

  write_image_folder(root, ...)   a `folder:` dataset of JPEG/PNG files
  build_jpeg_tfds(data_dir, ...)  a real TFDS ArrayRecord dataset with a variable-size JPEG `Image` feature,
                                  like imagenet2012, built without TensorFlow (the generator yields encoded
                                  bytes, which TFDS stores as they are)
  indexed_images(n, shape)        uint8 images whose first pixels spell their own index (to trace examples)
"""

from __future__ import annotations

import io
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from resnet_jax.data import synthetic

JPEG_TFDS_NAME = 'resnet_jax_jpeg_toy'


def indexed_images(n: int, shape: Sequence[int] = (8, 8, 3), seed: int = 0) -> np.ndarray:
  """Random uint8 images; pixel [0, 0, :2] of image i holds (i % 256, i // 256)."""
  images = np.random.default_rng(seed).integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 0, 1 % shape[-1]] = np.arange(n) // 256
  return images


def image_ids(images: np.ndarray) -> np.ndarray:
  """Inverse of indexed_images for un-augmented images."""
  images = np.asarray(images)
  return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1 % images.shape[-1]].astype(np.int64)


def write_image_folder(root: str, classes: Sequence[str] = ('cat', 'dog', 'eel'), per_class: int = 4,
                       splits: Optional[Sequence[str]] = ('train', 'test'), sizes: Sequence[tuple[int, int]] = ((24, 32),),
                       fmt: str = 'PNG', channels: int = 3, seed: int = 0) -> list[str]:
  """Writes ROOT/<split>/<class>/<i>.<fmt> (or ROOT/<class>/... with splits=None); returns the file paths.

  Image sizes cycle through `sizes` ((height, width) pairs); PNG keeps pixels exact.
  """
  rng = np.random.default_rng(seed)
  paths = []
  for split in (splits or [None]):
    for cls in classes:
      folder = os.path.join(root, split, cls) if split else os.path.join(root, cls)
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        height, width = sizes[(len(paths)) % len(sizes)]
        array = synthetic.synthetic_photo(rng, height, width)
        if channels == 1:
          array = array[..., :1]
        ext = 'png' if fmt.upper() == 'PNG' else 'jpg'
        path = os.path.join(folder, f'{i:04d}.{ext}')
        Image.fromarray(array[..., 0] if channels == 1 else array).save(path, format=fmt.upper())
        paths.append(path)
  return paths


def _builder_class():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class ResnetJaxJpegToy(tfds.core.GeneratorBasedBuilder):
    """Variable-size JPEGs with 3 classes; splits 'train' and 'validation' (sizes set by the caller)."""
    VERSION = tfds.core.Version('1.0.0')
    SPLIT_SIZES = {'train': 10, 'validation': 7}

    def __init__(self, **kwargs):
      kwargs.setdefault('file_format', 'array_record')
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
          'label': tfds.features.ClassLabel(num_classes=3)}), supervised_keys=('image', 'label'))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(n, seed) for seed, (split, n) in enumerate(self.SPLIT_SIZES.items())}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        height, width = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        buffer = io.BytesIO()
        Image.fromarray(synthetic.synthetic_photo(rng, height, width)).save(buffer, 'JPEG', quality=90)
        yield i, {'image': buffer.getvalue(), 'label': i % 3}

  return ResnetJaxJpegToy


_BUILDER = None


def build_jpeg_tfds(data_dir: str, train: int = 10, validation: int = 7) -> str:
  """Builds the toy JPEG dataset into `data_dir`; returns its TFDS name."""
  global _BUILDER
  if _BUILDER is None:
    _BUILDER = _builder_class()
  _BUILDER.SPLIT_SIZES = {'train': train, 'validation': validation}
  _BUILDER(data_dir=data_dir).download_and_prepare()
  return JPEG_TFDS_NAME


def local_rows(array) -> np.ndarray:
  """This process's rows of a global batch array, in global row order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])
