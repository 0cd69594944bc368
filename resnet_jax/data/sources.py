"""Data sources: random access to the (image, label) examples of one split, without TensorFlow.

`open_split(name, split, data_dir)` understands
  - a TFDS name (`cifar10`, `cifar100`, `imagenet2012`, `svhn_cropped`, the built-in `digits`, ...), read with
    `tfds.data_source` from ArrayRecord files. `Image` features are decoded on the host with PIL (TFDS's own
    NumPy decoder, no TensorFlow). For datasets whose images vary in size (ImageNet), `read_raw` returns the
    encoded JPEG bytes (`tfds.decode.SkipDecoding`) so that Grain workers decode them, cropping while they
    decode. A dataset that is not prepared fails with one line naming `python -m resnet_jax.data.prepare`.
  - `npz:PATH`: one .npz file with `images` (uint8, N x H x W x C) and `labels` (integers in [0, classes));
    see `_open_npz` for how split names map to files.
  - `folder:ROOT`: JPEG/PNG files, one sub-folder per class; class index = position of the class folder name
    in the sorted list of class names. Two layouts:
      ROOT/<split>/<class>/*.jpg   split folders (e.g. ROOT/train and ROOT/test); the split name picks one.
                                   Classes are the union of the class folders of all splits, so train and test
                                   indices agree even if a split lacks a class.
      ROOT/<class>/*.jpg           one split, named `train`; carve an evaluation split with a slice, e.g.
                                   train_split='train[:90%]', eval_split='train[90%:]'.
    The layout is "split folders" when no folder directly under ROOT holds image files. Files may sit in
    nested folders below a class folder. Examples are ordered by a fixed pseudo-random permutation (seed 0) of
    the sorted file list, so slices (`[a:b]`, `[a%:b%]`, as in TFDS) are class-balanced in expectation and the
    same on every machine. Images are read as RGB, or as grey (1 channel) when every file of a folder of at
    most `FOLDER_PROBE_LIMIT` files is grey; the headers of such small folders are read to decide whether all
    images share one size (then `image_shape` is set and the split can live on the accelerators).

Every split is an `ExampleSource`: `len(source)`, `source.read(indices) -> {'image': uint8 [n,H,W,C] (a list
if sizes vary), 'label': int32 [n]}`, `source.read_raw(indices) -> (images, labels)` where each image is
encoded bytes or a decoded uint8 array (whatever is cheapest to hand to a decoding worker), plus
`num_classes`, `channels`, and `image_shape` (None when image sizes vary).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import zipfile
from typing import Any, Callable, Optional, Sequence

from absl import logging as absl_logging
import numpy as np
from PIL import Image

from resnet_jax import storage
from resnet_jax.data import host_augment
from resnet_jax.data import host_pipeline
from resnet_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
FOLDER_PROBE_LIMIT = 60_000   # folders up to this size have every header read (fixed size? grey?)


@dataclasses.dataclass
class ExampleSource:
  """One split of a dataset with random access to its examples."""
  dataset: str
  split: str
  num_classes: int
  image_shape: Optional[tuple[int, int, int]]  # None when images vary in size (e.g. ImageNet JPEGs)
  num_examples: int
  read_fn: Callable[[Sequence[int]], dict[str, np.ndarray]]
  # (images, labels): images as encoded bytes or uint8 arrays; default: the decoded images of read_fn.
  read_raw_fn: Optional[Callable[[Sequence[int]], tuple[list[Any], np.ndarray]]] = None
  channels: int = 3
  # Names one example in error messages (a file path, a record number).
  describe_fn: Optional[Callable[[int], str]] = None
  # Local datasets (npz:, folder:): every label of the split, and the class names, for `check_same_classes`.
  labels: Optional[np.ndarray] = None
  class_names: Optional[tuple[str, ...]] = None

  def __post_init__(self):
    if self.image_shape is not None:
      self.channels = int(self.image_shape[-1])

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Returns {'image': uint8 [n, H, W, C] (a list of arrays if sizes vary), 'label': int32 [n]}."""
    return self.read_fn(indices)

  def read_all(self) -> dict[str, np.ndarray]:
    return self.read(np.arange(self.num_examples))

  def read_raw(self, indices: Sequence[int]) -> tuple[list[Any], np.ndarray]:
    """(images, int32 labels) with each image as encoded bytes or a uint8 H x W x C array."""
    if self.read_raw_fn is not None:
      return self.read_raw_fn(indices)
    batch = self.read_fn(indices)
    return list(batch['image']), np.asarray(batch['label'], np.int32)

  def describe(self, index: int) -> str:
    if self.describe_fn is not None:
      return self.describe_fn(int(index))
    return f'{self.dataset} split {self.split!r} example {int(index)}'


def prepare_command(name: str, data_dir: Optional[str], manual: bool = False) -> str:
  flag = f' --data_dir {data_dir}' if data_dir else ''
  if manual:
    flag += ' --manual_dir DIR_WITH_THE_DOWNLOADED_FILES'
  return f'python -m resnet_jax.data.prepare {name}{flag}'


def open_split(name: str, split: str, data_dir: Optional[str] = None) -> ExampleSource:
  """Opens `split` of dataset `name` (a TFDS name, `npz:PATH` or `folder:ROOT`); raises UserError saying
  what to do."""
  if not isinstance(name, str) or not name:
    raise UserError(f"dataset name {name!r}: use a TFDS name (cifar10, imagenet2012, ...), npz:PATH or folder:PATH")
  if name.startswith('npz:'):
    return _open_npz(name[len('npz:'):], split)
  if name.startswith('folder:'):
    return _open_folder(name[len('folder:'):], split)
  if ':' in name:
    scheme = name.split(':', 1)[0]
    raise UserError(f"dataset {name!r}: unknown scheme {scheme!r}; use a TFDS name, npz:PATH or folder:PATH")
  # TFDS logs a warning per folder it probes ("Variant folder ... has no dataset_info.json") and a line per
  # build: above the one line this function's refusal prints, they read as the error. Errors still show.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    return _open_tfds(name, split, data_dir)
  finally:
    absl_logging.set_verbosity(verbosity)


def _stack_examples(examples: list[dict[str, Any]], fixed_shape: bool) -> dict[str, np.ndarray]:
  images = [np.asarray(e['image']) for e in examples]
  labels = np.asarray([int(e['label']) for e in examples], dtype=np.int32)
  return {'image': np.stack(images) if fixed_shape else images, 'label': labels}


class _TfdsReader:
  """Reads examples from a tfds data source (picklable: Grain workers unpickle it)."""

  def __init__(self, source, fixed: bool):
    self.source = source
    self.fixed = fixed

  def examples(self, indices):
    indices = [int(i) for i in indices]
    try:  # batched ArrayRecord reads (parallel)
      return list(self.source.__getitems__(indices))
    except TypeError:  # tfds.testing.mock_data's source lacks a working __getitems__
      return [self.source[i] for i in indices]

  def __call__(self, indices):
    return _stack_examples(self.examples(indices), self.fixed)


class _TfdsRawReader:
  """(images, labels) with images as JPEG/PNG bytes (SkipDecoding) or, failing that, decoded arrays."""

  def __init__(self, encoded_reader: Optional[_TfdsReader], decoded_reader: _TfdsReader):
    self.encoded = encoded_reader
    self.decoded = decoded_reader

  def __call__(self, indices):
    reader = self.encoded or self.decoded
    examples = reader.examples(indices)
    images = [e['image'] for e in examples]
    if self.encoded is not None:
      images = [bytes(i) if isinstance(i, (bytes, np.bytes_)) else np.asarray(i).item() for i in images]
    return images, np.asarray([int(e['label']) for e in examples], np.int32)


#: Where TFDS data kept in a bucket is copied, once per host (default: a folder in the system's temporary
#: directory). ArrayRecord's reader opens local (or mounted) files only; see docs/storage.md.
STAGING_DIR_VARIABLE = 'RESNET_JAX_STAGING_DIR'


def stage_tfds(name: str, data_dir: str) -> str:
  """The local copy of `data_dir/name` (a bucket), made on first use on this host; returns the local data_dir.
  A copy is complete or absent (storage.download), so several processes of a host may race here safely."""
  root = os.environ.get(STAGING_DIR_VARIABLE) or os.path.join(tempfile.gettempdir(), 'resnet_jax_staged')
  local_data_dir = os.path.join(root, data_dir.replace('://', '/', 1).rstrip('/'))
  target = os.path.join(local_data_dir, name)
  if not os.path.isdir(target):
    if not storage.is_dir(storage.resolve(data_dir) / name):
      raise UserError(f"dataset {name!r} is not prepared in {data_dir}: prepare it locally (python -m "
                      f"resnet_jax.data.prepare {name}) and copy the folder {name} to {data_dir}/{name}")
    os.makedirs(local_data_dir, exist_ok=True)
    try:
      storage.download(storage.resolve(data_dir) / name, target)
    except OSError:
      if not os.path.isdir(target):  # another process of this host finished the same copy first
        raise
  return local_data_dir


def _open_tfds(name: str, split: str, data_dir: Optional[str]) -> ExampleSource:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if data_dir and storage.is_remote(data_dir):
    data_dir = stage_tfds(name, data_dir)
  if name == 'digits':
    # Importing `digits` registers its TFDS builder; here, not at the top, because it imports tensorflow_datasets.
    from resnet_jax.data import digits  # pylint: disable=g-import-not-at-top,unused-import
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {name!r}: not a TFDS dataset name; use e.g. cifar10, cifar100, "
                    "imagenet2012, svhn_cropped, digits, or npz:PATH / folder:PATH for local data") from None
  known_splits = dict(builder.info.splits)
  base_split = split.split('[', 1)[0]
  if known_splits and base_split not in known_splits:
    raise UserError(f"dataset {name!r} has no split {split!r}; its splits are {', '.join(sorted(known_splits))}")
  if name == 'digits' and not builder.is_prepared():
    try:
      builder.download_and_prepare()  # embedded data: builds in about a second, no network
    except OSError as error:  # an unwritable data_dir, or home (TFDS's default ~/tensorflow_datasets)
      raise UserError(f"the built-in dataset 'digits' cannot be built in {builder.data_dir_root} "
                      f"({error.strerror or error}: {error.filename or builder.data_dir_root}); set "
                      "config.dataset.data_dir (or TFDS_DATA_DIR) to a writable directory") from None
    known_splits = dict(builder.info.splits)
  if known_splits:
    _check_tfds_split(name, split, known_splits)
  manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    if not builder.is_prepared():
      raise UserError(f"dataset {name!r} is not prepared in {builder.data_dir_root}; run: "
                      f"{prepare_command(name, data_dir, manual)}") from None
    raise UserError(f"dataset {name!r} in {builder.data_dir} cannot be read ({e}); prepare it again in "
                    f"ArrayRecord format: {prepare_command(name, data_dir, manual)}") from None
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise UserError(f"dataset {name!r} has features {', '.join(features.keys())}; an image classification "
                    "dataset needs 'image' and 'label'")
  num_classes = features['label'].num_classes
  image_feature = features['image']
  shape = tuple(image_feature.shape)
  fixed = all(isinstance(d, int) for d in shape)
  channels = shape[-1] if isinstance(shape[-1], int) else 3
  decoded = _TfdsReader(source, fixed)

  encoded = None
  # Variable-size JPEGs: hand the encoded bytes to the workers, which decode while cropping. A source that
  # yields decoded images even without decoding (tfds.testing.mock_data's: encoding needs TensorFlow) keeps the
  # decoded path: the probe below finds no bytes.
  if not fixed and isinstance(image_feature, tfds.features.Image) and len(source):
    try:
      skip = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                              decoders={'image': tfds.decode.SkipDecoding()})
      probe = skip[0]['image']
      if isinstance(probe, (bytes, np.bytes_)) or (isinstance(probe, np.ndarray) and probe.dtype.kind in 'SO'):
        encoded = _TfdsReader(skip, False)
    except Exception:  # pylint: disable=broad-except
      encoded = None

  def describe(index):
    return f'{name} split {split!r} record {index}'

  return ExampleSource(dataset=name, split=split, num_classes=num_classes,
                       image_shape=shape if fixed else None, num_examples=len(source), read_fn=decoded,
                       read_raw_fn=_TfdsRawReader(encoded, decoded), channels=channels, describe_fn=describe)


def _check_tfds_split(name: str, split: str, known_splits) -> None:
  """A malformed or empty split expression is the split's fault, not the dataset's: say so before reading."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  splits = ', '.join(sorted(known_splits))
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split)
    sizes = {key: int(getattr(value, 'num_examples', value)) for key, value in known_splits.items()}
    absolute = instructions.to_absolute(known_splits)
  except (ValueError, KeyError, AssertionError) as error:
    reason = str(error).strip().splitlines()[-1]
    raise UserError(f"dataset {name!r}: split {split!r} is not a valid split ({reason}); use NAME or "
                    f"NAME[START:STOP] with integers or percentages in [-100%, 100%], e.g. 'train[:90%]'; "
                    f"its splits are {splits}") from None
  for instruction in absolute:
    total = sizes[instruction.splitname]
    start, stop = instruction.from_ or 0, total if instruction.to is None else instruction.to
    start, stop = (start + total if start < 0 else start), (stop + total if stop < 0 else stop)
    if min(stop, total) <= max(start, 0):
      raise UserError(f"dataset {name!r}: split {split!r} selects no examples (split {instruction.splitname!r} has "
                      f"{total}); choose START < STOP")


def check_same_classes(train: ExampleSource, test: ExampleSource) -> None:
  """Refuses train and evaluation splits whose classes differ: the model would be scored on classes it never
  saw, or label indices would mean different classes. Checked before anything is compiled or written."""
  if train.num_classes != test.num_classes:
    raise UserError(f"{train.dataset}: the training split {train.split!r} has {train.num_classes} classes but the "
                    f"evaluation split {test.split!r} has {test.num_classes}; both splits must have the same "
                    "classes (for npz files, store the same 'num_classes' array in both)")
  if train.labels is None or test.labels is None:
    return
  seen_train, seen_test = set(np.unique(train.labels).tolist()), set(np.unique(test.labels).tolist())
  names = lambda labels: ', '.join(
      train.class_names[i] if train.class_names else str(i) for i in sorted(labels)[:10])
  if seen_test - seen_train:
    raise UserError(f"{train.dataset}: classes {names(seen_test - seen_train)} of the evaluation split "
                    f"{test.split!r} never occur in the training split {train.split!r}; give both splits the same "
                    "classes")
  if seen_train - seen_test and parse_split(train.split)[0] != parse_split(test.split)[0]:
    raise UserError(f"{train.dataset}: classes {names(seen_train - seen_test)} of the training split "
                    f"{train.split!r} are missing from the evaluation split {test.split!r}; give both splits the "
                    "same classes")


def _open_npz(path: str, split: str) -> ExampleSource:
  """`npz:PATH` is one split; `npz:DIR` or `npz:PREFIX` with files `PREFIX_<split>.npz` holds several.

  Resolution: if PATH is a file it serves every split name (train and eval on the same file is allowed but
  should be deliberate); otherwise `<PATH>_<split>.npz`, then `<PATH>/<split>.npz`.
  Optional array `num_classes` (a scalar) fixes the class count; otherwise it is max(label) + 1.
  """
  candidates = [path, f'{path}_{split}.npz', os.path.join(path, f'{split}.npz')]
  file = next((c for c in candidates if os.path.isfile(c)), None)
  if file is None:
    raise UserError(f"npz dataset: none of {', '.join(candidates)} exists; pass npz:FILE.npz with arrays "
                    "'images' (uint8 N x H x W x C) and 'labels'")
  if not zipfile.is_zipfile(file):
    raise UserError(f"{file}: not an .npz archive; write one with np.savez(PATH, images=..., labels=...)")
  try:
    arrays = np.load(file, allow_pickle=False)
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f"{file}: not a readable .npz archive ({str(e).splitlines()[0][:160]}); write it again with "
                    "np.savez(PATH, images=..., labels=...)") from None
  missing = [k for k in ('images', 'labels') if k not in arrays.files]
  if missing:
    raise UserError(f"{file}: missing array {missing[0]!r}; the file needs 'images' (uint8 N x H x W x C) "
                    f"and 'labels'; it has {', '.join(arrays.files) or 'nothing'}")
  images, labels = arrays['images'], arrays['labels']
  if images.dtype != np.uint8 or images.ndim != 4:
    raise UserError(f"{file}: 'images' must be uint8 with shape N x H x W x C, got {images.dtype} "
                    f"{images.shape}; convert with images.astype(np.uint8) and add a channel axis if grey")
  if images.shape[-1] not in (1, 3):
    raise UserError(f"{file}: 'images' must have 1 (grey) or 3 (RGB) channels in the last axis, got shape "
                    f"{images.shape}; images must be N x H x W x C (channels last)")
  if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"{file}: 'labels' must be integers of shape ({len(images)},), got {labels.dtype} "
                    f"{labels.shape}")
  if len(labels) == 0:
    raise UserError(f"{file}: holds no examples")
  if labels.min() < 0:
    raise UserError(f"{file}: labels must be in [0, num_classes), found {labels.min()}")
  if 'num_classes' in arrays and (arrays['num_classes'].shape != () or
                                  not np.issubdtype(arrays['num_classes'].dtype, np.integer)):
    raise UserError(f"{file}: 'num_classes' must be one integer (a scalar array), got {arrays['num_classes'].dtype} "
                    f"{arrays['num_classes'].shape}")
  num_classes = int(arrays['num_classes']) if 'num_classes' in arrays else int(labels.max()) + 1
  if labels.max() >= num_classes:
    raise UserError(f"{file}: label {labels.max()} out of range for num_classes={num_classes}")
  labels = labels.astype(np.int32)
  images = np.ascontiguousarray(images)

  def read(indices):
    indices = np.asarray(indices, dtype=np.int64)
    return {'image': images[indices], 'label': labels[indices]}

  return ExampleSource(dataset=f'npz:{path}', split=split, num_classes=num_classes,
                       image_shape=tuple(images.shape[1:]), num_examples=len(images), read_fn=read, labels=labels)


# ----------------------------------------------------------------------------------------------------------
# folder:ROOT


_SLICE = re.compile(r'^(?P<name>[^\[\]]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$')


def parse_split(split: str) -> tuple[str, Optional[tuple[Optional[str], Optional[str]]]]:
  """'train[10%:20%]' -> ('train', ('10%', '20%')); 'test' -> ('test', None)."""
  match = _SLICE.match(split.strip())
  if not match:
    raise UserError(f"split {split!r}: expected NAME or NAME[START:STOP] with integers or percentages, e.g. "
                    "train[:90%] or train[-5000:]")
  if match.group(3) is None and '[' not in split:
    return match.group('name'), None
  return match.group('name'), (match.group('start'), match.group('stop'))


def _slice_bound(text: Optional[str], num_examples: int, default: int) -> int:
  if text is None:
    return default
  if text.endswith('%'):
    value = int(text[:-1])
    if not -100 <= value <= 100:
      raise UserError(f"split slice {text}: percentages must be in [-100%, 100%]")
    value = int(round(num_examples * value / 100))  # TFDS rounds to the closest example
  else:
    value = int(text)
  if value < 0:
    value += num_examples
  return min(max(value, 0), num_examples)


def slice_indices(num_examples: int, bounds: Optional[tuple[Optional[str], Optional[str]]]) -> np.ndarray:
  if bounds is None:
    return np.arange(num_examples)
  return np.arange(_slice_bound(bounds[0], num_examples, 0), _slice_bound(bounds[1], num_examples, num_examples))


def _image_files(folder: str) -> list[str]:
  found = []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                 if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS))
  return found


def _subdirs(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder) if not d.startswith('.') and os.path.isdir(os.path.join(folder, d)))


def _has_direct_images(folder: str) -> bool:
  return any(f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.') for f in os.listdir(folder))


class _FolderReader:
  """Reads files of a folder dataset; picklable for Grain workers."""

  def __init__(self, files: list[str], labels: np.ndarray, channels: int, shape: Optional[tuple[int, int, int]]):
    self.files = files
    self.labels = labels
    self.channels = channels
    self.shape = shape

  def raw(self, indices):
    images = []
    for i in indices:
      try:
        with open(self.files[int(i)], 'rb') as f:
          images.append(f.read())
      except OSError as e:
        images.append(host_augment.CorruptImageError(f'cannot read {self.files[int(i)]}: {e}'))
    return images, self.labels[np.asarray(indices, np.int64)]

  def __call__(self, indices):
    raws, labels = self.raw(indices)
    images = []
    for i, raw in zip(indices, raws):
      try:
        if isinstance(raw, Exception):
          raise raw
        images.append(host_pipeline.fixed_image(raw, self.channels, self.shape))
      except host_augment.CorruptImageError as e:
        raise host_augment.CorruptImageError(f'{self.files[int(i)]}: {e}') from None
    return {'image': np.stack(images) if self.shape is not None else images, 'label': labels}

  def describe(self, index):
    return self.files[int(index)]


def _open_folder(root: str, split: str) -> ExampleSource:
  root = os.path.expanduser(root)
  layout_help = ("expected ROOT/<class>/*.jpg (one split, 'train') or ROOT/<split>/<class>/*.jpg "
                 "(e.g. ROOT/train and ROOT/test); JPEG or PNG files")
  if not os.path.isdir(root):
    raise UserError(f"folder dataset: {root} is not a directory; {layout_help}")
  name, bounds = parse_split(split)
  top = _subdirs(root)
  if not top:
    raise UserError(f"folder dataset {root} has no sub-folders; {layout_help}")
  split_layout = not any(_has_direct_images(os.path.join(root, d)) for d in top)
  if split_layout:
    classes = sorted({c for s in top for c in _subdirs(os.path.join(root, s))})
    if name not in top:
      raise UserError(f"folder dataset {root} has no split {name!r}; its splits (sub-folders) are "
                      f"{', '.join(top)}")
    split_dir = os.path.join(root, name)
  else:
    classes = top
    if name != 'train':
      raise UserError(f"folder dataset {root} holds one split, 'train' (class folders directly under it), so "
                      f"there is no split {name!r}; carve one with slices, e.g. train_split='train[:90%]' and "
                      "eval_split='train[90%:]', or arrange ROOT/train/<class> and ROOT/test/<class>")
    split_dir = root
  files, labels = [], []
  for index, cls in enumerate(classes):
    class_dir = os.path.join(split_dir, cls)
    if os.path.isdir(class_dir):
      found = _image_files(class_dir)
      files += found
      labels += [index] * len(found)
  if not files:
    raise UserError(f"folder dataset {split_dir} contains no JPEG/PNG images ({', '.join(IMAGE_EXTENSIONS)}) "
                    f"in class folders; {layout_help}")
  order = np.random.default_rng(0).permutation(len(files))
  order = order[slice_indices(len(files), bounds)]
  if len(order) == 0:
    raise UserError(f"split {split!r} of folder dataset {root} is empty ({len(files)} images before slicing)")
  files = [files[i] for i in order]
  labels = np.asarray(labels, np.int32)[order]

  shape, channels = None, 3
  if len(files) <= FOLDER_PROBE_LIMIT:
    sizes, grey = set(), True
    for path in files:
      try:
        with Image.open(path) as image:
          sizes.add(image.size)
          grey = grey and image.mode in ('1', 'L', 'I;16', 'I')
      except (OSError, ValueError, SyntaxError):
        pass  # a corrupt file: reported (or skipped, by config) when the pipeline reads it
    channels = 1 if grey and sizes else 3
    if len(sizes) == 1:
      width, height = next(iter(sizes))
      shape = (height, width, channels)
  reader = _FolderReader(files, labels, channels, shape)
  return ExampleSource(dataset=f'folder:{root}', split=split, num_classes=len(classes), image_shape=shape,
                       num_examples=len(files), read_fn=reader, read_raw_fn=reader.raw, channels=channels,
                       describe_fn=reader.describe, labels=labels, class_names=tuple(classes))
