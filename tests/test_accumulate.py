"""Gradient accumulation (config.accumulate_steps, issue 24): k micro-batches of b examples step the optimizer as
one batch of k * b does, for a model without BatchNorm, through the product's own train step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import tiny_config
from resnet_jax import state as state_lib
from resnet_jax import train
from resnet_jax.data import augment as augment_lib


class _NoNormNet(nn.Module):
  """A conv net without BatchNorm: its gradients are a mean over examples, whatever the micro-batches."""

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = nn.relu(nn.Conv(4, (3, 3))(images.astype(jnp.float32) / 255.0))
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def _one_step(accumulate_steps, augment, batch, **overrides):
  config = tiny_config(accumulate_steps=str(accumulate_steps), label_smoothing='0.1', **overrides)
  model = _NoNormNet()
  tx = optax.sgd(0.5, momentum=0.9)
  variables = model.init(jax.random.key(0), batch['image'][:1])
  state = state_lib.from_variables(variables, tx)
  step = jax.jit(train.make_train_step(model, tx, augment, config))
  return step(state, batch)


def _batch(size=16):
  rng = np.random.default_rng(0)
  return {'image': jnp.asarray(rng.integers(0, 256, (size, 6, 6, 3), np.uint8)),
          'label': jnp.asarray(rng.integers(0, 3, (size,), np.int32))}


def test_micro_batches_equal_one_batch_without_batch_norm():
  plain = augment_lib.SmallImageAugment(crop_padding=0, flip=False)
  batch = _batch()
  whole, whole_metrics = _one_step(1, plain, batch)
  for steps in (4,):
    accumulated, metrics = _one_step(steps, plain, batch)
    assert int(accumulated.step) == 1  # one optimizer step, whatever k
    for name in ('loss', 'correct', 'examples'):
      np.testing.assert_allclose(metrics[name], whole_metrics[name], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), accumulated.params,
                 whole.params)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), whole.params,
                                       _one_step(1, plain, {**batch, 'label': (batch['label'] + 1) % 3})[0].params))
  assert max(moved) > 1e-3  # the comparison can fail: other labels give other parameters


def test_micro_batches_keep_to_each_devices_block():
  # 2 devices x 8 examples, k = 2: each micro-batch takes 4 examples of device 0's block (0-7), 4 of device 1's.
  micro = train.split_micro_batches(jnp.arange(16), 2)
  np.testing.assert_array_equal(micro, [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]])
  np.testing.assert_array_equal(train.merge_micro_batches(micro), np.arange(16))


def test_mixup_is_drawn_per_micro_batch():
  # Each micro-batch is mixed on its own (timm mixes each loader batch, i.e. each GPU's batch): with mixup on,
  # k = 2 draws its own lambdas, so it is not the same step as one batch of 2b (mixed with one lambda).
  mixing = augment_lib.SmallImageAugment(crop_padding=0, flip=False, mixup_alpha=0.4, cutmix_alpha=1.0)
  batch = _batch()
  _, whole = _one_step(1, mixing, batch)
  _, accumulated = _one_step(2, mixing, batch)
  assert np.isfinite(accumulated['loss']) and bool(accumulated['finite'])
  assert abs(float(accumulated['loss']) - float(whole['loss'])) > 1e-4
