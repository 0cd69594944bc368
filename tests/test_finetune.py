"""Fine-tuning (resnet_jax.finetune): init_from a workdir, a converted directory or a weight file; frozen parts
(parameters and BatchNorm statistics bitwise unchanged); per-group learning rates; one-line errors before
anything is written."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from conftest import run_python
from resnet_jax import checkpoints
from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import convert
from resnet_jax import finetune
from resnet_jax import models
from resnet_jax import optim
from resnet_jax import train
from resnet_jax.errors import UserError
from resnet_jax.models import counting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')
DIGITS = os.path.join(REPO, 'resnet_jax', 'data', 'digits.npz')
WIDTHS = '(8,16,16)'


def tiny_config(**overrides):
  """The suite's tiny quickstart (conftest.tiny_config: digits, pre-activation ResNet-20 at widths (8,16,16)),
  4 steps: the session run's train step, compiled once for the suite."""
  return conftest.tiny_config(**{'total_steps': '4', 'log_every_steps': '2', 'eval_every_steps': '4',
                                 'checkpoint_every_steps': '4', **overrides})


def flat(variables):
  return {(collection, optim.parameter_path(path)): np.asarray(leaf) for collection, tree in variables.items()
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A digits run (10 classes), 4 steps: the source of every fine-tuning test."""
  workdir = str(tmp_path_factory.mktemp('pretrained'))
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def five_digits(tmp_path_factory):
  """npz:PATH of the digits 0-4: another task, with 5 classes."""
  with np.load(DIGITS) as digits:
    keep = digits['labels'] < 5
    path = str(tmp_path_factory.mktemp('data') / 'five.npz')
    np.savez(path, images=digits['images'][keep], labels=digits['labels'][keep], num_classes=5)
  return f'npz:{path}'


def frozen(path):
  return path.startswith(('stem_', 'stage1_'))


def test_frozen_parts_and_their_statistics_stay_bitwise_and_the_new_head_is_fresh(pretrained, five_digits, tmp_path):
  config = tiny_config(**{'dataset.name': five_digits, 'total_steps': '3', 'init_from': pretrained,
                          'freeze': 'stem,stage1', 'optimizer.lr_multipliers': 'head=10'})
  model = classifier.model_from_config(config, 5)
  init = finetune.load_initialization(config, model, (8, 8, 1))
  assert sorted(init.fresh) == [('params', 'head/bias'), ('params', 'head/kernel')]  # 10 -> 5 classes

  train.train_and_evaluate(config, str(tmp_path / 'ft'))
  source, tuned = flat(checkpoints.load(pretrained).variables), flat(checkpoints.load(str(tmp_path / 'ft')).variables)
  assert tuned[('params', 'head/kernel')].shape == (16, 5)
  assert any(frozen(path) for _, path in tuned) and any(c == 'batch_stats' and frozen(p) for c, p in tuned)
  for key, value in tuned.items():
    if key[1].startswith('head/'):
      continue
    if frozen(key[1]):  # parameters and BatchNorm statistics
      np.testing.assert_array_equal(value, source[key], err_msg=str(key))
    else:
      assert not np.array_equal(value, source[key]), key


def test_without_freeze_frozen_stats_frozen_batch_norms_update_their_statistics_and_a_rerun_resumes(
    pretrained, tmp_path):
  source_copy = str(tmp_path / 'source')
  shutil.copytree(pretrained, source_copy)
  workdir = str(tmp_path / 'ft')
  overrides = {'total_steps': '2', 'init_from': source_copy, 'freeze': 'stem,stage1',
               'batch_norm.freeze_frozen_stats': 'false'}
  config = tiny_config(**overrides)
  model = classifier.model_from_config(config, 10)
  assert finetune.load_initialization(config, model, (8, 8, 1)).fresh == []  # same classes: the head is copied
  train.train_and_evaluate(config, workdir)
  source, tuned = flat(checkpoints.load(pretrained).variables), flat(checkpoints.load(workdir).variables)
  for key, value in tuned.items():
    if key[0] == 'params' and frozen(key[1]):
      np.testing.assert_array_equal(value, source[key], err_msg=str(key))
    else:  # everything else trains, the frozen parts' BatchNorm statistics included
      assert not np.array_equal(value, source[key]), key

  # Once the workdir has its own checkpoint, init_from is never read again (here: it no longer exists).
  shutil.rmtree(source_copy)
  train.train_and_evaluate(tiny_config(**{**overrides, 'total_steps': '4'}), workdir)
  assert checkpoints.load(workdir).step == 4


def _random_batch_stats(variables, seed=0):
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  stats = jax.tree.map(lambda v: jax.random.uniform(next(keys), v.shape, minval=0.5, maxval=1.5),
                       variables['batch_stats'])
  return {**variables, 'batch_stats': stats}


@pytest.mark.parametrize('scan_units', [False, True])
def test_frozen_batch_norm_normalises_with_its_running_statistics_in_the_train_step(scan_units):
  scan = {'model.scan_units': str(scan_units)}
  config = tiny_config(freeze='stem,stage1,stage2,stage3', **scan)  # all but the head; stage3 owns final_bn
  model = classifier.model_from_config(config, 10)
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), maxval=255.0)
  variables = _random_batch_stats(model.init(jax.random.key(0), images, train=False))
  logits, updates = finetune.training_apply(model, config)(variables, images, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(logits, model.apply(variables, images, train=False), rtol=1e-6, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, updates['batch_stats'], variables['batch_stats'])

  # Freezing stage1 only: its BatchNorms keep their statistics, the others update theirs.
  config = tiny_config(freeze='stage1', **scan)
  _, updates = finetune.training_apply(model, config)(variables, images, train=True, mutable=['batch_stats'])
  before, after = flat({'batch_stats': variables['batch_stats']}), flat(updates)
  for key in before:
    assert np.array_equal(before[key], after[key]) == key[1].startswith('stage1_'), key


def test_frozen_parameters_get_no_update_nor_weight_decay_and_lr_multipliers_scale_updates():
  config = tiny_config(freeze='stem', **{'optimizer.lr_multipliers': 'head=10,stage1_unit1/conv1=0.5',
                                         'optimizer.momentum': '0', 'optimizer.weight_decay': '0.1'})
  params = {'backbone': {'stem_conv': {'kernel': jnp.ones((3,))}, 'stage1_unit1': {
      'conv1': {'kernel': jnp.ones((3,))}, 'conv2': {'kernel': jnp.ones((3,))}},
      'head': {'kernel': jnp.ones((3,)), 'bias': jnp.ones((3,))}}}
  tx = optim.make_optimizer(config, lambda step: 0.1)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  plain = -0.1 * (1.0 + 0.1)  # -lr * (grad + wd * param)
  expected = {'stem_conv/kernel': 0.0, 'stage1_unit1/conv1/kernel': 0.5 * plain,
              'stage1_unit1/conv2/kernel': plain, 'head/kernel': 10 * plain, 'head/bias': 10 * plain}
  for (_, path), value in flat({'params': updates}).items():
    np.testing.assert_allclose(value, expected[path], rtol=1e-6, err_msg=path)


def test_lr_multipliers_of_a_config_file_round_trip_through_config_json():
  config = tiny_config()
  config.optimizer.lr_multipliers = {'stage.*conv1': 0.5, 'head': 10}
  finetune.check_parameter_groups(config, classifier.model_from_config(config, 10), (8, 8, 1))
  saved = config_lib.from_json(config_lib.to_json(config))
  assert optim.lr_multipliers(saved) == (('stage.*conv1', 0.5), ('head', 10.0))


def test_a_torchvision_file_is_converted_on_the_fly_and_a_new_head_starts_fresh(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  # A resnet18 state dict in torchvision's names and layouts (random values, 1000-class head).
  torch_model = models.create_model('resnet18')
  rng = np.random.default_rng(0)
  state_dict = {}
  for collection, tree in counting.abstract_variables(torch_model, (1, 32, 32, 3)).items():
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      names = (collection,) + tuple(key.key for key in path)
      state_dict[convert.torch_name(names)] = rng.standard_normal(convert.torch_shape(leaf.shape)).astype(np.float32)
  for name in state_dict:  # a variance is never negative: convert refuses such a file as damaged
    if name.endswith('running_var'):
      state_dict[name] = np.abs(state_dict[name])
  file = str(tmp_path / 'resnet18.safetensors')
  safetensors_numpy.save_file(state_dict, file)

  config = tiny_config(**{'model.name': 'resnet18', 'init_from': file})
  del config.model['stage_widths']
  model = classifier.model_from_config(config, 10)
  init = finetune.load_initialization(config, model, (32, 32, 3))
  assert sorted(init.fresh) == [('params', 'head/bias'), ('params', 'head/kernel')]
  np.testing.assert_array_equal(init.values[('params', 'stem_conv/kernel')],
                                state_dict['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(init.values[('batch_stats', 'stage4_unit2/bn2/var')],
                                state_dict['layer4.1.bn2.running_var'])

  config.init_exclude = 'stage4,head'
  init = finetune.load_initialization(config, model, (32, 32, 3))
  assert {path.split('_')[0] for _, path in init.fresh} == {'stage4', 'head/kernel', 'head/bias'}


# ---------------------------------------------------------------------------------------------------------------
# The command line.

QUICK = ['--config', 'configs/quickstart.py', '--config.total_steps=2', '--config.schedule.boundaries_epochs=None',
         '--config.log_every_steps=2', '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
         '--config.batch_size=32', f'--config.model.stage_widths={WIDTHS}']


def test_cli_fine_tunes_from_a_workdir(pretrained, tmp_path):
  workdir = str(tmp_path / 'ft')
  result = run_python(['-m', 'resnet_jax.main', *QUICK, '--workdir', workdir, f'--config.init_from={pretrained}',
                       '--config.freeze=stem,stage1', '--config.optimizer.lr_multipliers=head=10'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'initialised 97 variables from {pretrained} (step 4, cifar_preact_resnet20)' in result.stderr
  assert checkpoints.load(workdir).step == 2


@pytest.mark.parametrize('overrides,message', [
    ({'init_from': '/nonexistent/run'}, 'config.init_from /nonexistent/run does not exist'),
    ({'init_from': 'PRETRAINED', 'model.stage_widths': '(8,16,32)'},
     'config.init_from PRETRAINED (step 4, cifar_preact_resnet20) does not fit cifar_preact_resnet20 '
     '(another architecture?): 0 missing, 0 unexpected and 30 differently shaped variables: '
     'params/final_bn/bias is (16,) there, (32,) here; params/final_bn/scale'),
    ({'init_from': 'PRETRAINED', 'model.name': 'cifar_preact_resnet32'},
     'config.init_from PRETRAINED (step 4, cifar_preact_resnet20) does not fit cifar_preact_resnet32 '
     '(another architecture?): 60 missing, 0 unexpected and 0 differently shaped variables: missing'),
    ({'init_from': 'WEIGHTS'}, "'cifar_preact_resnet20' has no torchvision/timm counterpart"),
    ({'init_from': 'PRETRAINED', 'init_exclude': 'stage9'}, "config.init_exclude: 'stage9' matches no variable"),
    ({'freeze': 'stage4'}, "config.freeze: 'stage4' matches no parameter of cifar_preact_resnet20"),
    ({'freeze': 'stem,stage1,stage2,stage3,head'},
     "config.freeze=['stem', 'stage1', 'stage2', 'stage3', 'head'] freezes every parameter"),
    ({'freeze': 'stage1_unit1/('}, "config.freeze: 'stage1_unit1/(' is not a valid regex"),
    ({'optimizer.lr_multipliers': 'head'}, "config.optimizer.lr_multipliers: 'head' is not PATTERN=FACTOR"),
])
def test_bad_fine_tuning_input_is_refused_before_anything_is_written(pretrained, tmp_path, overrides, message):
  weights = tmp_path / 'weights.safetensors'
  weights.write_bytes(b'')
  overrides = {key: value.replace('PRETRAINED', pretrained).replace('WEIGHTS', str(weights))
               for key, value in overrides.items()}
  workdir = tmp_path / 'never'
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(tiny_config(**overrides), str(workdir))
  assert str(error.value).startswith(message.replace('PRETRAINED', pretrained)), str(error.value)
  assert not workdir.exists()


def test_cli_bad_init_from_is_one_error_line_exit_2_and_nothing_written(pretrained, tmp_path):
  workdir = tmp_path / 'never'
  result = run_python(['-m', 'resnet_jax.main', *QUICK, '--workdir', str(workdir), f'--config.init_from={pretrained}',
                       '--config.model.name=cifar_preact_resnet32'])
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: config.init_from {pretrained} (step 4, cifar_preact_resnet20) does not fit '
                         'cifar_preact_resnet32'), result.stderr[-2000:]
  assert last.count('missing ') == 10 and last.endswith('(and 50 more); config.init_exclude lists variables that '
                                                        'start fresh')
  assert sum(line.startswith('error:') for line in result.stderr.splitlines()) == 1
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()
