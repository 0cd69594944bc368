"""Host-side batch construction for the streaming (Grain) pipeline. NumPy and PIL only: no JAX, no TensorFlow.

The objects here are what Grain worker processes run (they are pickled with cloudpickle and rebuilt in each
worker), so this module must stay cheap to import.

Data order (training)
  The global batch at step s holds stream positions [s B, (s + 1) B) in the one data order of
  `resnet_jax.data.order` (shared with the device-resident path). Process p builds only rows [lo, hi) of each
  global batch: the rows of its devices in the mesh (`parallel.local_batch_slice`), so over an epoch the
  processes read disjoint sets of examples that together cover the split, and the global batch at step s is the
  same on any number of processes and devices. Augmentation randomness for position q comes from (seed, q)
  alone. Batch s is therefore a pure function of (seed, s): the pipeline position is just the step, which is
  what makes resumption exact and cheap.

Corrupt images
  `corrupt_images='fail'` raises CorruptImageError (a UserError) naming the file or record. 'skip' logs a
  warning for each corrupt image (with a running count) and, in training, takes the next example of the same
  epoch's permutation in its place (deterministic); in evaluation the slot is masked out, so the reported
  `num_examples` is smaller than the split -- never silently.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np

from resnet_jax.data import auto_augment
from resnet_jax.data import host_augment
from resnet_jax.data import order
from resnet_jax.errors import UserError

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


def example_rng(seed: int, position: int, attempt: int = 0) -> np.random.Generator:
  return np.random.default_rng([int(seed), AUGMENT_STREAM, int(position), int(attempt)])


def _crop(raw: Any, rng: np.random.Generator, transform: 'TrainTransform') -> np.ndarray:
  """Decode and, for 'inception' / 'scale', the random crop resized to image_size (one PIL call)."""
  if transform.crop in ('inception', 'scale'):
    return host_augment.random_crop_resize(
        raw, rng, transform.image_size, transform.crop, channels=transform.channels,
        scale_range=transform.scale_range, area_range=transform.area_range, aspect_range=transform.aspect_range,
        interpolation=transform.interpolation)
  return fixed_image(raw, transform.channels, transform.image_shape)


def _auto_augment(image: np.ndarray, rng: np.random.Generator, transform: 'TrainTransform') -> np.ndarray:
  """RandAugment / TrivialAugmentWide (`auto_augment`) on the cropped uint8 image, before any colour operation (timm
  and torchvision run them on the crop, before ToTensor)."""
  policy = auto_augment.parse_policy(transform.auto_augment)
  if policy is None:
    return image
  return auto_augment.augment(policy, host_augment.to_uint8(image) if image.dtype != np.uint8 else image, rng,
                              fill=transform.auto_augment_fill, interpolation=transform.interpolation)


def _color_jitter(image: np.ndarray, rng: np.random.Generator, transform: 'TrainTransform') -> np.ndarray:
  strength = transform.color_jitter  # brightness, contrast and saturation alike (fb.resnet.torch)
  return host_augment.color_jitter(image, rng, strength, strength, strength) if strength > 0 else image


def _pca_lighting(image: np.ndarray, rng: np.random.Generator, transform: 'TrainTransform') -> np.ndarray:
  return host_augment.pca_lighting(image, rng, transform.pca_lighting) if transform.pca_lighting > 0 else image


#: The per-example host operations of training, in the order they run in the Grain workers (NumPy/PIL, before
#: batching): name -> function(image (the raw example for the first), rng, the TrainTransform holding the
#: options) -> image (uint8, or float32 in [0, 255] after a colour operation: rounded to uint8 at the end). Each
#: is the one implementation of its operation; the per-batch device operations (pad-and-crop, flip; then the
#: model's normalisation) are `augment.DEVICE_OPERATIONS`, run inside the jitted step for both pipelines. Adding
#: an operation: a function and its entry here, its option in `pipelines.InputOptions` (docs/extending.md).
HOST_OPERATIONS = {'crop': _crop, 'auto_augment': _auto_augment, 'color_jitter': _color_jitter,
                   'pca_lighting': _pca_lighting}


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Per-example host preprocessing for training (`HOST_OPERATIONS`); output uint8 `output_shape`.

  crop: 'inception' (random-sized crop), 'scale' (He et al. 2015 scale augmentation), 'pad_crop' and 'none'
    (fixed-size images as they are: pad-and-crop, when asked for, runs on the device).
  auto_augment: a policy string of `auto_augment` ('' off); auto_augment_fill: the colour its geometric
    RandAugment operations fill with (`auto_augment.fill_colour` of the run's mean).
  """
  crop: str = 'inception'
  image_size: int = 224
  channels: int = 3
  image_shape: Optional[tuple[int, int, int]] = None   # required for pad_crop / none
  scale_range: tuple[int, int] = (256, 480)
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  color_jitter: float = 0.0
  pca_lighting: float = 0.0
  interpolation: str = 'bilinear'
  auto_augment: str = ''
  auto_augment_fill: tuple[int, ...] = (128, 128, 128)

  @property
  def output_shape(self) -> tuple[int, int, int]:
    if self.crop in ('pad_crop', 'none'):
      return tuple(self.image_shape)
    return (self.image_size, self.image_size, self.channels)

  def __call__(self, raw: Any, rng: np.random.Generator) -> np.ndarray:
    image = raw
    for operation in HOST_OPERATIONS.values():
      image = operation(image, rng, self)
    return np.ascontiguousarray(image if image.dtype == np.uint8 else host_augment.to_uint8(image))


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
    return fixed_image(raw, self.channels, self.image_shape)


def fixed_image(raw: Any, channels: int, shape: Optional[Sequence[int]]) -> np.ndarray:
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


def transform_rows(source, indices: Sequence[int], transform: Callable[[Any, int], np.ndarray],
                   corrupt_images: str) -> tuple[list[Optional[np.ndarray]], np.ndarray]:
  """(transform(raw, row) for each example, labels): the one place the corrupt-image policy is applied.

  A corrupt image raises CorruptImageError naming it and the way out (policy 'fail') or is logged and comes
  back as None (policy 'skip'); what fills its slot is the caller's choice.
  """
  raws, labels = read_raw_robust(source, indices)
  images = []
  for row, (index, raw) in enumerate(zip(indices, raws)):
    try:
      if isinstance(raw, Exception):
        raise raw
      images.append(transform(raw, row))
    except host_augment.CorruptImageError as e:
      if corrupt_images == 'fail':
        raise host_augment.CorruptImageError(
            f"corrupt image {source.describe(index)}: {e}; delete or replace the file (or re-prepare the dataset), "
            "or set config.input.corrupt_images='skip' to skip corrupt images (each skip is logged)") from None
      _log_skip(source.describe(index), e)
      images.append(None)
  return images, np.asarray(labels, np.int32)


def check_labels(source, indices, labels: np.ndarray) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= source.num_classes))
  if len(bad):
    row = bad[0]
    raise UserError(f"{source.describe(indices[row])} has label {int(labels[row])}, outside [0, "
                    f"{source.num_classes}); this split may have no labels (e.g. imagenet2012's test split: "
                    "evaluate on 'validation'), or the dataset's class count is wrong")


def check_corrupt_policy(corrupt_images: str) -> None:
  if corrupt_images not in CORRUPT_POLICIES:
    raise UserError(f"unknown config.input.corrupt_images {corrupt_images!r}; choose {', '.join(CORRUPT_POLICIES)}")


class TrainBatchMaker:
  """step -> this process's rows of the global training batch {'image': uint8 [b, ...], 'label': int32 [b]}."""

  def __init__(self, source, global_batch: int, rows: tuple[int, int], seed: int, transform: TrainTransform,
               corrupt_images: str = 'fail', repeats: int = 1):
    check_corrupt_policy(corrupt_images)
    self.repeats = int(repeats)  # config.repeated_augmentation (`order.repeated_positions`)
    self.source = source
    self.global_batch = int(global_batch)
    self.rows = (int(rows[0]), int(rows[1]))
    self.seed = int(seed)
    self.transform = transform
    self.corrupt_images = corrupt_images

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    positions = order.batch_positions(int(step), self.global_batch, self.rows).astype(np.int64)
    indices = order.example_indices(self.seed, len(self.source), positions, np, self.repeats,
                                    self.global_batch).astype(np.int64)
    augment = lambda attempt: lambda raw, row: self.transform(raw, example_rng(self.seed, positions[row], attempt))
    images, labels = transform_rows(self.source, indices, augment(0), self.corrupt_images)
    epoch_size = len(self.source)
    for row in [row for row, image in enumerate(images) if image is None]:
      # The next example of the same epoch's order takes the slot (deterministic).
      epoch, offset = divmod(int(positions[row]), epoch_size)
      for attempt in range(1, MAX_CONSECUTIVE_CORRUPT + 1):
        position = np.asarray([epoch * epoch_size + (offset + attempt) % epoch_size])
        index = order.example_indices(self.seed, epoch_size, position).astype(np.int64)
        augment_row = lambda raw, _, attempt=attempt: augment(attempt)(raw, row)
        (image,), label = transform_rows(self.source, index, augment_row, self.corrupt_images)
        if image is not None:
          images[row], labels[row], indices[row] = image, label[0], index[0]
          break
      else:
        raise UserError(f"{MAX_CONSECUTIVE_CORRUPT} consecutive corrupt images around "
                        f"{self.source.describe(indices[row])}; the dataset looks broken: prepare it again")
    check_labels(self.source, indices, labels)
    return {'image': np.stack(images), 'label': labels}


class EvalBatchMaker:
  """batch number -> this process's rows of a padded, masked global evaluation batch.

  Global batch b covers examples [b B, (b + 1) B) of the split (the last one padded); the process builds rows
  [lo, hi) of it; `mask` is False for padding (and for corrupt images skipped by policy).
  """

  def __init__(self, source, global_batch: int, rows: tuple[int, int], num_examples: int,
               transform: EvalTransform, corrupt_images: str = 'fail'):
    check_corrupt_policy(corrupt_images)
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
    indices = np.arange(lo, max(lo, hi), dtype=np.int64)
    image = np.zeros((wanted,) + tuple(self.transform.output_shape), np.uint8)
    label = np.zeros((wanted,), np.int32)
    mask = np.zeros((wanted,), bool)
    if len(indices):
      images, labels = transform_rows(self.source, indices, lambda raw, row: self.transform(raw),
                                      self.corrupt_images)
      for row, decoded in enumerate(images):
        if decoded is not None:
          image[row], label[row], mask[row] = decoded, labels[row], True
      check_labels(self.source, indices[mask[:len(indices)]], label[:len(indices)][mask[:len(indices)]])
    return {'image': image, 'label': label, 'mask': mask}
