"""Learning-rate schedules and optimizer: the papers' recipes, and loud errors for inconsistent ones."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import config as config_lib
from resnet_jax import optim
from resnet_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(REPO, 'configs', 'default.py')


def _config(*overrides):
  return config_lib.build_config(DEFAULT, list(overrides))


def test_cifar_recipe_with_warmup():
  """He et al. 2016 appendix: 0.01 for 400 iterations, then 0.1, /10 at 32k and 48k."""
  schedule = optim.make_schedule(_config(), steps_per_epoch=50_000 / 128, total_steps=64_000)
  expected = {0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_imagenet_boundaries_in_epochs():
  config = _config(('schedule.boundaries_steps', 'None'), ('schedule.boundaries_epochs', '30,60'),
                   ('schedule.warmup', 'none'), ('batch_size', '256'))
  steps_per_epoch = 1_281_167 / 256
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps=int(90 * steps_per_epoch))
  boundary = round(30 * steps_per_epoch)
  assert float(schedule(boundary - 1)) == pytest.approx(0.1)
  assert float(schedule(boundary)) == pytest.approx(0.01)
  assert float(schedule(round(60 * steps_per_epoch))) == pytest.approx(0.001)


def test_linear_warmup_and_cosine_and_batch_scaling():
  config = _config(('schedule.name', 'cosine'), ('schedule.warmup', 'linear'), ('schedule.warmup_steps', '10'),
                   ('schedule.reference_batch_size', '256'), ('batch_size', '512'))
  schedule = optim.make_schedule(config, 10.0, total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.1)       # half of 0.2 (= 0.1 * 512 / 256)
  assert float(schedule(10)) == pytest.approx(0.2)
  assert float(schedule(60)) == pytest.approx(0.1, rel=1e-5)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize('overrides,message', [
    ([('schedule.boundaries_steps', '48000,32000')], 'strictly increasing'),
    ([('schedule.boundaries_steps', '100,100')], 'strictly increasing'),
    ([('schedule.warmup_steps', '64000')], 'warm-up of 64000 steps is not shorter than training'),
    ([('schedule.name', 'exponential')], "unknown schedule 'exponential'"),
    ([('schedule.warmup', 'gradual')], "unknown warmup 'gradual'"),
])
def test_inconsistent_schedule_is_one_clear_error(overrides, message):
  with pytest.raises(UserError, match=message):
    optim.make_schedule(_config(*overrides), 50_000 / 128, 64_000)


def test_unknown_optimizer_and_decay_target():
  with pytest.raises(UserError, match="unknown optimizer 'adagrad'"):
    optim.make_optimizer(_config(('optimizer.name', 'adagrad')), lambda s: 0.1)
  with pytest.raises(UserError, match='weight_decay_on'):
    optim.make_optimizer(_config(('optimizer.weight_decay_on', 'bn')), lambda s: 0.1)


def test_sgd_is_torch_sgd_with_coupled_l2():
  """p <- p - lr * v, v <- m v + (g + wd p): the papers' (Caffe/Torch) SGD."""
  config = _config(('optimizer.weight_decay', '0.1'))
  tx = optim.make_optimizer(config, lambda step: 0.5)
  params = {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([3.0])}
  grads = {'kernel': jnp.array([0.5, 0.5]), 'bias': jnp.array([1.0])}
  state = tx.init(params)
  p, v = jax.tree.map(np.asarray, params), jax.tree.map(np.zeros_like, jax.tree.map(np.asarray, params))
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k in p:
      v[k] = 0.9 * v[k] + np.asarray(grads[k]) + 0.1 * p[k]
      p[k] = p[k] - 0.5 * v[k]
  for k in p:
    np.testing.assert_allclose(params[k], p[k], rtol=1e-6)


def test_weight_decay_on_kernels_skips_bn_and_biases():
  mask = optim.weight_decay_mask('kernels')({'conv': {'kernel': 1, 'bias': 2}, 'bn': {'scale': 3, 'bias': 4}})
  assert mask == {'conv': {'kernel': True, 'bias': False}, 'bn': {'scale': False, 'bias': False}}
