"""Device-side small-image augmentation (CIFAR recipe) and the device-resident pipeline built from a config."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax import parallel
from resnet_jax.data import augment
from resnet_jax.data import pipelines
from resnet_jax.data import sources
import data_helpers as testing
from resnet_jax.errors import UserError


def find_window(out, padded, size):
  """(dy, dx, flipped) such that `out` is that window of `padded` (mirrored if flipped), or None."""
  windows = np.lib.stride_tricks.sliding_window_view(padded, (size[0], size[1]), axis=(0, 1))
  windows = np.moveaxis(windows, (-2, -1), (2, 3))  # [dy, dx, h, w, c]
  for flipped, target in ((False, out), (True, out[:, ::-1])):
    hits = np.argwhere(np.all(np.isclose(windows, target[None, None], atol=1e-3), axis=(2, 3, 4)))
    if len(hits):
      return int(hits[0][0]), int(hits[0][1]), flipped
  return None


def run_augment(aug, images, seed=0):
  return np.asarray(jax.jit(aug)(jax.random.key(seed), jnp.asarray(images)))


def test_every_crop_is_a_window_of_the_zero_padded_image_and_flips_happen_half_the_time():
  images = np.random.default_rng(0).integers(0, 256, (1500, 12, 12, 3), dtype=np.uint8)
  aug = augment.SmallImageAugment(crop_padding=4, flip=True, pad_value=(0.0,))
  out = run_augment(aug, images)
  assert out.dtype == np.float32 and out.shape == images.shape
  assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
  found = []
  for image, o in zip(images, out):
    padded = np.pad(image.astype(np.float32), ((4, 4), (4, 4), (0, 0)))
    hit = find_window(o, padded, (12, 12))
    assert hit is not None, 'a crop is not a window of the padded image'
    found.append(hit)
  dy, dx, flipped = map(np.asarray, zip(*found))
  assert 0.45 < flipped.mean() < 0.55, flipped.mean()
  # Offsets cover all 9 x 9 positions, roughly uniformly.
  counts = np.bincount(dy * 9 + dx, minlength=81)
  assert counts.min() > 0 and set(np.unique(dy)) == set(range(9))


def test_padding_after_per_channel_normalisation_shows_the_mean_colour():
  images = np.random.default_rng(1).integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
  mean = (125.3, 123.0, 113.9)
  out = run_augment(augment.SmallImageAugment(crop_padding=2, flip=True, center=mean), images)
  assert 0 <= out.min() and out.max() <= 255
  for image, o in zip(images, out):
    padded = np.pad(image.astype(np.float32) - np.float32(mean), ((2, 2), (2, 2), (0, 0))) + np.float32(mean)
    assert find_window(o, padded, (8, 8)) is not None


def test_padding_after_per_pixel_mean_subtraction_is_exact_for_the_normalising_model():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
  mean_image = rng.uniform(60, 200, (8, 8, 3)).astype(np.float32)
  out = run_augment(augment.SmallImageAugment(crop_padding=2, flip=True, center=mean_image.tolist()), images)
  # What the model sees after subtracting the mean image: a window of the zero-padded centred image.
  for image, o in zip(images, out):
    padded = np.pad(image.astype(np.float32) - mean_image, ((2, 2), (2, 2), (0, 0)))
    assert find_window(o - mean_image, padded, (8, 8)) is not None


def test_no_flip_no_padding_is_the_identity():
  images = np.random.default_rng(3).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
  out = run_augment(augment.SmallImageAugment(crop_padding=0, flip=False), images)
  np.testing.assert_array_equal(out, images.astype(np.float32))


def cifar_config(**overrides):
  config = ml_collections.ConfigDict({
      'seed': 3, 'batch_size': 8, 'eval_batch_size': 10,
      'dataset': {'name': 'cifar10', 'pipeline': 'auto', 'train_split': 'train', 'eval_split': 'test'},
      'augment': {'crop_padding': 4, 'flip': True, 'normalization': 'per_channel', 'pad_after_normalize': True}})
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_cifar10_config_gives_the_device_resident_pipeline_under_mock_data():
  mesh = parallel.make_mesh()
  with tfds.testing.mock_data(num_examples=40):
    source = sources.open_split('cifar10', 'train')
    data = pipelines.make_train_data(cifar_config(), mesh, source)
    per_pixel = pipelines.make_train_data(cifar_config(**{'augment.normalization': 'per_pixel_mean',
                                                          'augment.pad_after_normalize': False}), mesh, source)
    eval_data = pipelines.make_eval_batches(cifar_config(), mesh, sources.open_split('cifar10', 'test'))
    eval_batches = list(eval_data)
  assert data.pipeline == 'device' and data.image_shape == (32, 32, 3) and data.num_classes == 10
  (mean, std), (per_pixel_mean, per_pixel_std) = data.normalization, per_pixel.normalization
  assert len(mean) == 3 and len(std) == 3 and data.steps_per_epoch == 5
  assert data.device_augment.center == mean  # pad after normalisation
  assert np.asarray(per_pixel_mean).shape == (32, 32, 3) and per_pixel_std == (1.0,)
  assert per_pixel.device_augment.center is None and per_pixel.device_augment.pad_value == (0.0,)

  @jax.jit
  def batch_at(arrays, step):
    batch = data.batch(arrays, step)
    return batch, data.device_augment(jax.random.fold_in(jax.random.key(0), step), batch['image'])
  batch, images = batch_at(data.arrays, jnp.int32(0))
  assert batch['image'].dtype == jnp.uint8 and batch['label'].dtype == jnp.int32
  assert images.dtype == jnp.float32 and images.shape == (8, 32, 32, 3)
  assert float(images.min()) >= 0 and float(images.max()) <= 255
  assert images.sharding.spec == jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  # Every augmented CIFAR image is a window of the image padded (with the mean colour) after normalisation.
  mean = np.float32(mean)
  flips = []
  for step in range(5):
    batch, images = jax.tree.map(np.asarray, batch_at(data.arrays, jnp.int32(step)))
    for raw, out in zip(batch['image'], images):
      padded = np.pad(raw.astype(np.float32) - mean, ((4, 4), (4, 4), (0, 0))) + mean
      hit = find_window(out, padded, (32, 32))
      assert hit is not None
      flips.append(hit[2])
  assert 0.2 < np.mean(flips) < 0.8  # 40 draws; the 1500-image test above pins the rate to 1/2
  # Evaluation: fixed-size test images as they are, padded + masked, every example once.
  assert eval_data.views == 1 and eval_data.image_shape == (32, 32, 3) and len(eval_batches) == 4
  assert sum(int(np.asarray(b['mask']).sum()) for b in eval_batches) == 40
  assert eval_batches[0]['image'].dtype == jnp.uint8


def test_device_resident_batches_after_resume_equal_the_uninterrupted_sequence():
  arrays = {'image': testing.indexed_images(30, (8, 8, 3)), 'label': np.arange(30) % 5}
  mesh = parallel.make_mesh()
  aug = augment.SmallImageAugment(crop_padding=2, flip=True)

  def sequence(data, steps):
    step_fn = jax.jit(lambda arrays, s: (data.batch(arrays, s)['label'],
                                         aug(jax.random.fold_in(jax.random.key(7), s), data.batch(arrays, s)['image'])))
    return [jax.tree.map(np.asarray, step_fn(data.arrays, jnp.int32(s))) for s in steps]

  uninterrupted = sequence(pipelines.DeviceResidentData.from_arrays(arrays, mesh, 8, seed=1), range(10))
  # A "restarted" run: new arrays on the devices, continuing at step 6 (it crosses epochs 1 -> 2 -> 3).
  resumed = sequence(pipelines.DeviceResidentData.from_arrays(arrays, mesh, 8, seed=1), range(6, 10))
  for (la, ia), (lb, ib) in zip(uninterrupted[6:], resumed):
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ia, ib)
  # Each epoch of 30 examples is covered exactly once by positions [30 e, 30 e + 30).
  data = pipelines.DeviceResidentData.from_arrays(arrays, mesh, 10, seed=1)
  indices = jax.jit(data.batch_indices)
  ids = np.concatenate([np.asarray(indices(jnp.int32(s))) for s in range(3)])
  assert sorted(ids) == list(range(30))


def test_device_pipeline_errors():
  mesh = parallel.make_mesh()
  with tfds.testing.mock_data(num_examples=6):
    imagenet = sources.open_split('imagenet2012', 'train')
    with pytest.raises(UserError, match='images vary in size, so they cannot be held on the device'):
      pipelines.make_train_data(cifar_config(**{'dataset.pipeline': 'device'}), mesh, imagenet)
    with pytest.raises(UserError, match="unknown config.dataset.pipeline 'tpu'"):
      pipelines.make_train_data(cifar_config(**{'dataset.pipeline': 'tpu'}), mesh, imagenet)
    with pytest.raises(UserError, match='larger than the 6 training examples'):
      pipelines.make_train_data(cifar_config(), mesh, sources.open_split('cifar10', 'train'))
