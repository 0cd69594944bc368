"""He et al. 2016's propagation analysis: || d loss / d x_l || at every residual unit's input, against depth."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.analysis import propagation
from resnet_jax.errors import UserError
from resnet_jax.models import create_model


def _images(n=12, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, size, size, 3)).astype(np.float32), rng.integers(0, 10, size=n)


def test_identity_units_pass_the_gradient_unchanged():
  # Pre-activation units with every residual branch removed: x_{l+1} = x_l inside a stage (He et al. 2016 Eq. 5
  # with F = 0), so || d loss / d x_l || is the same for every unit of a stage, and batches add up.
  model = create_model('cifar_preact_resnet20', num_classes=10, stage_widths=(4, 8, 8),
                       lesioned_units=tuple(range(9)))
  images, labels = _images()
  variables = model.init(jax.random.key(0), jnp.asarray(images[:1]), train=False)
  result = propagation.gradient_by_unit(model, variables, images, labels, batch_size=5)
  assert result.grad_norm.shape == (9,) and result.stages == [1, 1, 1, 2, 2, 2, 3, 3, 3]
  assert result.num_examples == 12 and np.all(result.grad_norm > 0)
  for stage in (1, 2, 3):
    norms = result.grad_norm[np.array(result.stages) == stage]
    # the first unit of stages 2 and 3 downsamples (its shortcut is not an identity): compare units 2..3
    np.testing.assert_allclose(norms[1:], norms[-1], rtol=1e-5)
  assert result.relative_to_last[-1] == pytest.approx(1.0)
  # the same numbers in one batch
  whole = propagation.gradient_by_unit(model, variables, images, labels, batch_size=64)
  np.testing.assert_allclose(whole.grad_norm, result.grad_norm, rtol=1e-5)


def test_scanned_units_are_a_clear_error():
  model = create_model('cifar_preact_resnet20', num_classes=10, stage_widths=(4, 8, 8), scan_units=True)
  images, labels = _images(2)
  with pytest.raises(UserError, match='scan_units=False'):
    propagation.gradient_by_unit(model, None, images, labels)


def test_propagation_of_a_checkpoint_compared_with_another_run(run_copy, cli):
  """`python -m resnet_jax.analysis --study propagation` (in-process) on a copy of the session's tiny run."""
  status, stdout, stderr = cli('analysis/__main__', ['--workdir', run_copy, '--study', 'propagation', '--limit', '64',
                                                     '--compare', run_copy])
  assert status == 0, stderr[-3000:]
  out = os.path.join(run_copy, 'analysis')
  single = json.load(open(os.path.join(out, 'propagation.json')))
  assert single['num_examples'] == 64 and len(single['units']) == 9
  assert [u['stage'] for u in single['units']] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
  assert all(u['grad_norm'] > 0 for u in single['units'])
  compare = json.load(open(os.path.join(out, 'propagation_compare.json')))
  assert len(compare['runs']) == 2 and compare['runs'][0]['label'] != compare['runs'][1]['label']
  assert [u['grad_norm'] for u in compare['runs'][0]['units']] == [u['grad_norm'] for u in single['units']]
  for name in ('propagation.png', 'propagation_compare.png'):
    assert os.path.getsize(os.path.join(out, name)) > 1000
  assert 'ratio first/last' in stdout


def test_at_init_differs_from_the_trained_network(trained):
  from resnet_jax import checkpoints  # pylint: disable=g-import-not-at-top
  run = checkpoints.load(trained)
  images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 1)).astype(np.uint8)
  labels = np.arange(16) % 10
  at_init = propagation.gradient_by_unit(
      run.model, run.model.init(jax.random.key(0), images[:1], train=False), images, labels)
  trained_result = propagation.gradient_by_unit(run.model, run.variables, images, labels)
  assert not np.allclose(at_init.grad_norm, trained_result.grad_norm)
