"""Data sources: random access to the (image, label) examples of one split, without TensorFlow.

`open_split(name, split, data_dir)` understands
  - a TFDS name (`cifar10`, `cifar100`, `imagenet2012`, `svhn_cropped`, the built-in `digits`, ...), read with
    `tfds.data_source` from ArrayRecord files;
  - `npz:PATH`: one .npz file with `images` (uint8, N x H x W x C) and `labels` (integers in [0, classes));
    its split names are `train` and `test` for files named `*_train.npz`/`*_test.npz`... see `_open_npz`.

Every split is an `ExampleSource`: `len(source)`, `source.read(indices) -> {'image': uint8 [n,H,W,C],
'label': int32 [n]}`, plus `num_classes` and `image_shape` (None when image sizes vary).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from resnet_jax.errors import UserError


@dataclasses.dataclass
class ExampleSource:
  """One split of a dataset with random access to its examples."""
  dataset: str
  split: str
  num_classes: int
  image_shape: Optional[tuple[int, int, int]]  # None when images vary in size (e.g. ImageNet JPEGs)
  num_examples: int
  read_fn: Callable[[Sequence[int]], dict[str, np.ndarray]]

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Returns {'image': uint8 [n, H, W, C] (a list of arrays if sizes vary), 'label': int32 [n]}."""
    return self.read_fn(indices)

  def read_all(self) -> dict[str, np.ndarray]:
    return self.read(np.arange(self.num_examples))


def prepare_command(name: str, data_dir: Optional[str]) -> str:
  flag = f' --data_dir {data_dir}' if data_dir else ''
  return f'python -m resnet_jax.data.prepare {name}{flag}'


def open_split(name: str, split: str, data_dir: Optional[str] = None) -> ExampleSource:
  """Opens `split` of dataset `name` (a TFDS name or `npz:PATH`); raises UserError saying what to do."""
  if name.startswith('npz:'):
    return _open_npz(name[len('npz:'):], split)
  if ':' in name:
    scheme = name.split(':', 1)[0]
    raise UserError(f"dataset {name!r}: unknown scheme {scheme!r}; use a TFDS name, npz:PATH or folder:PATH")
  return _open_tfds(name, split, data_dir)


def _stack_examples(examples: list[dict[str, Any]], fixed_shape: bool) -> dict[str, np.ndarray]:
  images = [np.asarray(e['image']) for e in examples]
  labels = np.asarray([int(e['label']) for e in examples], dtype=np.int32)
  return {'image': np.stack(images) if fixed_shape else images, 'label': labels}


def _open_tfds(name: str, split: str, data_dir: Optional[str]) -> ExampleSource:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name == 'digits':
    from resnet_jax.data import digits  # pylint: disable=g-import-not-at-top,unused-import  (registers it)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {name!r}: not a TFDS dataset name; use e.g. cifar10, cifar100, "
                    "imagenet2012, digits, or npz:PATH / folder:PATH for local data") from None
  known_splits = dict(builder.info.splits)
  base_split = split.split('[', 1)[0]
  if known_splits and base_split not in known_splits:
    raise UserError(f"dataset {name!r} has no split {split!r}; its splits are {', '.join(sorted(known_splits))}")
  if name == 'digits' and not builder.is_prepared():
    builder.download_and_prepare()  # embedded data: builds in about a second, no network
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    if not builder.is_prepared():
      raise UserError(f"dataset {name!r} is not prepared in {builder.data_dir_root}; run: "
                      f"{prepare_command(name, data_dir)}") from None
    raise UserError(f"dataset {name!r} in {builder.data_dir} cannot be read ({e}); prepare it again in "
                    f"ArrayRecord format: {prepare_command(name, data_dir)}") from None
  features = builder.info.features
  num_classes = features['label'].num_classes
  image_feature = features['image']
  shape = tuple(image_feature.shape)
  fixed = all(isinstance(d, int) for d in shape)

  def read(indices):
    indices = [int(i) for i in indices]
    try:  # batched ArrayRecord reads (parallel)
      examples = source.__getitems__(indices)
    except TypeError:  # tfds.testing.mock_data's source lacks a working __getitems__
      examples = [source[i] for i in indices]
    return _stack_examples(list(examples), fixed)

  return ExampleSource(dataset=name, split=split, num_classes=num_classes,
                       image_shape=shape if fixed else None, num_examples=len(source), read_fn=read)


def _open_npz(path: str, split: str) -> ExampleSource:
  """`npz:PATH` is one split; `npz:DIR` or `npz:PREFIX` with files `PREFIX_<split>.npz` holds several.

  Resolution: if PATH is a file it serves every split name (train and eval on the same file is allowed but
  should be deliberate); otherwise `<PATH>_<split>.npz`, then `<PATH>/<split>.npz`.
  """
  candidates = [path, f'{path}_{split}.npz', os.path.join(path, f'{split}.npz')]
  file = next((c for c in candidates if os.path.isfile(c)), None)
  if file is None:
    raise UserError(f"npz dataset: none of {', '.join(candidates)} exists; pass npz:FILE.npz with arrays "
                    "'images' (uint8 N x H x W x C) and 'labels'")
  try:
    arrays = np.load(file)
  except (OSError, ValueError) as e:
    raise UserError(f"{file}: not a readable .npz file ({e})") from None
  missing = [k for k in ('images', 'labels') if k not in arrays.files]
  if missing:
    raise UserError(f"{file}: missing array {missing[0]!r}; the file needs 'images' (uint8 N x H x W x C) "
                    f"and 'labels'; it has {', '.join(arrays.files) or 'nothing'}")
  images, labels = arrays['images'], arrays['labels']
  if images.dtype != np.uint8 or images.ndim != 4:
    raise UserError(f"{file}: 'images' must be uint8 with shape N x H x W x C, got {images.dtype} "
                    f"{images.shape}; convert with images.astype(np.uint8) and add a channel axis if grey")
  if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"{file}: 'labels' must be integers of shape ({len(images)},), got {labels.dtype} "
                    f"{labels.shape}")
  if len(labels) == 0:
    raise UserError(f"{file}: holds no examples")
  if labels.min() < 0:
    raise UserError(f"{file}: labels must be in [0, num_classes), found {labels.min()}")
  num_classes = int(arrays['num_classes']) if 'num_classes' in arrays else int(labels.max()) + 1
  if labels.max() >= num_classes:
    raise UserError(f"{file}: label {labels.max()} out of range for num_classes={num_classes}")
  labels = labels.astype(np.int32)

  def read(indices):
    indices = np.asarray(indices, dtype=np.int64)
    return {'image': images[indices], 'label': labels[indices]}

  return ExampleSource(dataset=f'npz:{path}', split=split, num_classes=num_classes,
                       image_shape=tuple(images.shape[1:]), num_examples=len(images), read_fn=read)
