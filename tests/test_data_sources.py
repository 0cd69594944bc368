"""Data sources: the embedded digits dataset (built without TensorFlow), TFDS mock data, npz files."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax.data import digits
from resnet_jax.data import sources
from resnet_jax.errors import UserError


def test_digits_builds_without_tensorflow_and_has_the_documented_split(tmp_path):
  code = (
      'import sys\n'
      'from resnet_jax.data import sources\n'
      f'train = sources.open_split("digits", "train", data_dir={str(tmp_path)!r})\n'
      f'test = sources.open_split("digits", "test", data_dir={str(tmp_path)!r})\n'
      'print(len(train), len(test), train.num_classes, train.image_shape)\n'
      'assert "tensorflow" not in sys.modules, "TensorFlow was imported"\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '1433 364 10 (8, 8, 1)'
  # ArrayRecord files in the TFDS layout, readable by tfds.data_source.
  assert list(tmp_path.glob('digits/1.0.0/digits-train.array_record*'))


def test_digits_split_is_disjoint_stratified_and_complete():
  train = sources.open_split('digits', 'train').read_all()
  test = sources.open_split('digits', 'test').read_all()
  images, labels = digits.load_arrays()
  assert len(train['label']) + len(test['label']) == len(labels) == 1797
  assert np.all(np.bincount(test['label'], minlength=10) >= 35)
  # Every example lands in exactly one split: compare images as rows (the dataset has a few duplicate images).
  as_rows = lambda x: {r.tobytes() + bytes([l]) for r, l in zip(x['image'].reshape(len(x['image']), -1), x['label'])}
  everything = {r.tobytes() + bytes([l]) for r, l in zip(images.reshape(1797, -1), labels)}
  assert as_rows(train) | as_rows(test) == everything
  assert train['image'].dtype == np.uint8 and train['image'].shape[1:] == (8, 8, 1)
  assert train['image'].max() == 255 and train['label'].dtype == np.int32


def test_tfds_dataset_through_data_source_under_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    source = sources.open_split('cifar10', 'train')
    batch = source.read([0, 5, 11])
  assert source.num_classes == 10 and source.image_shape == (32, 32, 3) and len(source) == 12
  assert batch['image'].shape == (3, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['label'].max() < 10


def test_unknown_dataset_and_split_are_clear_errors():
  with pytest.raises(UserError, match="unknown dataset 'cifar1000'"):
    sources.open_split('cifar1000', 'train')
  with pytest.raises(UserError, match="has no split 'validation'; its splits are test, train"):
    sources.open_split('digits', 'validation')


def test_missing_tfds_dataset_prints_the_prepare_command(tmp_path):
  with pytest.raises(UserError, match=f'not prepared.*python -m resnet_jax.data.prepare cifar10 --data_dir {tmp_path}'):
    sources.open_split('cifar10', 'train', data_dir=str(tmp_path))


def test_npz_source(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
  labels = np.arange(20) % 4
  np.savez(tmp_path / 'toy_train.npz', images=images, labels=labels)
  source = sources.open_split(f'npz:{tmp_path}/toy', 'train')
  assert len(source) == 20 and source.num_classes == 4 and source.image_shape == (6, 6, 3)
  np.testing.assert_array_equal(source.read([3, 1])['image'], images[[3, 1]])


@pytest.mark.parametrize('arrays,message', [
    (dict(images=np.zeros((4, 6, 6, 3), np.float32), labels=np.zeros(4, int)), "'images' must be uint8"),
    (dict(images=np.zeros((4, 6, 6), np.uint8), labels=np.zeros(4, int)), "'images' must be uint8"),
    (dict(images=np.zeros((4, 6, 6, 3), np.uint8), labels=np.zeros(3, int)), "'labels' must be integers"),
    (dict(images=np.zeros((4, 6, 6, 3), np.uint8), labels=-np.ones(4, int)), 'labels must be in'),
    (dict(images=np.zeros((4, 6, 6, 3), np.uint8)), "missing array 'labels'"),
])
def test_npz_with_wrong_contents_is_a_clear_error(tmp_path, arrays, message):
  np.savez(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(UserError, match=message):
    sources.open_split(f'npz:{tmp_path}/bad.npz', 'train')


# ----------------------------------------------------------------------------------------------------------
# folder:ROOT, Image-feature TFDS datasets read without TensorFlow, preparation.

from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

from resnet_jax.data import host_augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
import data_helpers as testing  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_folder_with_split_folders(tmp_path):
  testing.write_image_folder(str(tmp_path), classes=('cat', 'dog'), per_class=3, splits=('train',))
  testing.write_image_folder(str(tmp_path), classes=('ant', 'cat', 'dog'), per_class=2, splits=('test',), seed=1)
  train = sources.open_split(f'folder:{tmp_path}', 'train')
  test = sources.open_split(f'folder:{tmp_path}', 'test')
  # Classes are the union over splits, sorted: ant=0, cat=1, dog=2 in both splits.
  assert train.num_classes == test.num_classes == 3
  assert sorted(train.read_all()['label']) == [1, 1, 1, 2, 2, 2]
  assert sorted(test.read_all()['label']) == [0, 0, 1, 1, 2, 2]
  assert train.image_shape == (24, 32, 3) and len(train) == 6
  batch = train.read([0, 5])
  assert batch['image'].shape == (2, 24, 32, 3) and batch['image'].dtype == np.uint8
  # Pixels are the PNG's exactly, and the label is the class folder's.
  path = train.describe(5)
  np.testing.assert_array_equal(batch['image'][1], np.asarray(Image.open(path)))
  assert batch['label'][1] == ['ant', 'cat', 'dog'].index(path.split('/')[-2])
  raws, labels = train.read_raw([0])
  assert isinstance(raws[0], bytes) and labels.dtype == np.int32


def test_folder_single_split_slices_are_disjoint_and_cover(tmp_path):
  testing.write_image_folder(str(tmp_path), per_class=5, splits=None, sizes=((10, 12), (12, 10)), fmt='JPEG')
  name = f'folder:{tmp_path}'
  whole = sources.open_split(name, 'train')
  assert whole.image_shape is None and whole.num_classes == 3 and len(whole) == 15  # sizes vary
  head, tail = sources.open_split(name, 'train[:80%]'), sources.open_split(name, 'train[80%:]')
  files = lambda s: {s.describe(i) for i in range(len(s))}
  assert len(head) == 12 and len(tail) == 3
  assert files(head) | files(tail) == files(whole) and not files(head) & files(tail)
  assert len(sources.open_split(name, 'train[-4:]')) == 4
  with pytest.raises(UserError, match="holds one split, 'train'.*train\\[:90%\\]"):
    sources.open_split(name, 'test')
  with pytest.raises(UserError, match='expected NAME or NAME\\[START:STOP\\]'):
    sources.open_split(name, 'train[1:2:3]')


def test_folder_grey_images_have_one_channel(tmp_path):
  testing.write_image_folder(str(tmp_path), per_class=2, splits=None, channels=1)
  source = sources.open_split(f'folder:{tmp_path}', 'train')
  assert source.image_shape == (24, 32, 1) and source.read([0])['image'].shape == (1, 24, 32, 1)


def test_folder_errors_are_clear(tmp_path):
  with pytest.raises(UserError, match='is not a directory'):
    sources.open_split(f'folder:{tmp_path}/nope', 'train')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match='has no sub-folders'):
    sources.open_split(f'folder:{tmp_path}/empty', 'train')
  (tmp_path / 'noimages' / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'noimages' / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  with pytest.raises(UserError, match='contains no JPEG/PNG images'):
    sources.open_split(f'folder:{tmp_path}/noimages', 'train')
  testing.write_image_folder(str(tmp_path / 'ok'), per_class=1)
  with pytest.raises(UserError, match="has no split 'validation'; its splits .* are test, train"):
    sources.open_split(f'folder:{tmp_path}/ok', 'validation')


def test_folder_corrupt_image_is_a_clear_error(tmp_path):
  paths = testing.write_image_folder(str(tmp_path), per_class=2, splits=None)
  with open(paths[3], 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
  source = sources.open_split(f'folder:{tmp_path}', 'train')
  assert source.image_shape == (24, 32, 3)  # the corrupt file does not decide the shape
  with pytest.raises(host_augment.CorruptImageError, match=paths[3]) as info:
    source.read_all()
  assert isinstance(info.value, UserError)


def test_npz_labels_out_of_range_and_channels_first_are_clear_errors(tmp_path):
  np.savez(tmp_path / 'a.npz', images=np.zeros((4, 6, 6, 3), np.uint8), labels=np.array([0, 1, 5, 2]),
           num_classes=3)
  with pytest.raises(UserError, match='label 5 out of range for num_classes=3'):
    sources.open_split(f'npz:{tmp_path}/a.npz', 'train')
  np.savez(tmp_path / 'b.npz', images=np.zeros((4, 3, 6, 6), np.uint8), labels=np.zeros(4, int))
  with pytest.raises(UserError, match='channels last'):
    sources.open_split(f'npz:{tmp_path}/b.npz', 'train')


def test_unknown_scheme_is_a_clear_error():
  with pytest.raises(UserError, match="unknown scheme 'csv'"):
    sources.open_split('csv:/tmp/x', 'train')


def test_image_feature_tfds_dataset_is_read_as_jpeg_bytes_without_tensorflow(tmp_path):
  code = (
      f'import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n'
      'import data_helpers as testing\n'
      'from resnet_jax.data import sources, host_augment\n'
      f'name = testing.build_jpeg_tfds({str(tmp_path)!r}, train=6, validation=3)\n'
      f'train = sources.open_split(name, "train", data_dir={str(tmp_path)!r})\n'
      'raws, labels = train.read_raw([0, 4])\n'
      'decoded = train.read([0, 4])["image"]\n'
      'assert all(isinstance(r, bytes) for r in raws), [type(r) for r in raws]\n'
      'assert raws[0][:2] == b"\\xff\\xd8", "not a JPEG"\n'
      'assert (host_augment.decode(raws[1]) == decoded[1]).all()\n'
      'assert labels.dtype.name == "int32" and set(labels.tolist()) <= {0, 1, 2}\n'
      'print(len(train), train.num_classes, train.image_shape, decoded[0].dtype)\n'
      'assert "tensorflow" not in sys.modules, "TensorFlow was imported"\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == '6 3 None uint8'


def test_imagenet2012_under_mock_data():
  with tfds.testing.mock_data(num_examples=6):
    source = sources.open_split('imagenet2012', 'validation')
    batch = source.read([0, 1, 2])
    raws, labels = source.read_raw([3])
  assert source.num_classes == 1000 and source.image_shape is None and source.channels == 3
  assert all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[-1] == 3 for i in batch['image'])
  assert raws[0].dtype == np.uint8 and labels.dtype == np.int32


def test_missing_imagenet_prints_the_prepare_command_with_manual_dir(tmp_path):
  with pytest.raises(UserError, match=f'python -m resnet_jax.data.prepare imagenet2012 --data_dir {tmp_path} '
                                      '--manual_dir'):
    sources.open_split('imagenet2012', 'train', data_dir=str(tmp_path))


def test_prepare_builds_digits_and_explains_what_else_is_needed(tmp_path):
  assert prepare.prepare('digits', str(tmp_path)).endswith('digits/1.0.0')
  with pytest.raises(UserError, match='must be downloaded by hand.*ILSVRC2012_img_train.tar.*--manual_dir'):
    prepare.prepare('imagenet2012', str(tmp_path))
  with pytest.raises(UserError, match='needs no preparation'):
    prepare.prepare('npz:/x.npz', str(tmp_path))
  if not prepare.tensorflow_available():
    with pytest.raises(UserError, match=r"needs TensorFlow.*pip install -e '\.\[prepare\]'"):
      prepare.prepare('cifar10', str(tmp_path))


def test_prepare_command_line_fails_with_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.data.prepare', 'imagenet2012', '--data_dir',
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and '--manual_dir' in errors[0]


@pytest.mark.parametrize('name,classes', [('cifar10', 10), ('cifar100', 100), ('svhn_cropped', 10)])
def test_small_tfds_datasets_are_fixed_size_and_fit_on_the_device(name, classes):
  with tfds.testing.mock_data(num_examples=5):
    source = sources.open_split(name, 'train')
    batch = source.read([0, 4])
  assert source.image_shape == (32, 32, 3) and source.num_classes == classes
  assert batch['image'].shape == (2, 32, 32, 3) and batch['label'].max() < classes
