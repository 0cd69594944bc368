"""The streaming (Grain) training pipeline and evaluation batches: shapes, order, resume, exact evaluation,
corrupt images, pipeline choice; input options and normalisation statistics."""

import dataclasses
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_python

from resnet_jax import config as config_lib
from resnet_jax import parallel
from resnet_jax.data import host_augment
from resnet_jax.data import normalization
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.data import streaming
import data_helpers as testing
from resnet_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(name, batch=8, eval_batch=6, **inputs):
  base = {'num_workers': 0, 'image_size': 48, 'eval_resize': 56, 'eval_crop': 48, 'scale_range': (48, 90)}
  base.update(inputs)
  return ml_collections.ConfigDict({
      'seed': 0, 'batch_size': batch, 'eval_batch_size': eval_batch,
      'dataset': {'name': name, 'pipeline': 'auto', 'train_split': 'train', 'eval_split': 'validation'},
      'augment': {'crop_padding': 4, 'flip': True, 'normalization': 'per_channel', 'pad_after_normalize': True},
      'input': base})


def take(data, n):
  return [jax.tree.map(np.asarray, next(data)) for _ in range(n)]


@pytest.mark.parametrize('crop', ['inception', 'scale'])
def test_imagenet2012_training_batches_under_mock_data(crop):
  mesh = parallel.make_mesh()
  config = make_config('imagenet2012', train_crop=crop, color_jitter=0.4, pca_lighting=0.1)
  config.augment.normalization = 'imagenet'  # the published statistics, as configs/imagenet.py asks
  with tfds.testing.mock_data(num_examples=20):
    source = sources.open_split('imagenet2012', 'train')
    data = pipelines.make_train_data(config, mesh, source)
    try:
      first = next(data)
      rest = take(data, 2)
    finally:
      data.close()
  assert data.pipeline == 'grain' and data.image_shape == (48, 48, 3) and data.num_classes == 1000
  assert data.normalization == (normalization.IMAGENET_MEAN, normalization.IMAGENET_STD)
  assert data.steps_per_epoch == 2.5
  assert first['image'].shape == (8, 48, 48, 3) and first['image'].dtype == np.uint8
  assert first['label'].dtype == np.int32
  assert first['image'].sharding.spec == jax.sharding.PartitionSpec(parallel.DATA_AXIS)
  images = np.concatenate([np.asarray(first['image'])] + [b['image'] for b in rest])
  labels = np.concatenate([np.asarray(first['label'])] + [b['label'] for b in rest])
  assert images.std() > 10 and images.max() > 200 and images.min() < 50  # real pixels, full range
  assert labels.min() >= 0 and labels.max() < 1000
  augmented = data.device_augment(jax.random.key(0), first['image'])
  assert augmented.dtype == np.float32


def test_imagenet2012_evaluation_batches_under_mock_data():
  mesh = parallel.make_mesh()
  with tfds.testing.mock_data(num_examples=11):
    source = sources.open_split('imagenet2012', 'validation')
    center = list(pipelines.make_eval_batches(make_config('imagenet2012'), mesh, source))
    ten = pipelines.make_eval_batches(make_config('imagenet2012', eval_crop_mode='ten'), mesh, source)
    ten_batches = list(ten)
  assert len(center) == 2 and center[0]['image'].shape == (6, 48, 48, 3) and center[0]['image'].dtype == np.uint8
  masks = np.concatenate([np.asarray(b['mask']) for b in center])
  assert masks.tolist() == [True] * 11 + [False]
  assert ten.views == 10 and ten_batches[0]['image'].shape == (6, 10, 48, 48, 3)
  # The ten views of an example: view 5 + k is the mirror image of view k.
  views = np.asarray(ten_batches[0]['image'])[0]
  np.testing.assert_array_equal(views[5:], views[:5, :, ::-1])


@pytest.fixture(scope='module')
def jpeg_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('jpegs')
  testing.write_image_folder(str(root), classes=('a', 'b', 'c', 'd'), per_class=6, splits=('train', 'validation'),
                             sizes=((40, 52), (52, 40), (33, 60)), fmt='JPEG')
  return f'folder:{root}'


def test_streaming_resume_yields_exactly_the_uninterrupted_batches(jpeg_folder):
  mesh = parallel.make_mesh()
  config = make_config(jpeg_folder, num_workers=1, color_jitter=0.4)  # one Grain worker process
  source = sources.open_split(jpeg_folder, 'train')
  data = pipelines.make_train_data(config, mesh, source)
  try:
    uninterrupted = take(data, 7)  # 24 examples, batch 8: crosses two epoch boundaries
  finally:
    data.close()

  data = pipelines.make_train_data(config, mesh, source)
  first = take(data, 3)
  state = data.get_state()
  data.close()
  assert state['step'] == 3 and state['global_batch'] == 8
  import json  # pylint: disable=g-import-not-at-top
  state = json.loads(json.dumps(state))  # JSON round trip, as in a checkpoint
  resumed = pipelines.make_train_data(config, mesh, source)
  resumed.set_state(state)
  try:
    rest = take(resumed, 4)
  finally:
    resumed.close()
  for a, b in zip(uninterrupted, first + rest):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  # set_state on a live iterator also works (drops what was prefetched); the worker count (here 0: threads of
  # this process) does not change the batches.
  live = pipelines.make_train_data(make_config(jpeg_folder, color_jitter=0.4), mesh, source)
  try:
    take(live, 2)
    live.set_state({'step': 5, 'seed': 0, 'global_batch': 8, 'num_examples': 24})
    np.testing.assert_array_equal(take(live, 1)[0]['image'], uninterrupted[5]['image'])
  finally:
    live.close()
  with pytest.raises(UserError, match='global_batch=16'):
    live.set_state({'step': 1, 'seed': 0, 'global_batch': 16, 'num_examples': 24})


def test_each_epoch_covers_the_split_once_and_does_not_depend_on_device_count(tmp_path):
  images = testing.indexed_images(24, (8, 8, 3))
  np.savez(tmp_path / 'ids.npz', images=images, labels=np.arange(24) % 3)
  config = make_config(f'npz:{tmp_path}/ids.npz', train_crop='none', **{'prefetch': 3})
  config.augment.flip = False
  config.dataset.pipeline = 'grain'
  source = sources.open_split(f'npz:{tmp_path}/ids.npz', 'train')
  sequences = []
  for devices in (jax.devices(), jax.devices()[:1]):
    data = pipelines.make_train_data(config, parallel.make_mesh(devices), source)
    try:
      sequences.append([testing.image_ids(b['image']) for b in take(data, 6)])
    finally:
      data.close()
  for a, b in zip(*sequences):
    np.testing.assert_array_equal(a, b)
  ids = np.concatenate(sequences[0])
  for epoch in range(2):
    assert sorted(ids[24 * epoch:24 * (epoch + 1)]) == list(range(24))
  assert not np.array_equal(ids[:24], ids[24:])  # a new order each epoch


def test_evaluation_counts_every_example_once_when_the_batch_does_not_divide_the_split(jpeg_folder):
  mesh = parallel.make_mesh()
  source = sources.open_split(jpeg_folder, 'validation')
  eval_data = pipelines.make_eval_batches(make_config(jpeg_folder, eval_batch=10, eval_num_workers=0), mesh, source)
  batches = list(eval_data)
  assert len(source) == 24 and eval_data.global_batch == 10 and len(batches) == eval_data.num_batches == 3
  masks = np.concatenate([np.asarray(b['mask']) for b in batches])
  labels = np.concatenate([np.asarray(b['label']) for b in batches])
  assert masks.sum() == 24 and masks.tolist() == [True] * 24 + [False] * 6
  np.testing.assert_array_equal(labels[:24], source.read_raw(np.arange(24))[1])
  # A second pass is identical; an odd eval batch is rounded up to the device count.
  again = list(eval_data)
  np.testing.assert_array_equal(np.asarray(again[1]['image']), np.asarray(batches[1]['image']))
  assert pipelines.make_eval_batches(make_config(jpeg_folder, eval_batch=7), mesh, source).global_batch == 8


def test_corrupt_images_fail_loudly_or_are_skipped_with_a_log(tmp_path, caplog):
  paths = testing.write_image_folder(str(tmp_path), classes=('a', 'b'), per_class=6, splits=('train', 'validation'),
                                     sizes=((30, 40), (40, 30)), fmt='JPEG')
  broken = [p for p in paths if '/train/' in p][2]
  with open(broken, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 truncated')
  name = f'folder:{tmp_path}'
  mesh = parallel.make_mesh()
  source = sources.open_split(name, 'train')
  data = pipelines.make_train_data(make_config(name, batch=12), mesh, source)
  with pytest.raises(host_augment.CorruptImageError, match=f"{broken}.*corrupt_images='skip'"):
    try:
      next(data)
    finally:
      data.close()

  caplog.set_level(logging.WARNING)
  data = pipelines.make_train_data(make_config(name, batch=12, corrupt_images='skip'), mesh, source)
  try:
    batch = jax.tree.map(np.asarray, next(data))
  finally:
    data.close()
  assert batch['image'].shape == (12, 48, 48, 3)
  assert any('skipping corrupt image' in r.getMessage() and broken in r.getMessage() for r in caplog.records)

  # Evaluation with 'skip' masks the slot out (and logs); with 'fail' it raises.
  eval_paths = [p for p in paths if '/validation/' in p]
  with open(eval_paths[0], 'wb') as f:
    f.write(b'garbage')
  eval_source = sources.open_split(name, 'validation')
  skip = pipelines.make_eval_batches(make_config(name, corrupt_images='skip', eval_batch=8), mesh, eval_source)
  assert sum(int(np.asarray(b['mask']).sum()) for b in skip) == 11
  with pytest.raises(host_augment.CorruptImageError, match=eval_paths[0]):
    list(pipelines.make_eval_batches(make_config(name, eval_batch=8), mesh, eval_source))


def test_device_resident_split_with_a_corrupt_png(tmp_path):
  paths = testing.write_image_folder(str(tmp_path), classes=('a', 'b'), per_class=5, splits=None)
  with open(paths[1], 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n broken')
  name = f'folder:{tmp_path}'
  mesh = parallel.make_mesh()
  source = sources.open_split(name, 'train')
  with pytest.raises(host_augment.CorruptImageError, match=paths[1]):
    pipelines.make_train_data(make_config(name, batch=4), mesh, source)
  data = pipelines.make_train_data(make_config(name, batch=4, corrupt_images='skip'), mesh, source)
  assert data.pipeline == 'device' and data.num_examples == 9


def test_pipeline_choice_and_option_errors(tmp_path):
  np.savez(tmp_path / 'small.npz', images=np.zeros((16, 8, 8, 3), np.uint8), labels=np.arange(16) % 2)
  name = f'npz:{tmp_path}/small.npz'
  source = sources.open_split(name, 'train')
  options = pipelines.input_options(make_config(name))
  assert pipelines.choose_pipeline(options, source) == 'device'
  small_limit = pipelines.input_options(make_config(name, device_max_bytes=1000))
  assert pipelines.choose_pipeline(small_limit, source) == 'grain'
  assert pipelines.resolve_train_crop(small_limit, source) == 'pad_crop'
  assert pipelines.resolve_eval_crop(small_limit, source) == 'none'
  # Streaming a small fixed-size split: the device pads and crops, as for the device-resident split.
  data = pipelines.make_train_data(make_config(name, device_max_bytes=1000), parallel.make_mesh(), source)
  assert data.pipeline == 'grain' and data.image_shape == (8, 8, 3) and data.transform.crop == 'pad_crop'
  assert data.device_augment == pipelines.device_augmentation(options, 'pad_crop', data.normalization[0])
  data.close()
  # Defaults work for a config without an `input` section at all.
  bare = ml_collections.ConfigDict({'seed': 0, 'batch_size': 4, 'dataset': {'name': name}})
  assert pipelines.input_options(bare).train_crop == 'auto'
  for key, value, message in [('train_crop', 'random', "unknown config.input.train_crop 'random'"),
                              ('eval_resize', 40, 'smaller than eval_crop'),
                              ('scale_range', (480, 256), 'scale_range'),
                              ('corrupt_images', 'ignore', "choose fail, skip"),
                              ('area_range', (0.0, 1.0), 'area_range'),
                              ('mean', (1.0, 2.0, 3.0), 'set both config.input.mean and config.input.std')]:
    with pytest.raises(UserError, match=message):
      pipelines.input_options(make_config(name, **{key: value}))
  with pytest.raises(UserError, match="per_pixel_mean' needs images of one size"):
    with tfds.testing.mock_data(num_examples=4):
      config = make_config('imagenet2012', batch=2)
      config.augment.normalization = 'per_pixel_mean'
      pipelines.make_train_data(config, parallel.make_mesh(), sources.open_split('imagenet2012', 'train'))


def test_labels_out_of_range_in_a_streamed_split(tmp_path):
  np.savez(tmp_path / 'x.npz', images=np.zeros((8, 8, 8, 3), np.uint8), labels=np.arange(8) % 4)
  source = sources.open_split(f'npz:{tmp_path}/x.npz', 'train')
  source.num_classes = 3  # as if the dataset's metadata declared fewer classes than its labels use
  config = make_config(f'npz:{tmp_path}/x.npz', batch=8)
  config.dataset.pipeline = 'grain'
  data = pipelines.make_train_data(config, parallel.make_mesh(), source)
  with pytest.raises(UserError, match='has label 3, outside \\[0, 3\\)'):
    try:
      next(data)
    finally:
      data.close()
  config.dataset.pipeline = 'device'
  with pytest.raises(UserError, match='has label 3, outside \\[0, 3\\)'):
    pipelines.make_train_data(config, parallel.make_mesh(), source)


def test_device_prefetcher_propagates_errors_and_stops():
  def host():
    yield 1
    raise RuntimeError('boom')
  prefetcher = streaming.DevicePrefetcher(host(), lambda x: x * 10, size=2)
  assert next(prefetcher) == 10
  with pytest.raises(RuntimeError, match='boom'):
    next(prefetcher)
  with pytest.raises(StopIteration):
    next(prefetcher)
  prefetcher.close()


def test_default_config_sections_are_the_input_option_defaults():
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'default.py'))
  assert config.dataset.pipeline == pipelines.InputOptions.pipeline
  for section in ('augment', 'input'):
    assert {key: config[section][key] for key in pipelines.option_defaults(section)} == (
        pipelines.option_defaults(section))
  assert set(config.input) == set(pipelines.option_defaults('input'))
  # Read back: the defaults, with the worker counts resolved (-1: one per CPU core but one).
  workers = pipelines.default_num_workers()
  assert pipelines.input_options(config) == dataclasses.replace(
      pipelines.InputOptions(), num_workers=workers, eval_num_workers=workers)


def test_command_line_input_options_keep_their_types():
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'default.py'), [
      ('input.mean', '125,123,114'), ('input.std', '63,62,66.5'), ('input.area_range', '0.25,1'),
      ('input.scale_range', '240,400'), ('input.color_jitter', '0.4'), ('input.num_workers', '0'),
      ('dataset.pipeline', 'grain'), ('augment.crop_padding', '2')])
  options = pipelines.input_options(config)
  assert options.mean == (125.0, 123.0, 114.0) and all(isinstance(v, float) for v in options.mean + options.std)
  assert options.area_range == (0.25, 1.0) and all(isinstance(v, float) for v in options.area_range)
  assert options.scale_range == (240, 400) and all(isinstance(v, int) for v in options.scale_range)
  assert options.color_jitter == 0.4 and options.num_workers == options.eval_num_workers == 0
  assert options.pipeline == 'grain' and options.crop_padding == 2
  config.dataset.pipeline = 'gpu'
  with pytest.raises(UserError, match="unknown config.dataset.pipeline 'gpu'; choose auto, device, grain"):
    pipelines.input_options(config)


def test_normalization_statistics():
  images = np.random.default_rng(0).integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
  as_float = images.astype(np.float64)
  mean, std = normalization.statistics(images, 'per_channel')
  assert mean == tuple(float(m) for m in as_float.mean(axis=(0, 1, 2)))
  assert std == tuple(float(s) for s in as_float.std(axis=(0, 1, 2)))
  assert normalization.statistics(np.zeros((2, 3, 3, 1), np.uint8), 'per_channel') == ((0.0,), (1.0,))
  # The mean image: nested tuples (hashable) of the float32 values, as Python floats.
  mean_image, unit = normalization.statistics(images, 'per_pixel_mean')
  expected = as_float.mean(axis=0).astype(np.float32)
  assert unit == (1.0,) and np.array_equal(np.asarray(mean_image, np.float32), expected)
  assert mean_image[1][2] == tuple(float(v) for v in expected[1, 2])
  hash(mean_image)  # a static attribute of the jitted model: must be hashable
  with pytest.raises(UserError, match='unknown normalization'):
    normalization.statistics(images, 'zca')


def test_the_data_layer_imports_no_model():
  script = (
      'import sys, numpy as np\n'
      'from resnet_jax.data import augment, host_pipeline, normalization, pipelines, sources, streaming, throughput\n'
      "normalization.statistics(np.zeros((2, 4, 4, 3), np.uint8), 'per_pixel_mean')\n"
      "banned = ('flax', 'resnet_jax.classifier', 'resnet_jax.models', 'resnet_jax.train', 'resnet_jax.evaluate',\n"
      "          'resnet_jax.checkpoints', 'resnet_jax.state')\n"
      'print(sorted(m for m in sys.modules if m.startswith(banned)))\n')
  result = run_python(['-c', script])
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '[]'
