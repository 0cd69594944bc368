"""The moving average of the weights (config.ema; "ResNet strikes back", torchvision's v2 recipe): its update
rule, its evaluation beside the weights, its checkpoint and a bitwise resume."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import conftest
from resnet_jax import checkpoints
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import state as state_lib
from resnet_jax import train


def tiny_config(**overrides):
  """The suite's tiny quickstart with an EMA (timm's warm-up, a decay that moves within 12 steps)."""
  return conftest.tiny_config(**{'ema.decay': '0.9', 'ema.warmup': 'True', 'model.stage_sizes': '(1,1,1)',
                                 **overrides})


def ema_config(decay, every_steps=1, warmup=False):
  return ml_collections.ConfigDict({'decay': decay, 'every_steps': every_steps, 'warmup': warmup})


@pytest.mark.parametrize('warmup', [False, True])
def test_update_is_decay_times_average_plus_rest_times_weights(warmup):
  """ema = d * ema + (1 - d) * weights, weights and BatchNorm statistics alike, every `every_steps` steps;
  with warm-up d = min(decay, 1 - (1 + t)^(-2/3)) for the t-th update after the first (timm ModelEmaV3)."""
  config = ema_config(0.5, every_steps=2, warmup=warmup)
  weights = {'params': {'w': jnp.full((3,), 4.0)}, 'batch_stats': {'mean': jnp.full((2,), -2.0)}}
  average = {'params': {'w': jnp.zeros((3,))}, 'batch_stats': {'mean': jnp.zeros((2,))}}
  for step, updates in ((2, 1), (4, 2), (6, 3)):
    state = state_lib.TrainState(step=jnp.int32(step), params=weights['params'],
                                 batch_stats=weights['batch_stats'], opt_state=(), ema=average)
    decay = min(0.5, 1 - (1 + (updates - 1)) ** (-2 / 3)) if warmup else 0.5
    new = train.updated_ema(state, config)
    np.testing.assert_allclose(new['params']['w'], decay * average['params']['w'] + (1 - decay) * 4.0, rtol=1e-6)
    np.testing.assert_allclose(new['batch_stats']['mean'], decay * average['batch_stats']['mean'] - (1 - decay) * 2,
                               rtol=1e-6)
    skipped = train.updated_ema(state.replace(step=jnp.int32(step + 1)), config)  # not a multiple of 2
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), skipped, average))
    average = new
  assert float(train.ema_decay(jnp.int32(1), ema_config(0.9, warmup=True))) == 0.0  # the first update copies


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """`whole`: 12 steps with an EMA; `split`: the same, stopped at step 6 and resumed; `at_six`: a copy of the
  split run at step 6."""
  root = tmp_path_factory.mktemp('ema')
  whole, split, at_six = str(root / 'whole'), str(root / 'split'), str(root / 'at_six')
  train.train_and_evaluate(tiny_config(), whole)
  train.train_and_evaluate(tiny_config(total_steps='6', eval_every_steps='6'), split)
  shutil.copytree(split, at_six)
  train.train_and_evaluate(tiny_config(), split)
  return {'whole': whole, 'split': split, 'at_six': at_six}


def test_evaluation_reports_the_weights_and_their_average(runs):
  lines = [json.loads(line) for line in open(os.path.join(runs['whole'], 'metrics.jsonl'))]
  final = [line for line in lines if 'test_accuracy' in line][-1]
  assert {'ema_test_accuracy', 'ema_test_error', 'ema_test_loss'} <= set(final)
  assert final['ema_test_loss'] != final['test_loss']
  # --mode eval takes the moving average by default, the weights with config.ema.use=false: each gives the
  # loss the training run recorded for it.
  averaged = evaluate.evaluate_checkpoint(runs['whole'])
  raw = evaluate.evaluate_checkpoint(runs['whole'], config=tiny_config(**{'ema.use': 'False'}))
  assert averaged['ema'] and not raw['ema']
  assert averaged['test_loss'] == pytest.approx(final['ema_test_loss'], rel=1e-6)
  assert raw['test_loss'] == pytest.approx(final['test_loss'], rel=1e-6)


def test_load_returns_the_average_when_the_run_has_one(runs):
  loaded, weights = checkpoints.load(runs['whole']), checkpoints.load(runs['whole'], ema=False)
  assert loaded.ema and not weights.ema
  differs = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), loaded.variables,
                         weights.variables)
  assert any(jax.tree.leaves(differs['params'])) and any(jax.tree.leaves(differs['batch_stats']))


def test_resume_with_an_average_is_bitwise(runs):
  for ema in (True, False):
    whole, split = checkpoints.load(runs['whole'], ema=ema), checkpoints.load(runs['split'], ema=ema)
    assert split.step == whole.step == 12
    jax.tree.map(np.testing.assert_array_equal, split.variables, whole.variables)


def test_dropping_the_average_on_resume_says_so(runs, capsys):
  with pytest.raises(config_lib.UserError, match='ema.decay'):  # a change of recipe needs the flag
    train.train_and_evaluate(tiny_config(total_steps='8', **{'ema.decay': '0.0'}), runs['at_six'])
  train.train_and_evaluate(tiny_config(total_steps='8', **{'ema.decay': '0.0'}), runs['at_six'],
                           allow_config_change=True)
  assert "moving average of the weights is dropped" in capsys.readouterr().err
  assert not checkpoints.load(runs['at_six']).ema
  final = [json.loads(line) for line in open(os.path.join(runs['at_six'], 'metrics.jsonl'))][-1]
  assert 'test_accuracy' in final and 'ema_test_accuracy' not in final


def test_turning_the_average_on_when_resuming_starts_it_from_the_weights(run_copy, capsys):
  """A run saved without an average, resumed with one (--allow_config_change): the average starts from the
  checkpoint's weights, and the run says so."""
  on = {'total_steps': '14', 'ema.decay': '0.9'}
  train.train_and_evaluate(conftest.tiny_config(**on), run_copy, allow_config_change=True)
  assert 'it starts from the step-12 weights' in capsys.readouterr().err
  final = [json.loads(line) for line in open(os.path.join(run_copy, 'metrics.jsonl'))][-1]
  assert final['step'] == 14 and 'ema_test_accuracy' in final
  assert checkpoints.load(run_copy).ema


@pytest.mark.parametrize('field, value', [('ema.decay', '1.0'), ('ema.decay', '-0.5'), ('ema.every_steps', '0')])
def test_an_average_nobody_meant_is_refused(field, value):
  with pytest.raises(config_lib.UserError, match=f'config.{field}={value} is out of range'):
    config_lib.validate(tiny_config(**{field: value}))
