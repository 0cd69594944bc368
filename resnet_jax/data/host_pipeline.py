"""Host-side batch construction for the streaming (Grain) pipeline. NumPy and PIL only: no JAX, no TensorFlow.

The objects here are what Grain worker processes run (they are pickled with cloudpickle and rebuilt in each
worker), so this module must stay cheap to import.

Data order (training)
  The training stream is a sequence of global positions q = 0, 1, 2, ...; position q is example
  `perm_e[q mod N]` of epoch e = q // N, where perm_e is a permutation drawn from (seed, e). The global batch
  at step s is positions [s B, (s + 1) B); epochs follow each other without a gap (a batch may straddle two
  epochs; nothing is dropped or repeated within an epoch) -- the same contract as the device-resident path.
  Process p builds only rows [lo, hi) of each global batch: the rows of its devices in the mesh
  (`parallel.local_batch_slice`), so over an epoch the processes read disjoint sets of examples that together
  cover the split, and the global batch at step s is the same on any number of processes and devices.
  Augmentation randomness for position q comes from (seed, q) alone. Batch s is therefore a pure function of
  (seed, s): the pipeline position is just the step, which is what makes resumption exact and cheap.

Corrupt images
  `corrupt_images='fail'` raises CorruptImageError (a UserError) naming the file or record. 'skip' logs a
  warning for each corrupt image (with a running count) and, in training, takes the next example of the same
  epoch's permutation in its place (deterministic); in evaluation the slot is masked out, so the reported
  `num_examples` is smaller than the split -- never silently.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional, Sequence

from absl import logging
import numpy as np

from resnet_jax.data import host_augment
from resnet_jax.errors import UserError

DATA_ORDER_STREAM = 0x5EED
AUGMENT_STREAM = 0xA06
TRAIN_CROPS = ('inception', 'scale', 'pad_crop', 'none')
EVAL_CROPS = ('center', 'ten', 'none')
CORRUPT_POLICIES = ('fail', 'skip')
MAX_CONSECUTIVE_CORRUPT = 64

_skipped = {'count': 0}
_skipped_lock = threading.Lock()


def _log_skip(what: str, error: Exception) -> None:
  with _skipped_lock:
    _skipped['count'] += 1
    count = _skipped['count']
  if count <= 20 or count % 1000 == 0:
    logging.warning('skipping corrupt image %s (%s); %d corrupt image(s) skipped so far in this process',
                    what, error, count)


class EpochOrder:
  """Maps global stream positions to example indices: perm_{q // n}[q % n]. Thread-safe, picklable."""

  def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
    self.num_examples = int(num_examples)
    self.seed = int(seed)
    self.shuffle = shuffle
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {'num_examples': self.num_examples, 'seed': self.seed, 'shuffle': self.shuffle}

  def __setstate__(self, state):
    self.__init__(state['num_examples'], state['seed'], state['shuffle'])

  def permutation(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_examples)
    with self._lock:
      perm = self._cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng([self.seed, DATA_ORDER_STREAM, int(epoch)]).permutation(self.num_examples)
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        self._cache[epoch] = perm
      return perm

  def index(self, position: int) -> int:
    return int(self.permutation(position // self.num_examples)[position % self.num_examples])

  def indices(self, positions: np.ndarray) -> np.ndarray:
    return np.asarray([self.index(int(q)) for q in positions], np.int64)


def example_rng(seed: int, position: int, attempt: int = 0) -> np.random.Generator:
  return np.random.default_rng([int(seed), AUGMENT_STREAM, int(position), int(attempt)])


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Per-example host preprocessing for training; output uint8 `output_shape`.

  crop: 'inception' (random-sized crop), 'scale' (He et al. 2015 scale augmentation), 'pad_crop' (small
    fixed-size images: pad `crop_padding` with `pad_value`, random crop of the original size), 'none'.
  """
  crop: str = 'inception'
  image_size: int = 224
  channels: int = 3
  image_shape: Optional[tuple[int, int, int]] = None   # required for pad_crop / none
  scale_range: tuple[int, int] = (256, 480)
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  color_jitter: float = 0.0
  pca_lighting: float = 0.0
  interpolation: str = 'bilinear'
  crop_padding: int = 4
  pad_value: tuple[int, ...] = (0,)

  @property
  def output_shape(self) -> tuple[int, int, int]:
    if self.crop in ('pad_crop', 'none'):
      return tuple(self.image_shape)
    return (self.image_size, self.image_size, self.channels)

  def __call__(self, raw: Any, rng: np.random.Generator) -> np.ndarray:
    if self.crop in ('inception', 'scale'):
      image = host_augment.random_crop_resize(
          raw, rng, self.image_size, self.crop, channels=self.channels, scale_range=self.scale_range,
          area_range=self.area_range, aspect_range=self.aspect_range, interpolation=self.interpolation)
    else:
      image = _fixed(raw, self.channels, self.image_shape)
      if self.crop == 'pad_crop':
        image = host_augment.pad_crop(image, rng, self.crop_padding, self.pad_value)
    if self.flip:
      image = host_augment.maybe_flip(image, rng)
    if self.color_jitter > 0 or self.pca_lighting > 0:
      work = image.astype(np.float32)
      if self.color_jitter > 0:
        strength = self.color_jitter  # brightness, contrast and saturation alike (fb.resnet.torch)
        work = host_augment.color_jitter(work, rng, strength, strength, strength)
      if self.pca_lighting > 0:
        work = host_augment.pca_lighting(work, rng, self.pca_lighting)
      image = host_augment.to_uint8(work)
    return np.ascontiguousarray(image)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Per-example host preprocessing for evaluation.

  crop: 'center' (shorter side -> resize, central crop x crop), 'ten' (10 views: [10, crop, crop, C]),
    'none' (fixed-size images as they are).
  """
  crop: str = 'center'
  resize: int = 256
  crop_size: int = 224
  channels: int = 3
  image_shape: Optional[tuple[int, int, int]] = None
  interpolation: str = 'bilinear'

  @property
  def output_shape(self) -> tuple[int, ...]:
    if self.crop == 'none':
      return tuple(self.image_shape)
    view = (self.crop_size, self.crop_size, self.channels)
    return (10,) + view if self.crop == 'ten' else view

  def __call__(self, raw: Any) -> np.ndarray:
    if self.crop == 'center':
      return host_augment.center_crop(raw, self.resize, self.crop_size, channels=self.channels,
                                      interpolation=self.interpolation)
    if self.crop == 'ten':
      image = host_augment.resize_shorter(raw, self.resize, channels=self.channels, interpolation=self.interpolation)
      return host_augment.ten_crop_views(image, self.crop_size)
    return _fixed(raw, self.channels, self.image_shape)


def _fixed(raw: Any, channels: int, shape: Optional[Sequence[int]]) -> np.ndarray:
  if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 3:
    image = raw
  else:
    image = host_augment.decode(raw, channels)
  if shape is not None and tuple(image.shape) != tuple(shape):
    raise host_augment.CorruptImageError(f'has shape {image.shape}, but this split\'s images are {tuple(shape)}')
  return image


def read_raw_robust(source, indices: Sequence[int]) -> tuple[list[Any], np.ndarray]:
  """source.read_raw, falling back to one read per example so one bad record cannot hide the others.

  Images that cannot be read come back as CorruptImageError instances.
  """
  try:
    return source.read_raw(indices)
  except UserError as e:
    if not isinstance(e, host_augment.CorruptImageError):
      raise
  except Exception:  # pylint: disable=broad-except
    pass
  images, labels = [], []
  for i in indices:
    try:
      raw, label = source.read_raw([i])
      images.append(raw[0])
      labels.append(int(label[0]))
    except UserError as e:
      if not isinstance(e, host_augment.CorruptImageError):
        raise
      images.append(e)
      labels.append(0)
    except Exception as e:  # pylint: disable=broad-except
      images.append(host_augment.CorruptImageError(f'cannot be read ({type(e).__name__}: {e})'))
      labels.append(0)
  return images, np.asarray(labels, np.int32)


def _check_labels(source, indices, labels: np.ndarray, num_classes: int) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    row = bad[0]
    raise UserError(f"{source.describe(indices[row])} has label {int(labels[row])}, outside [0, {num_classes}); "
                    "this split may have no labels (e.g. imagenet2012's test split: evaluate on 'validation'), "
                    "or the dataset's class count is wrong")


def _corrupt(source, index, error) -> host_augment.CorruptImageError:
  return host_augment.CorruptImageError(
      f"corrupt image {source.describe(index)}: {error}; delete or replace the file (or re-prepare the "
      "dataset), or set config.input.corrupt_images='skip' to skip corrupt images (each skip is logged)")


class TrainBatchMaker:
  """step -> this process's rows of the global training batch {'image': uint8 [b, ...], 'label': int32 [b]}."""

  def __init__(self, source, global_batch: int, rows: tuple[int, int], seed: int, transform: TrainTransform,
               corrupt_images: str = 'fail', shuffle: bool = True):
    if corrupt_images not in CORRUPT_POLICIES:
      raise UserError(f"unknown config.input.corrupt_images {corrupt_images!r}; choose fail or skip")
    self.source = source
    self.global_batch = int(global_batch)
    self.rows = (int(rows[0]), int(rows[1]))
    self.seed = int(seed)
    self.transform = transform
    self.corrupt_images = corrupt_images
    self.order = EpochOrder(len(source), seed, shuffle)

  def positions(self, step: int) -> np.ndarray:
    return int(step) * self.global_batch + np.arange(self.rows[0], self.rows[1], dtype=np.int64)

  def indices(self, step: int) -> np.ndarray:
    """Example indices this process reads for `step` (before any corrupt-image replacement)."""
    return self.order.indices(self.positions(step))

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    positions = self.positions(step)
    indices = self.order.indices(positions)
    raws, labels = read_raw_robust(self.source, indices)
    labels = np.array(labels, np.int32)
    out = np.empty((len(positions),) + tuple(self.transform.output_shape), np.uint8)
    for row, (position, index, raw) in enumerate(zip(positions, indices, raws)):
      attempt = 0
      while True:
        try:
          if isinstance(raw, Exception):
            raise raw
          out[row] = self.transform(raw, example_rng(self.seed, position, attempt))
          break
        except host_augment.CorruptImageError as e:
          if self.corrupt_images == 'fail':
            raise _corrupt(self.source, index, e) from None
          _log_skip(self.source.describe(index), e)
          attempt += 1
          if attempt > MAX_CONSECUTIVE_CORRUPT:
            raise UserError(f"{attempt} consecutive corrupt images around {self.source.describe(index)}; the "
                            "dataset looks broken: prepare it again") from None
          # The next example of the same epoch's order takes the slot (deterministic).
          epoch_size = self.order.num_examples
          index = int(self.order.permutation(position // epoch_size)[(position % epoch_size + attempt) % epoch_size])
          raw_list, label = read_raw_robust(self.source, [index])
          raw, labels[row] = raw_list[0], label[0]
      indices[row] = index
    _check_labels(self.source, indices, labels, self.source.num_classes)
    return {'image': out, 'label': labels}


class EvalBatchMaker:
  """batch number -> this process's rows of a padded, masked global evaluation batch.

  Global batch b covers examples [b B, (b + 1) B) of the split (the last one padded); the process builds rows
  [lo, hi) of it; `mask` is False for padding (and for corrupt images skipped by policy).
  """

  def __init__(self, source, global_batch: int, rows: tuple[int, int], num_examples: int,
               transform: EvalTransform, corrupt_images: str = 'fail'):
    if corrupt_images not in CORRUPT_POLICIES:
      raise UserError(f"unknown config.input.corrupt_images {corrupt_images!r}; choose fail or skip")
    self.source = source
    self.global_batch = int(global_batch)
    self.rows = (int(rows[0]), int(rows[1]))
    self.num_examples = int(num_examples)
    self.transform = transform
    self.corrupt_images = corrupt_images

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    start = int(batch) * self.global_batch
    lo, hi = start + self.rows[0], min(start + self.rows[1], self.num_examples)
    wanted = self.rows[1] - self.rows[0]
    indices = np.arange(lo, hi) if hi > lo else np.zeros((0,), np.int64)
    image = np.zeros((wanted,) + tuple(self.transform.output_shape), np.uint8)
    label = np.zeros((wanted,), np.int32)
    mask = np.zeros((wanted,), bool)
    if len(indices):
      raws, labels = read_raw_robust(self.source, indices)
      for row, (index, raw) in enumerate(zip(indices, raws)):
        try:
          if isinstance(raw, Exception):
            raise raw
          image[row] = self.transform(raw)
          mask[row] = True
        except host_augment.CorruptImageError as e:
          if self.corrupt_images == 'fail':
            raise _corrupt(self.source, index, e) from None
          _log_skip(self.source.describe(index), e)
      label[:len(indices)] = np.where(mask[:len(indices)], labels, 0)
      _check_labels(self.source, indices[mask[:len(indices)]], labels[mask[:len(indices)]],
                    self.source.num_classes)
    return {'image': image, 'label': label, 'mask': mask}
