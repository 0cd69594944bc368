"""Data sources: the embedded digits dataset (built without TensorFlow), TFDS mock data, npz files."""

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
