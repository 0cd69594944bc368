"""The one data order (resnet_jax.data.order): the same batches on the device-resident and the streaming path, from
NumPy and from jax.numpy, and what a saved stream position may resume."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import data_helpers as testing
from resnet_jax import parallel
from resnet_jax.data import order
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.errors import UserError


def test_epoch_keys_are_jax_random_bits_of_the_device_resident_order():
  """The Threefry written out in integer ops gives jax.random's bits (the order of earlier versions, bitwise)."""
  for seed in (0, 5, 12345, 2**31 - 1):
    base = jax.random.fold_in(jax.random.key(seed), order.DATA_ORDER_STREAM)
    expected = jax.vmap(lambda epoch: jax.random.bits(jax.random.fold_in(base, epoch), (order.FEISTEL_ROUNDS,),
                                                      jnp.uint32))(jnp.arange(40))
    np.testing.assert_array_equal(order.epoch_keys(seed, np.arange(40)), np.asarray(expected))
    traced = jax.jit(lambda epoch, seed=seed: order.epoch_keys(seed, epoch, jnp))(jnp.arange(40))
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(expected))


def test_numpy_and_jax_numpy_give_the_same_order_and_every_epoch_is_a_permutation():
  positions = np.arange(3 * 1797)
  host = order.example_indices(7, 1797, positions)
  device = jax.jit(lambda q: order.example_indices(7, 1797, q, jnp))(jnp.asarray(positions, jnp.int32))
  np.testing.assert_array_equal(host, np.asarray(device))
  epochs = host.reshape(3, 1797)
  assert all(sorted(epoch) == list(range(1797)) for epoch in epochs)
  assert (epochs[0] != epochs[1]).mean() > 0.99  # a fresh order every epoch


def _config(pipeline, repeats=1):
  return ml_collections.ConfigDict({
      'seed': 3, 'batch_size': 8,
      'dataset': {'name': 'npz:IDS', 'pipeline': pipeline},
      'augment': {'crop_padding': 0, 'flip': False, 'normalization': 'per_channel', 'pad_after_normalize': False},
      'input': {'train_crop': 'none', 'num_workers': 0}, 'repeated_augmentation': repeats})


@pytest.mark.parametrize('repeats', [1, 4])
def test_same_seed_same_examples_per_step_on_the_device_resident_and_the_streaming_path(tmp_path, repeats):
  """2 devices in this process (2 processes: tests/test_data_multiprocess.py). 20 examples, batch 8: batches
  straddle epochs. With repeated augmentation (4 copies): 2 distinct examples per batch, each in both devices'
  halves, on both paths."""
  np.savez(tmp_path / 'ids_train.npz', images=testing.indexed_images(20, (4, 4, 3)), labels=np.arange(20) % 4)
  source = sources.open_split(f'npz:{tmp_path}/ids', 'train')
  mesh = parallel.make_mesh()
  resident = pipelines.make_train_data(_config('device', repeats), mesh, source)
  streamed = pipelines.make_train_data(_config('grain', repeats), mesh, source, start_step=2)
  try:
    for step in range(2, 8):
      batch = jax.jit(resident.batch)(resident.arrays, jnp.int32(step))
      resident_ids = testing.image_ids(np.asarray(batch['image']))
      np.testing.assert_array_equal(resident_ids, np.asarray(resident.batch_indices(jnp.int32(step))))
      np.testing.assert_array_equal(testing.image_ids(np.asarray(next(streamed)['image'])), resident_ids)
      if repeats > 1:  # (without repeats a batch straddling two epochs may hold an example twice)
        assert all(np.unique(resident_ids, return_counts=True)[1] % repeats == 0)
        assert set(resident_ids[:4]) == set(resident_ids[4:])  # each device's half holds every example
  finally:
    streamed.close()


def test_repeated_augmentation_repeats_each_example_and_keeps_the_epoch_a_permutation():
  # Batch 12, 3 copies: 4 distinct examples per batch at slots i, i + 4, i + 8; the distinct examples of
  # consecutive batches walk through one permutation of the 20 examples after another.
  positions = np.arange(0, 12 * 10)
  indices = order.example_indices(5, 20, positions, np, 3, 12).reshape(10, 12)
  np.testing.assert_array_equal(indices[:, :4], indices[:, 4:8])
  np.testing.assert_array_equal(indices[:, :4], indices[:, 8:])
  distinct = indices[:, :4].reshape(-1)
  np.testing.assert_array_equal(np.sort(distinct[:20]), np.arange(20))
  np.testing.assert_array_equal(distinct, order.example_indices(5, 20, np.arange(40)))
  traced = jax.jit(lambda q: order.example_indices(5, 20, q, jnp, 3, 12))(jnp.asarray(positions, jnp.int32))
  np.testing.assert_array_equal(np.asarray(traced).reshape(10, 12), indices)
  # RSB's 2048 / 3 in small: batch 8, 3 copies: 3 distinct examples, the last one twice (its third copy cut).
  cut = order.example_indices(5, 20, np.arange(16), np, 3, 8).reshape(2, 8)
  np.testing.assert_array_equal(cut[:, :3], cut[:, 3:6])
  np.testing.assert_array_equal(cut[:, :2], cut[:, 6:])
  np.testing.assert_array_equal(cut[:, :3].reshape(-1), order.example_indices(5, 20, np.arange(6)))
  with pytest.raises(UserError, match='is larger than config.batch_size=12'):
    order.check_repeats(13, 12)


def test_the_streamed_batches_of_a_dispatch_are_one_program_input(tmp_path):
  """program_inputs stacks the batches of several steps; batch_in_program picks each one inside the program."""
  np.savez(tmp_path / 'ids_train.npz', images=testing.indexed_images(20, (4, 4, 3)), labels=np.arange(20) % 4)
  source = sources.open_split(f'npz:{tmp_path}/ids', 'train')
  mesh = parallel.make_mesh()
  one, several = (pipelines.make_train_data(_config('grain'), mesh, source) for _ in range(2))
  try:
    singles = [one.program_inputs(step, 1) for step in range(3)]
    stacked = several.program_inputs(0, 3)
    assert stacked['image'].shape == (3, 8, 4, 4, 3) and several.get_state()['step'] == 3
    pick = jax.jit(several.batch_in_program)
    for index, single in enumerate(singles):
      np.testing.assert_array_equal(np.asarray(pick(stacked, jnp.int32(index), jnp.int32(index))['image']),
                                    np.asarray(single['image']))
    with pytest.raises(ValueError, match='at step 3, not 5'):
      several.program_inputs(5, 1)
  finally:
    one.close()
    several.close()


def test_a_saved_position_resumes_exactly_or_is_refused():
  state = order.position_state(step=7, seed=3, global_batch=8, num_examples=20)
  assert order.resume_step(state, seed=3, global_batch=8, num_examples=20) == 7
  with pytest.raises(UserError, match='made with seed=3, this run has 4'):
    order.resume_step(state, seed=4, global_batch=8, num_examples=20)
  # A streaming run of an earlier version (a NumPy permutation per epoch): mid-epoch it cannot continue exactly.
  old = {'version': 1, 'step': 7, 'seed': 3, 'global_batch': 8, 'num_examples': 20}
  with pytest.raises(UserError, match=r'saved in the middle of an epoch by a streaming pipeline of an earlier'):
    order.resume_step(old, seed=3, global_batch=8, num_examples=20)
  assert order.resume_step(dict(old, step=5), seed=3, global_batch=8, num_examples=20) == 5  # 40 = 2 epochs
  with pytest.raises(UserError, match='version 9 is not known'):
    order.resume_step(dict(state, version=9), seed=3, global_batch=8, num_examples=20)


@pytest.mark.parametrize('n', [1, 2, 3, 7, 64, 1000, 50_000])
def test_keyed_permutation_is_a_bijection_and_looks_random(n):
  keys = jax.random.bits(jax.random.key(n), (4,), jnp.uint32)
  perm = np.asarray(jax.jit(lambda i: order.feistel_permutation(i, n, keys, jnp))(jnp.arange(n)))
  assert sorted(perm) == list(range(n))
  if n >= 1000:
    # Not the identity or a shift, and neighbours are far apart on average (no local structure).
    assert np.mean(perm == np.arange(n)) < 0.01
    assert abs(np.mean(np.abs(np.diff(perm))) / n - 1 / 3) < 0.03
    other = np.asarray(order.feistel_permutation(jnp.arange(n), n, keys + 1, jnp))
    assert np.mean(perm == other) < 0.01  # different keys (epochs): different orders


def test_pad_crop_and_flip_give_identical_images_on_both_pipelines_for_the_same_key(tmp_path):
  """One implementation of the device operations: the streamed batch of a step, augmented with the step's key, is
  the device-resident one, pixel for pixel (padding after normalisation included)."""
  np.savez(tmp_path / 'ids_train.npz', images=testing.indexed_images(20, (8, 8, 3)), labels=np.arange(20) % 4)
  source = sources.open_split(f'npz:{tmp_path}/ids', 'train')
  mesh = parallel.make_mesh()
  configs = [_config(pipeline) for pipeline in ('device', 'grain')]
  for config in configs:
    config.augment.update(crop_padding=2, flip=True, pad_after_normalize=True)
    config.input.train_crop = 'auto'
  resident, streamed = (pipelines.make_train_data(config, mesh, source) for config in configs)
  try:
    assert streamed.device_augment == resident.device_augment and resident.device_augment.crop_padding == 2
    augment = {id(data): jax.jit(data.device_augment) for data in (resident, streamed)}
    flipped = 0
    for step in range(3):
      key = jax.random.key(step)
      from_resident = augment[id(resident)](key, jax.jit(resident.batch)(resident.arrays, jnp.int32(step))['image'])
      from_stream = augment[id(streamed)](key, next(streamed)['image'])
      np.testing.assert_array_equal(np.asarray(from_stream), np.asarray(from_resident))
      flipped += int(np.asarray(resident.device_augment.draw(key, 8)['flip']).sum())
    assert 0 < flipped < 24  # the flip is on, and not for every image
  finally:
    streamed.close()
