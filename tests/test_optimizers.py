"""The modern recipes' optimisers (config.optimizer.name lamb / lars / adamw): one update against a NumPy
re-statement, with weight decay (and for LAMB/LARS the trust ratio) on the kernels only."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import optim

RNG = np.random.default_rng(0)
PARAMS = {'conv': {'kernel': RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)},
          'bn': {'scale': RNG.normal(size=(4,)).astype(np.float32), 'bias': RNG.normal(size=(4,)).astype(np.float32)}}
GRADS = {'conv': {'kernel': RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)},
         'bn': {'scale': RNG.normal(size=(4,)).astype(np.float32), 'bias': RNG.normal(size=(4,)).astype(np.float32)}}
LR, WEIGHT_DECAY = 0.5, 0.1
DECAYED = {('conv', 'kernel')}  # weight_decay_on='kernels'


def optimizer_config(name, **overrides):
  return ml_collections.ConfigDict({'name': name, 'momentum': 0.9, 'nesterov': False, 'weight_decay': WEIGHT_DECAY,
                                    'weight_decay_on': 'kernels', 'betas': (0.9, 0.999), 'eps': None,
                                    'trust_coefficient': 0.001, 'clip_grad_norm': None, **overrides})


def numpy_update(name, params, grads, eps):
  """The first update of each parameter (float64), as the papers and optax's documentation state it."""
  updates = {}
  for group, leaves in params.items():
    for leaf, p in leaves.items():
      p, g = p.astype(np.float64), grads[group][leaf].astype(np.float64)
      decayed = (group, leaf) in DECAYED
      wd = WEIGHT_DECAY if decayed else 0.0
      if name in ('lamb', 'adamw'):  # first step: bias-corrected moments are g and g^2
        adam = g / (np.abs(g) + eps)
        u = adam + wd * p
        if name == 'lamb' and decayed:  # trust ratio ||p|| / ||u|| where the decay applies (timm's Lamb)
          u = u * np.linalg.norm(p) / np.linalg.norm(u)
        updates[(group, leaf)] = -LR * u
      else:  # lars: u = g + wd p, scaled by eta ||p|| / (||u|| + eps) where masked; momentum trace starts at u
        u = g + wd * p
        if decayed:
          u = u * 0.001 * np.linalg.norm(p) / (np.linalg.norm(u) + eps)
        updates[(group, leaf)] = -LR * u
  return updates


@pytest.mark.parametrize('name, eps', [('lamb', 1e-6), ('lars', 0.0), ('adamw', 1e-8)])
def test_one_update_matches_numpy(name, eps):
  tx = optim.update_rule(optimizer_config(name), lambda count: LR)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  for (group, leaf), expected in numpy_update(name, PARAMS, GRADS, eps).items():
    np.testing.assert_allclose(updates[group][leaf], expected, rtol=2e-5, atol=1e-7, err_msg=f'{name} {group}/{leaf}')


def test_gradient_norm_clip_comes_first():
  tx = optim.update_rule(optimizer_config('sgd', momentum=0.0, weight_decay=0.0, clip_grad_norm=1.0),
                         lambda count: 1.0)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  norm = np.sqrt(sum(np.sum(np.square(g)) for leaves in GRADS.values() for g in leaves.values()))
  np.testing.assert_allclose(updates['conv']['kernel'], -GRADS['conv']['kernel'] / norm, rtol=1e-5)


def test_unknown_optimizer_is_refused():
  with pytest.raises(optim.UserError, match="unknown optimizer 'adam'; choose one of sgd, lamb, lars, adamw"):
    optim.update_rule(optimizer_config('adam'), lambda count: LR)
