"""Bad inputs to `python -m resnet_jax.main` (issue 15, "every refusal explained"), one table row each.

Every row must end in exactly one `error:` line on stderr (the last line, no traceback), exit status 2, and
nothing written: a fresh workdir is not created, an existing one (and the case's data) keeps every byte. The
CLI runs in-process (its `main` with private absl flags, conftest's `cli`) on the suite's 2 fake devices, with
the train loop and evaluation replaced by a failure, so a row passes only if it is refused before anything
compiles. The rows that need a checkpoint take a copy of the session's tiny run (conftest's `trained`).
Other refusals are tested in tests/test_reliability.py and tests/test_cli.py; docs/RELIABILITY.md lists all.
"""

import glob
import os

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import assert_one_error_line
from conftest import snapshot
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import train

# Orbax leaves coroutines of a failed read behind, which Python reports when it collects them.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ['--config', 'configs/quickstart.py', '--config.total_steps=4', '--config.schedule.boundaries_epochs=None',
        '--config.batch_size=8']
# The session's tiny run (conftest's `trained`); rows that resume or evaluate it repeat its overrides.
TINY_ARGS = conftest.TINY_ARGS


def reached(what):
  def fail(*args, **kwargs):
    raise AssertionError(f'{what} was reached: the bad input was not refused before compiling')
  return fail


@pytest.fixture
def cli(cli, monkeypatch):  # pylint: disable=redefined-outer-name  (conftest's in-process CLI runner)
  """cli(argv) runs `python -m resnet_jax.main ARGV` in-process; returns (exit status, stderr)."""
  monkeypatch.setattr(train, '_train_loop', reached('the train loop'))
  monkeypatch.setattr(evaluate.Evaluator, 'evaluate', reached('evaluation'))

  def run(argv):
    status, _, err = cli('main', argv)
    return status, err

  return run


# ----------------------------------------------------------------------------------------------------------
# Data and config files the rows name as {data}/...


def _write_npz(path, labels=(0, 1, 2) * 8, images=None, **extra):
  labels = np.asarray(labels)
  if images is None:
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8, 1), dtype=np.uint8)
  np.savez(path, images=images, labels=labels, **extra)


def _write_png_folder(root, splits=('train', 'test'), classes=('cat', 'dog'), per_class=8):
  for split in splits:
    for name in classes:
      os.makedirs(os.path.join(root, split, name))
      for i in range(per_class):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(os.path.join(root, split, name, f'{i}.png'))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('bad_inputs_data'))
  rng = np.random.default_rng(0)
  _write_npz(f'{root}/float_images.npz', images=rng.random((24, 8, 8, 1)))
  _write_npz(f'{root}/grey_3d.npz', images=rng.integers(0, 255, (24, 8, 8), dtype=np.uint8))
  _write_npz(f'{root}/channels_first.npz', images=rng.integers(0, 255, (24, 3, 8, 8), dtype=np.uint8))
  _write_npz(f'{root}/short_labels.npz', images=rng.integers(0, 255, (20, 8, 8, 1), dtype=np.uint8))
  _write_npz(f'{root}/negative.npz', labels=(0, -1, 2) * 8)
  _write_npz(f'{root}/too_big.npz', labels=(0, 1, 5) * 8, num_classes=3)
  _write_npz(f'{root}/classes_array.npz', num_classes=np.array([3, 3]))
  _write_npz(f'{root}/one_class.npz', labels=(0,) * 24)
  _write_npz(f'{root}/float_labels.npz', labels=(0.0, 1.0, 2.0) * 8)
  _write_npz(f'{root}/empty.npz', labels=np.zeros((0,), np.int64), images=np.zeros((0, 8, 8, 1), np.uint8))
  _write_npz(f'{root}/three_classes.npz', labels=(0, 1, 2) * 10)
  os.makedirs(f'{root}/empty_folder')
  _write_png_folder(f'{root}/corrupt')
  with open(f'{root}/corrupt/train/cat/3.png', 'wb') as file:
    file.write(b'not a png')
  configs = {
      'syntax_error.py': 'from configs import default\ndef get_config(:\n  return default.get_config()\n',
      'raises.py': 'from configs import default\n\ndef get_config():\n  return default.get_confg()\n',
      'bad_import.py': 'from configs import defaults\n\ndef get_config():\n  return defaults.get_config()\n',
      'no_get_config.py': 'CONFIG = {}\n',
      'returns_dict.py': 'def get_config():\n  return {"seed": 0}\n',
  }
  for name, text in configs.items():
    with open(f'{root}/{name}', 'w') as file:
      file.write(text)
  return root


# ----------------------------------------------------------------------------------------------------------
# Training: a fresh workdir. (id, arguments after BASE, or a full argument list starting with --config; the
# message after 'error: '). {data} is the data fixture's folder.

_FRESH = [
    # The command line.
    ('step_in_train_mode', ['--config', 'configs/quickstart.py', '--step', '3'], '--step is for --mode eval'),
    ('positional_argument', ['extra'], 'unexpected arguments extra'),
    ('unknown_mode', ['--mode', 'test'], 'flag --mode=test: value should be one of <train|eval>'),
    ('unknown_flag', ['--steps', '3'], "Unknown command line flag 'steps'"),
    ('override_without_value', ['--config.seed'], '--config.seed: missing value'),
    ('no_config_to_train', ['--mode', 'train'], '--config is required to train'),
    # Config files.
    ('config_syntax_error', ['--config', '{data}/syntax_error.py'],
     "config file '{data}/syntax_error.py', line 2: invalid syntax"),
    ('config_raises', ['--config', '{data}/raises.py'],
     "config file '{data}/raises.py', line 4 failed: AttributeError: module 'configs.default' has no attribute"),
    ('config_bad_import', ['--config', '{data}/bad_import.py'],
     "config file '{data}/bad_import.py', line 1 failed: ImportError: cannot import name 'defaults'"),
    ('config_without_get_config', ['--config', '{data}/no_get_config.py'], "config file '{data}/no_get_config.py' "
     'defines no get_config()'),
    ('config_returns_a_dict', ['--config', '{data}/returns_dict.py'], '{data}/returns_dict.py: get_config() must '
     'return an ml_collections.ConfigDict'),
    ('config_file_missing', ['--config', 'configs/does_not_exist.py'], "config file 'configs/does_not_exist.py' does "
     'not exist'),
    ('config_not_python', ['--config', 'setup.cfg'], "config 'setup.cfg': expected a Python file"),
    ('config_row_missing', ['--config', 'configs/cifar.py:resnet_nope'], "config file 'configs/cifar.py' has no "
     "variant 'resnet_nope'"),
    ('config_takes_no_row', ['--config', 'configs/quickstart.py:resnet20'], "config file 'configs/quickstart.py' "
     "takes no argument, but ':resnet20' was given"),
    # Config fields: names and types.
    ('config_field_typo', ['--config', 'configs/quickstart.py', '--config.optimizer.momentun=0.5'],
     "unknown config field 'optimizer.momentun'; did you mean momentum?"),
    ('batch_size_a_word', ['--config.batch_size=abc'], '--config.batch_size=abc: expected an integer'),
    ('seed_a_fraction', ['--config.seed=1.5'], '--config.seed=1.5: expected an integer'),
    ('bool_a_word', ['--config.optimizer.nesterov=maybe'], '--config.optimizer.nesterov=maybe: expected true or'),
    ('boundaries_a_word', ['--config.schedule.boundaries_steps=abc'],
     "config.schedule.boundaries_steps='abc': expected numbers such as 32000,48000"),
    ('interval_a_word', ['--config.eval_every_steps=abc'], "config.eval_every_steps must be a number, got 'abc'"),
    ('section_given_a_value', ['--config.model=resnet20'], '--config.model is a section; set one of its fields'),
    ('value_used_as_section', ['--config.batch_size.per_device=8'], '--config.batch_size.per_device: '
     'config.batch_size is a value, not a section'),
    ('input_mean_words', ["--config.input.mean=('a',)", '--config.input.std=(1.0,)'],
     "config.input.mean=('a',): expected a list of floats"),
    # Zero, negative and infinite sizes.
    ('batch_size_zero', ['--config.batch_size=0'], 'config.batch_size must be a positive integer'),
    ('batch_larger_than_dataset', ['--config.batch_size=4000'], 'config.batch_size=4000 is larger than the 1433 '
     'training examples'),
    ('total_steps_negative', ['--config.total_steps=-1'], 'config.total_steps must be >= 0, got -1'),
    ('total_steps_zero', ['--config.total_steps=0'], 'training length is 0 steps'),
    ('steps_and_epochs', ['--config.total_epochs=2'], '--config.total_steps and --config.total_epochs both given'),
    ('eval_every_zero', ['--config.eval_every_steps=0'], 'config.eval_every_steps/eval_every_epochs gives an '
     'interval of 0 steps'),
    ('log_every_zero', ['--config.log_every_steps=0'], 'config.log_every_steps/log_every_epochs gives an interval '
     'of 0 steps'),
    ('checkpoint_every_zero', ['--config.checkpoint_every_steps=0'], 'config.checkpoint_every_steps/'
     'checkpoint_every_epochs gives an interval of 0 steps'),
    ('log_every_negative', ['--config.log_every_steps=-5'], 'config.log_every_steps must be >= 0, got -5'),
    ('eval_every_epochs_negative', ['--config.eval_every_epochs=-1'], 'config.eval_every_epochs must be >= 0'),
    ('steps_per_dispatch_zero', ['--config.steps_per_dispatch=0'], 'config.steps_per_dispatch must be a positive '
     'integer'),
    ('base_lr_negative', ['--config', 'configs/quickstart.py', '--config.schedule.base_lr=-0.1'],
     'config.schedule.base_lr=-0.1 is out of range'),
    ('base_lr_infinite', ['--config.schedule.base_lr=inf'], 'config.schedule.base_lr=inf is out of range'),
    ('reference_batch_negative', ['--config.schedule.reference_batch_size=-64'],
     'config.schedule.reference_batch_size=-64 is out of range: it must be >= 1'),
    ('momentum_nan', ['--config.optimizer.momentum=nan'], 'config.optimizer.momentum=nan is out of range'),
    ('stage_width_zero', ['--config.model.stage_widths=(0,32,64)'], 'stage_sizes and stage_widths must be positive'),
    ('stem_width_zero', ['--config.model.stem_width=0'], 'stem_width must be >= 1'),
    ('crop_padding_negative', ['--config.augment.crop_padding=-1'], 'config.augment.crop_padding=-1 must be >= 0'),
    ('input_std_zero', ['--config.input.mean=(0.0,)', '--config.input.std=(0.0,)'], 'config.input.std=(0.0,) must '
     'be positive'),
    # Impossible shapes and architectures.
    ('stage_lists_of_other_lengths', ['--config.model.stage_sizes=(3,3)'], 'stage_sizes (3, 3) and stage_widths '
     '(16, 32, 64) must be non-empty and of the same length'),
    ('stage_sizes_a_number', ['--config.model.stage_sizes=3'], 'stage_sizes must be a sequence of ints'),
    ('unknown_model_name', ['--config', 'configs/quickstart.py', '--config.model.name=resnet17'],
     "unknown model name 'resnet17'"),
    ('batch_not_divisible_by_devices', ['--config', 'configs/quickstart.py', '--config.batch_size=63'],
     'config.batch_size=63 is not divisible by the 2 devices'),
    ('cifar_depth_not_6n2', ['--config.model.name=cifar_resnet22'], "unknown model name 'cifar_resnet22'. Did you "
     'mean ...? CIFAR nets are 6n+2 layers deep with basic units'),
    ('cifar_depth_not_9n2', ['--config.model.name=cifar_preact_resnet165'], "unknown model name "
     "'cifar_preact_resnet165'. ... or 9n+2 with bottleneck units (164, 1001)"),
    ('bottleneck_on_a_6n2_name', ['--config.model.block=bottleneck'], "the 6n+2 CIFAR names take block='basic' or "
     "'single'"),
    ('resnext_width_below_cardinality', ['--config.model.name=resnext29_8x64d', '--config.model.base_width=4',
                                         '--config.model.stage_widths=(8,16,32)'],
     'bottleneck width of stage with 8 planes is < cardinality'),
    ('cardinality_on_basic_units', ['--config.model.cardinality=4'], 'cardinality/base_width (ResNeXt, wide '
     "ResNet) need block='bottleneck'"),
    ('lesioned_unit_out_of_range', ['--config.model.lesioned_units=(9,)'], 'lesioned_units [9] out of range: the '
     'model has 9 residual units'),
    ('input_mean_of_other_channels', ['--config.input.mean=(1.0,2.0,3.0)', '--config.input.std=(1.0,1.0,1.0)'],
     'config.input.mean=(1.0, 2.0, 3.0) has 3 values, but the images of digits have 1 channel(s)'),
    # Model options.
    ('model_option_typo', ['--config.model.shortcutt=exclusive_gate'], "unknown option(s) ['shortcutt'] for model "
     "'cifar_preact_resnet20'; did you mean shortcut?"),
    ('model_option_choice', ['--config.model.unit_order=preact'], "unit_order='preact' is not valid"),
    ('model_option_a_word', ['--config.model.gate_bias_init=abc'], "option gate_bias_init of model "
     "'cifar_preact_resnet20' must be a number, got 'abc'"),
    ('model_bool_option_a_word', ['--config.model.scan_units=maybe'], 'option scan_units of model '
     "'cifar_preact_resnet20' must be true or false, got 'maybe'"),
    ('model_num_classes', ['--config.model.num_classes=5'], 'config.model.num_classes cannot be set: the number of '
     'classes comes from the dataset'),
    ('model_features_only', ['--config.model.features_only=true'], 'config.model.features_only cannot be set'),
    ('model_bn_group_size', ['--config.model.bn_group_size=4'], 'config.model.bn_group_size cannot be set'),
    ('survival_probability_above_one', ['--config.model.survival_prob_last=1.5'], 'survival_prob_last must be in '
     '(0, 1]'),
    ('integer_compute_dtype', ['--config.model.dtype=int32'], "config.model.dtype: dtype 'int32' is not a "
     'floating-point type'),
    ('integer_param_dtype', ['--config.model.param_dtype=int8'], "dtype 'int8' is not a floating-point type"),
    ('unknown_dtype', ['--config.model.dtype=float13'], "config.model.dtype: unknown dtype 'float13'"),
    # Schedule, optimizer, batch norm, policies.
    ('warmup_longer_than_run', ['--config.schedule.warmup=linear', '--config.schedule.warmup_steps=10'],
     'warm-up of 10 steps is not shorter than training (4 steps)'),
    ('boundaries_not_increasing', ['--config', 'configs/quickstart.py',
                                   '--config.schedule.boundaries_epochs=(15,10)'],
     'learning-rate boundaries must be positive and strictly increasing'),
    ('unknown_schedule', ['--config.schedule.name=poly'], "unknown schedule 'poly'; choose one of step, cosine"),
    ('unknown_warmup', ['--config.schedule.warmup=cosine'], "unknown warmup 'cosine'; choose one of none"),
    ('unknown_optimizer', ['--config.optimizer.name=adam'], "unknown optimizer 'adam'; choose one of sgd"),
    ('unknown_weight_decay_target', ['--config.optimizer.weight_decay_on=convs'],
     "unknown config.optimizer.weight_decay_on 'convs'"),
    ('ghost_bn_without_group', ['--config.batch_norm.mode=ghost'], "config.batch_norm.mode='ghost' needs "
     'config.batch_norm.group_size'),
    ('ghost_group_not_dividing', ['--config.batch_norm.mode=ghost', '--config.batch_norm.group_size=3'],
     'config.batch_norm.group_size=3 does not divide the per-device batch 4'),
    ('random_erase_prob_above_one', ['--config.augment.random_erase_prob=1.5'], 'config.augment.random_erase_prob='
     '1.5 is a probability'),
    ('unknown_random_erase_mode', ['--config.augment.random_erase_mode=zeros'], "unknown config.augment."
     "random_erase_mode 'zeros'; choose const, rand, pixel"),
    ('repeated_augmentation_zero', ['--config.repeated_augmentation=0'], 'config.repeated_augmentation must be a '
     'positive integer'),
    ('accumulate_steps_zero', ['--config.accumulate_steps=0'], 'config.accumulate_steps must be a positive '
     'integer'),
    ('accumulate_steps_not_dividing', ['--config.accumulate_steps=3'], 'config.accumulate_steps=3 does not divide '
     'the per-device batch 4'),
    ('unknown_bn_mode', ['--config.batch_norm.mode=local'], "unknown config.batch_norm.mode 'local'"),
    ('unknown_nonfinite_policy', ['--config.on_nonfinite=ignore'], "unknown config.on_nonfinite 'ignore'"),
    ('freeze_matches_nothing', ['--config.freeze=stage9'], "config.freeze: 'stage9' matches no parameter"),
    ('init_from_missing', ['--config.init_from={data}/no_such_run'], 'config.init_from {data}/no_such_run does '
     'not exist'),
    # Datasets.
    ('unknown_dataset', ['--config.dataset.name=cifar11'], "unknown dataset 'cifar11': not a TFDS dataset name"),
    ('unknown_scheme', ['--config.dataset.name=hf:mnist'], "dataset 'hf:mnist': unknown scheme 'hf'"),
    ('unprepared_dataset', ['--config.dataset.name=cifar10', '--config.dataset.data_dir={data}/tfds'],
     "dataset 'cifar10' is not prepared in {data}/tfds; run: python -m resnet_jax.data.prepare cifar10"),
    ('unknown_split', ['--config.dataset.eval_split=validation'], "dataset 'digits' has no split 'validation'"),
    ('malformed_split', ['--config.dataset.train_split=train[abc]'], "dataset 'digits': split 'train[abc]' is not "
     'a valid split'),
    ('npz_missing', ['--config.dataset.name=npz:{data}/nothing.npz'], 'npz dataset: none of {data}/nothing.npz'),
    ('npz_float_images', ['--config.dataset.name=npz:{data}/float_images.npz'], "{data}/float_images.npz: 'images' "
     'must be uint8 with shape N x H x W x C, got float64'),
    ('npz_3d_images', ['--config.dataset.name=npz:{data}/grey_3d.npz'], "{data}/grey_3d.npz: 'images' must be "
     'uint8 with shape N x H x W x C, got uint8 (24, 8, 8)'),
    ('npz_channels_first', ['--config.dataset.name=npz:{data}/channels_first.npz'], "{data}/channels_first.npz: "
     "'images' must have 1 (grey) or 3 (RGB) channels in the last axis"),
    ('npz_labels_of_other_length', ['--config.dataset.name=npz:{data}/short_labels.npz'],
     "{data}/short_labels.npz: 'labels' must be integers of shape (20,), got int64 (24,)"),
    ('npz_float_labels', ['--config.dataset.name=npz:{data}/float_labels.npz'], "{data}/float_labels.npz: 'labels' "
     'must be integers'),
    ('npz_negative_label', ['--config.dataset.name=npz:{data}/negative.npz'], '{data}/negative.npz: labels must '
     'be in [0, num_classes), found -1'),
    ('npz_label_out_of_range', ['--config.dataset.name=npz:{data}/too_big.npz'], '{data}/too_big.npz: label 5 out '
     'of range for num_classes=3'),
    ('npz_num_classes_not_scalar', ['--config.dataset.name=npz:{data}/classes_array.npz'],
     "{data}/classes_array.npz: 'num_classes' must be one integer"),
    ('npz_one_class', ['--config.dataset.name=npz:{data}/one_class.npz'], "npz:{data}/one_class.npz: the training "
     "split 'train' has 1 class(es); a classifier needs at least 2"),
    ('npz_empty', ['--config.dataset.name=npz:{data}/empty.npz'], '{data}/empty.npz: holds no examples'),
    ('folder_missing', ['--config.dataset.name=folder:{data}/no_such_folder'], 'folder dataset: '
     '{data}/no_such_folder is not a directory'),
    ('folder_empty', ['--config.dataset.name=folder:{data}/empty_folder'], 'folder dataset {data}/empty_folder has '
     'no sub-folders'),
    ('folder_corrupt_image', ['--config.dataset.name=folder:{data}/corrupt'], '...{data}/corrupt/train/cat/3.png: '
     'not a readable image'),
]


@pytest.mark.parametrize('args,message', [row[1:] for row in _FRESH], ids=[row[0] for row in _FRESH])
def test_bad_training_input_is_one_error_line_and_creates_nothing(cli, data, tmp_path, args, message):
  before = snapshot(data)
  workdir = tmp_path / 'never'
  args = [arg.format(data=data) for arg in args]
  argv = args if args[:1] == ['--config'] or args[:1] == ['--mode'] else BASE + args
  status, err = cli(['--workdir', str(workdir)] + argv)
  assert_one_error_line(status, err, message.format(data=data))
  assert not workdir.exists()
  assert snapshot(data) == before


def test_missing_workdir_flag_is_one_error_line(cli):
  assert_one_error_line(*cli(BASE), '--workdir is required')


def test_workdir_that_is_a_file_is_one_error_line(cli, tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('notes')
  assert_one_error_line(*cli(['--workdir', str(path)] + BASE), f'--workdir {path} is a file, not a directory')
  assert path.read_text() == 'notes'


def test_workdir_that_cannot_be_created_is_one_error_line(cli, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  assert_one_error_line(*cli(['--config', 'configs/quickstart.py', '--workdir', str(blocker / 'run')]),
                        f'--workdir {blocker}/run cannot be created')
  assert blocker.read_text() == 'not a directory'


# ----------------------------------------------------------------------------------------------------------
# An existing run: resuming with another config, and --mode eval.


_EXISTING = [
    # Training into the trained run's workdir.
    ('resume_with_other_architecture', TINY_ARGS + ['--config.model.stage_widths=(8,8,16)'],
     '--workdir {workdir} holds a run with a different config.model'),
    ('resume_with_other_dataset', TINY_ARGS + ['--config.dataset.name=npz:{data}/three_classes.npz'],
     '--workdir {workdir} holds a run with a different config.dataset'),
    ('resume_with_a_bad_field', TINY_ARGS + ['--config.batch_size=abc'], '--config.batch_size=abc: expected an '
     'integer'),
    ('resume_with_other_devices_batch', TINY_ARGS + ['--config.batch_size=33'], 'config.batch_size=33 is not '
     'divisible by the 2 devices'),
    # --mode eval.
    ('eval_dataset_with_other_classes', ['--mode', 'eval'] + TINY_ARGS +
     ['--config.dataset.name=npz:{data}/three_classes.npz'], 'npz:{data}/three_classes.npz:test has 3 classes but '
     'the model of {workdir} (step 12) predicts 10'),
    ('eval_unknown_split', ['--mode', 'eval'] + TINY_ARGS + ['--config.dataset.eval_split=validation'],
     "dataset 'digits' has no split 'validation'"),
    ('eval_step_not_saved', ['--mode', 'eval', '--step', '3'], '{workdir}/checkpoints has no checkpoint for step 3; '
     'available: [6, 12]'),
    ('eval_overrides_without_config', ['--mode', 'eval', '--config.dataset.eval_split=train'],
     '--config.* overrides need --config in eval mode'),
    ('eval_step_not_a_number', ['--mode', 'eval', '--step', 'last'], "flag --step=last: invalid literal for int()"),
]


@pytest.mark.parametrize('args,message', [row[1:] for row in _EXISTING], ids=[row[0] for row in _EXISTING])
def test_bad_input_leaves_an_existing_run_unchanged(cli, data, run_copy, args, message):
  before = snapshot(run_copy)
  status, err = cli(['--workdir', run_copy] + [arg.format(data=data) for arg in args])
  assert_one_error_line(status, err, message.format(data=data, workdir=run_copy))
  assert snapshot(run_copy) == before


@pytest.mark.parametrize('make', ['missing', 'empty'])
def test_eval_without_checkpoints_is_one_error_line(cli, tmp_path, make):
  workdir = tmp_path / 'run'
  if make == 'empty':
    workdir.mkdir()
  assert_one_error_line(*cli(['--workdir', str(workdir), '--mode', 'eval']), f'no checkpoints in {workdir}')
  assert os.listdir(tmp_path) == ([] if make == 'missing' else ['run']) and not glob.glob(f'{workdir}/*')


def test_true_and_false_set_model_options_as_bools():
  """A new key of config.model given as true/false is a bool: the string 'false' would switch the option on."""
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'quickstart.py'),
                                   [('model.scan_units', 'false'), ('model.remat', 'True')])
  assert config.model.scan_units is False and config.model.remat is True
