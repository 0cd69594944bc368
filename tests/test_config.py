"""Config files and --config.a.b=v overrides: parsed to the field's type, mistakes are one clear UserError."""

import os

import pytest

from resnet_jax import config as config_lib
from resnet_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(REPO, 'configs', 'default.py')
QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')


def test_overrides_are_parsed_to_the_field_type():
  config = config_lib.build_config(DEFAULT, [
      ('batch_size', '64'), ('schedule.base_lr', '0.05'), ('augment.flip', 'false'),
      ('schedule.boundaries_steps', '100,200'), ('dataset.data_dir', '/data'), ('model.name', 'cifar_resnet20')])
  assert config.batch_size == 64 and isinstance(config.batch_size, int)
  assert config.schedule.base_lr == 0.05
  assert config.augment.flip is False
  assert config.schedule.boundaries_steps == (100, 200)
  assert config.dataset.data_dir == '/data'
  assert config.model.name == 'cifar_resnet20'


def test_model_section_accepts_new_options():
  config = config_lib.build_config(DEFAULT, [('model.shortcut', 'exclusive_gate'), ('model.gate_bias_init', '-6')])
  assert config.model.shortcut == 'exclusive_gate'
  assert config.model.gate_bias_init == -6


@pytest.mark.parametrize('path,value,message', [
    ('batch_sise', '3', "unknown config field 'batch_sise'; did you mean batch_size"),
    ('schedule.base_lrr', '3', 'did you mean base_lr'),
    ('nosuchsection.x', '3', "unknown config field 'nosuchsection.x'"),
    ('batch_size', 'many', 'expected an integer'),
    ('augment.flip', 'maybe', 'expected true or false'),
    ('schedule', '3', 'is a section'),
])
def test_bad_override_is_one_clear_error(path, value, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    config_lib.build_config(DEFAULT, [(path, value)])


def test_missing_config_file_names_the_files_that_exist():
  with pytest.raises(UserError, match='does not exist; files in .*default.py'):
    config_lib.build_config(os.path.join(REPO, 'configs', 'nope.py'))


def test_duration_given_in_the_other_unit_replaces_the_files_unit():
  config = config_lib.build_config(QUICKSTART, [('total_steps', '50')])
  assert config.total_steps == 50 and config.total_epochs is None
  with pytest.raises(UserError, match='both given'):
    config_lib.build_config(QUICKSTART, [('total_steps', '50'), ('total_epochs', '2')])


def test_resolve_steps_from_epochs_rounds_up():
  config = config_lib.build_config(QUICKSTART)
  assert config_lib.resolve_steps(config, 'total', steps_per_epoch=10.5) == 210  # 20 epochs
  assert config_lib.resolve_steps(config, 'nothing', 3.0, default=7) == 7


def test_json_round_trip_keeps_tuples():
  config = config_lib.build_config(DEFAULT)
  again = config_lib.from_json(config_lib.to_json(config))
  assert again.schedule.boundaries_steps == (32000, 48000)
  assert again.to_dict() == config.to_dict()


def test_split_override_args():
  rest, overrides = config_lib.split_override_args(
      ['prog', '--config', 'c.py', '--config.a.b=1', '--config.c', '2', '--workdir=w'])
  assert rest == ['prog', '--config', 'c.py', '--workdir=w']
  assert overrides == [('a.b', '1'), ('c', '2')]
