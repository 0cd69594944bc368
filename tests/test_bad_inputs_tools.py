"""Bad inputs to the newer tools and the file system (issue 25, "Bad inputs, round 3"), one case each.

Every case ends in one clear refusal (a `ValueError`/`UserError` naming what was expected from Python; one
`error:` line, the last, and exit status 2 from a command line; nothing written or changed), or in a correct
result with one `warning:` line saying what was done about the input. The command lines run in-process
(conftest.run_cli). The cases that need a checkpoint share one tiny run of this module (`tiny_run`: the suite's
tiny quickstart); the aggregation and plotting cases build their runs' files by hand (`_fake_run`), as a killed or
hand-edited run leaves them. The non-editable install is checked by `.ci/check_installed` (a wheel installed apart,
every command line run from another directory). docs/RELIABILITY.md lists the cases.
"""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest

import conftest
from conftest import QUICKSTART
from conftest import run_cli
from conftest import assert_one_error_line
from conftest import snapshot
from resnet_jax import checkpoints
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import train
from resnet_jax.errors import UserError

# Orbax leaves coroutines of a failed read behind, which Python reports when it collects them.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

#: The suite's tiny quickstart (tests/conftest.py's TINY_OVERRIDES): 12 steps of batch 32, widths (8,16,16).
TINY = {'total_steps': '12', 'batch_size': '32', 'schedule.boundaries_epochs': 'None',
        'schedule.boundaries_steps': '8', 'log_every_steps': '4', 'eval_every_steps': '12',
        'checkpoint_every_steps': '6', 'model.stage_widths': '(8,16,16)'}


def tiny_config(**overrides):
  return config_lib.build_config(QUICKSTART, list({**TINY, **overrides}.items()))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The tiny quickstart trained once for this module (checkpoints at steps 6 and 12). Read only."""
  workdir = str(tmp_path_factory.mktemp('tools') / 'run')
  train.train_and_evaluate(tiny_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def loaded(tiny_run):
  return checkpoints.load(tiny_run)


def warnings_of(err):
  return [line for line in err.splitlines() if line.startswith('warning:')]


# ----------------------------------------------------------------------------------------------------------
# 1. evaluate.predict and checkpoints.load from Python

IMAGES = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)


@pytest.mark.parametrize('images, message', [
    (IMAGES / 255.0, 'images look scaled to [0, 1] (torchvision ToTensor style)'),
    (IMAGES.transpose(0, 3, 1, 2), 'images of shape (5, 1, 8, 8) have 8 channels, the model takes 1 '
                                   '(N x H x W x 1); they look channels-first'),
    (np.repeat(IMAGES, 3, axis=-1), 'images of shape (5, 8, 8, 3) have 3 channels, the model takes 1'),
    (IMAGES[..., 0], 'images must be N x H x W x C raw pixels (uint8, values 0..255), got shape (5, 8, 8)'),
    (IMAGES > 100, 'images must be N x H x W x C raw pixels (uint8, values 0..255), got dtype bool'),
    (np.full((2, 8, 8, 1), np.nan, np.float32), 'images hold NaN or infinite values'),
    (IMAGES.astype(np.uint16) * 256, 'images have values in [0, 65280]'),
    (IMAGES.astype(np.float32) - 128, 'images have values in [-128, 127]'),
], ids=['float_0_1', 'channels_first', 'three_channels', 'no_channel_axis', 'bool', 'nan', 'uint16_range',
        'centred_floats'])
def test_predict_refuses_images_unlike_the_training_images(loaded, images, message):
  with pytest.raises(ValueError) as refused:
    evaluate.predict(loaded.model, loaded.variables, images)
  assert str(refused.value).startswith(message)


@pytest.mark.parametrize('batch_size', [0, -1, 2.5, True])
def test_predict_refuses_a_batch_size_that_is_not_a_positive_integer(loaded, batch_size):
  with pytest.raises(ValueError, match=f'batch_size must be a positive integer, got {batch_size!r}'):
    evaluate.predict(loaded.model, loaded.variables, IMAGES, batch_size=batch_size)


def test_predict_takes_raw_pixels_of_any_numeric_type_and_any_batch_size(loaded, monkeypatch):
  reference = evaluate.predict(loaded.model, loaded.variables, IMAGES, batch_size=2)
  assert reference.shape == (5, 10) and reference.dtype == np.float32
  # A batch far larger than the input computes only the input (rounded up to the devices), not 1000 images.
  shapes = []
  apply = evaluate._jitted_apply(loaded.model)
  monkeypatch.setattr(evaluate, '_jitted_apply',
                      lambda model: lambda variables, images: shapes.append(images.shape) or apply(variables, images))
  np.testing.assert_allclose(evaluate.predict(loaded.model, loaded.variables, IMAGES, batch_size=1000), reference,
                             rtol=1e-5, atol=1e-5)
  assert shapes == [(6, 8, 8, 1)]  # 5 images padded to the suite's 2 devices
  # The same pixels as int64 (PIL, np.array of a list) or as float32 values 0..255 (a dark image included).
  for images in (IMAGES.astype(np.int64), IMAGES.astype(np.float32), IMAGES.tolist()):
    np.testing.assert_allclose(evaluate.predict(loaded.model, loaded.variables, images), reference,
                               rtol=1e-5, atol=1e-5)
  dark = np.zeros((2, 8, 8, 1), np.float32)
  assert evaluate.predict(loaded.model, loaded.variables, dark).shape == (2, 10)


def test_predict_of_no_images_is_an_empty_array_of_the_class_count(loaded):
  empty = evaluate.predict(loaded.model, loaded.variables, IMAGES[:0])
  assert empty.shape == (0, 10) and empty.dtype == np.float32


@pytest.mark.parametrize('where, message', [
    ('config.json', '{run}/config.json is a file; pass the run\'s directory'),
    ('checkpoints', '{run}/checkpoints is the checkpoints/ folder of a run; pass the run\'s directory: {run}'),
    ('checkpoints/12', '{run}/checkpoints/12 is checkpoint step 12 of a run; load it with load(\'{run}\', step=12)'),
    ('missing', 'no checkpoints in {run}/missing: no such directory'),
])
def test_load_of_a_path_inside_a_run_names_the_path_to_pass(tiny_run, where, message):
  with pytest.raises(UserError) as refused:
    checkpoints.load(os.path.join(tiny_run, where))
  assert str(refused.value).startswith(message.format(run=tiny_run))


def test_load_of_a_reproduce_directory_names_its_runs(tmp_path):
  for seed in (0, 1):
    (tmp_path / 'repro' / f'seed_{seed}').mkdir(parents=True)
  with pytest.raises(UserError, match=r"is a reproduce directory of 2 runs \(seed_0, seed_1\); load one of them"):
    checkpoints.load(str(tmp_path / 'repro'))


@pytest.mark.parametrize('step', ['12', 12.0, True])
def test_load_refuses_a_step_that_is_not_an_integer(tiny_run, step):
  with pytest.raises(UserError, match=f'step must be an integer .* got {re.escape(repr(step))}'):
    checkpoints.load(tiny_run, step=step)


def test_load_takes_a_numpy_integer_step(tiny_run):
  assert checkpoints.load(tiny_run, step=np.int64(6)).step == 6


# ----------------------------------------------------------------------------------------------------------
# 3. reproduce --aggregate and plot on real workdirs


def _fake_run(path, test_accuracy=0.9, row='resnet20', model='cifar_resnet20', total_steps=40):
  """A finished run's files as train.py writes them: config.json and metrics.jsonl (training lines every 10 steps,
  an evaluation at 20 and at the end)."""
  os.makedirs(path)
  config = {'model': {'name': model}, 'total_steps': total_steps, 'seed': 0,
            'paper': {'row': row, 'source': 'He et al. 2015, Table 6', 'published_error': 8.75, 'note': ''}}
  with open(os.path.join(path, 'config.json'), 'w') as file:
    json.dump(config, file)
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as file:
    for step in range(10, total_steps + 1, 10):
      file.write(json.dumps({'step': step, 'train_loss': 2.0 / step, 'train_accuracy': 0.5 + step / 100}) + '\n')
      if step in (20, total_steps):
        accuracy = test_accuracy if step == total_steps else 0.5
        file.write(json.dumps({'step': step, 'test_accuracy': accuracy, 'test_loss': 0.5}) + '\n')
  return str(path)


def _aggregate(*directories, workdir=None):
  argv = ['--aggregate', *directories] + (['--workdir', workdir] if workdir else [])
  return run_cli('reproduce', argv)


def _table_row(out):
  return next(line for line in out.splitlines() if line.startswith('| resnet20 '))


def test_aggregate_counts_a_run_given_twice_once(tmp_path):
  run = _fake_run(tmp_path / 'a', test_accuracy=0.9)
  status, out, err = _aggregate(run, run + '/', workdir=str(tmp_path / 'out'))
  assert status == 0, err
  assert _table_row(out).endswith('| 1 | 1/1 |')
  assert warnings_of(err) == [f'warning: {run}/ is given more than once (as {run} too); counted once']


def test_aggregate_counts_a_seed_given_with_its_reproduce_directory_once(tmp_path):
  for seed, accuracy in enumerate((0.9, 0.8)):
    _fake_run(tmp_path / 'repro' / f'seed_{seed}', test_accuracy=accuracy)
  repro = str(tmp_path / 'repro')
  status, out, err = _aggregate(repro, os.path.join(repro, 'seed_0'), workdir=str(tmp_path / 'out'))
  assert status == 0 and _table_row(out).endswith('| 2 | 2/2 |'), err
  assert len(warnings_of(err)) == 1 and 'seed_0 is given more than once' in err


@pytest.mark.parametrize('damage', ['empty', 'cut', 'not_a_config'])
def test_aggregate_skips_a_run_with_a_damaged_config_with_one_warning(tmp_path, damage):
  good = _fake_run(tmp_path / 'good')
  bad = _fake_run(tmp_path / 'bad')
  text = {'empty': '', 'cut': '{"model": {"na', 'not_a_config': '[1, 2]'}[damage]
  with open(os.path.join(bad, 'config.json'), 'w') as file:
    file.write(text)
  status, out, err = _aggregate(good, bad, workdir=str(tmp_path / 'out'))
  assert status == 0 and _table_row(out).endswith('| 1 | 1/1 |'), err
  assert len(warnings_of(err)) == 1 and warnings_of(err)[0].startswith(f'warning: {bad} skipped: ')
  # Alone, it is one error line.
  assert_one_error_line(*_aggregate(bad)[::2], f'no readable runs in {bad}')


def test_aggregate_reads_a_metrics_file_cut_short_as_training_does(tmp_path):
  run = _fake_run(tmp_path / 'cut')
  path = os.path.join(run, 'metrics.jsonl')
  text = open(path).read()
  with open(path, 'w') as file:
    file.write(text[:-20])  # the final evaluation line, cut short by a kill
  status, out, err = _aggregate(run, workdir=str(tmp_path / 'out'))
  assert status == 0, err
  assert _table_row(out).endswith('| 0 | 0/1 |') and f'{run} (step 40 of 40, last test error 50.00%)' in out
  assert len(warnings_of(err)) == 1 and 'dropped line 6, cut short' in err


@pytest.mark.parametrize('value', ['NaN', 'Infinity', '"0.9"'])
def test_aggregate_does_not_count_a_non_finite_accuracy(tmp_path, value):
  finite = _fake_run(tmp_path / 'finite', test_accuracy=0.9)
  bad = _fake_run(tmp_path / 'bad', test_accuracy=0.8)
  path = os.path.join(bad, 'metrics.jsonl')
  with open(path) as file:
    text = file.read()
  with open(path, 'w') as file:
    file.write(text.replace('"test_accuracy": 0.8', f'"test_accuracy": {value}'))
  status, out, err = _aggregate(finite, bad, workdir=str(tmp_path / 'out'))
  assert status == 0, err
  assert '| 10.00 | 10.00 ± 0.00 | 10.00 | 1 | 1/2 |' in _table_row(out)
  assert 'nan' not in out.lower() and 'inf' not in out.lower()
  assert len(warnings_of(err)) == 1 and 'the evaluation at step 40 has test_accuracy' in err


def test_aggregate_names_the_results_files_it_wrote(tmp_path):
  run = _fake_run(tmp_path / 'a')
  out_dir = str(tmp_path / 'out')
  status, out, err = _aggregate(run, workdir=out_dir)
  assert status == 0, err
  assert err.strip().splitlines()[-1] == f'results in {out_dir}/results.md and {out_dir}/results.csv'
  assert out.strip() == open(os.path.join(out_dir, 'results.md')).read().strip()


@pytest.mark.parametrize('where', ['file', 'under_a_file'])
def test_aggregate_into_a_place_it_cannot_write_is_one_error_line(tmp_path, where):
  run = _fake_run(tmp_path / 'a')
  (tmp_path / 'file').write_text('x')
  target = {'file': tmp_path / 'file', 'under_a_file': tmp_path / 'file' / 'results'}[where]
  before = snapshot(str(tmp_path))
  status, _, err = _aggregate(run, workdir=str(target))
  message = {'file': f'{target} is a file; pass a directory for the results',
             'under_a_file': f'cannot write the results to {target}'}
  assert_one_error_line(status, err, message[where])
  assert snapshot(str(tmp_path)) == before


def test_reproduce_refused_writes_nothing(tmp_path):
  workdir = tmp_path / 'repro'
  status, _, err = run_cli('reproduce', ['--config', QUICKSTART, '--seeds', '2', '--workdir', str(workdir),
                                         '--config.total_steps=0'])
  assert_one_error_line(status, err, 'training length is 0 steps')
  assert not workdir.exists() and os.listdir(tmp_path) == []


def test_reproduce_says_which_seed_trains_and_names_its_results_files(tmp_path, tiny_run, monkeypatch):
  trained = []

  def train_and_evaluate(config, workdir):  # a finished run's files: the module's tiny run, copied
    trained.append(config.seed)
    shutil.copytree(tiny_run, workdir)
    return {}

  monkeypatch.setattr(train, 'train_and_evaluate', train_and_evaluate)
  workdir = str(tmp_path / 'repro')
  status, out, err = run_cli('reproduce', ['--config', QUICKSTART, '--seeds', '2', '--workdir', workdir,
                                           *[f'--config.{key}={value}' for key, value in TINY.items()]])
  assert status == 0, err
  assert trained == [0, 1]
  headers = [line for line in err.splitlines() if line.startswith('== seed')]
  assert headers == [f'== seed 0 (1 of 2): config.seed=0, workdir {workdir}/seed_0',
                     f'== seed 1 (2 of 2): config.seed=1, workdir {workdir}/seed_1']
  assert out.strip().splitlines()[-1] == (f'results in {workdir}/results.md and {workdir}/results.csv; the plan '
                                          f'and the summary in {workdir}/reproduce.json')
  assert sorted(os.listdir(workdir)) == ['reproduce.json', 'results.csv', 'results.md', 'seed_0', 'seed_1']


def _plot(*argv):
  return run_cli('plot', list(argv))


def test_plot_without_an_extension_writes_and_prints_a_png(tmp_path):
  run = _fake_run(tmp_path / 'a')
  status, out, err = _plot(run, '--out', str(tmp_path / 'fig'))
  assert status == 0, err
  assert out.strip() == f'{tmp_path}/fig.png' and open(tmp_path / 'fig.png', 'rb').read(4) == b'\x89PNG'
  assert not (tmp_path / 'fig').exists()


@pytest.mark.parametrize('out, message', [
    ('{tmp}', '--out {tmp} is a directory; name the figure file'),
    ('{tmp}/fig.pdf', '--out {tmp}/fig.pdf: plot writes PNG images; name the file .png'),
    ('{tmp}/file/fig.png', '--out {tmp}/file/fig.png: {tmp}/file is a file, not a directory'),
])
def test_plot_to_an_output_it_cannot_write_is_one_error_line(tmp_path, out, message):
  run = _fake_run(tmp_path / 'a')
  (tmp_path / 'file').write_text('x')
  before = snapshot(str(tmp_path))
  status, _, err = _plot(run, '--out', out.format(tmp=tmp_path))
  assert_one_error_line(status, err, message.format(tmp=tmp_path))
  assert snapshot(str(tmp_path)) == before


def test_plot_of_an_unwritable_output_is_one_error_line(tmp_path, monkeypatch):
  from resnet_jax import storage  # pylint: disable=g-import-not-at-top
  run = _fake_run(tmp_path / 'a')

  def refuse(location, data):
    raise PermissionError(13, 'Permission denied', str(location))

  monkeypatch.setattr(storage, 'write_bytes', refuse)  # root passes every permission check: the OS's refusal
  status, _, err = _plot(run, '--out', str(tmp_path / 'fig.png'))
  assert_one_error_line(status, err, f'--out {tmp_path}/fig.png cannot be written (Permission denied)')


def _drawn(monkeypatch):
  """The series plot draws and the axis it draws them on, recorded."""
  from resnet_jax import metrics  # pylint: disable=g-import-not-at-top
  drawn = []
  original = metrics.draw_curves
  monkeypatch.setattr(metrics, 'draw_curves', lambda ax, series, metric='error': drawn.append((ax, series))
                      or original(ax, series, metric))
  return drawn


def test_plot_draws_a_run_given_twice_once(tmp_path, monkeypatch):
  drawn = _drawn(monkeypatch)
  for seed in (0, 1):
    _fake_run(tmp_path / 'repro' / f'seed_{seed}')
  repro = str(tmp_path / 'repro')
  status, _, err = _plot(repro, os.path.join(repro, 'seed_1'), '--out', str(tmp_path / 'fig.png'))
  assert status == 0, err
  assert [s['label'] for s in drawn[0][1]] == ['resnet20 (median of 2)']
  assert warnings_of(err) == [f'warning: {repro}/seed_1 is given more than once; drawn once']


def test_plot_labels_each_workdir_by_its_directory(tmp_path, monkeypatch):
  drawn = _drawn(monkeypatch)
  runs = [_fake_run(tmp_path / 'lr_0.1'), _fake_run(tmp_path / 'lr_0.01'), _fake_run(tmp_path / 'plain',
                                                                                        row='plain20')]
  assert _plot(*runs, '--out', str(tmp_path / 'fig.png'))[0] == 0
  assert [s['label'] for s in drawn[0][1]] == ['resnet20 [lr_0.1]', 'resnet20 [lr_0.01]', 'plain20 [plain]']


def test_plot_labels_a_run_with_a_damaged_config_by_its_directory(tmp_path, monkeypatch):
  drawn = _drawn(monkeypatch)
  run = _fake_run(tmp_path / 'damaged')
  with open(os.path.join(run, 'config.json'), 'w') as file:
    file.write('{"model": ')
  status, out, err = _plot(run, '--out', str(tmp_path / 'fig.png'))
  assert status == 0 and out.strip() == f'{tmp_path}/fig.png', err
  assert drawn[0][1][0]['label'] == 'damaged'
  assert len(warnings_of(err)) == 1 and "labelled 'damaged'" in err


def test_plot_uses_a_log_error_axis_when_errors_span_decades(tmp_path, monkeypatch):
  drawn = _drawn(monkeypatch)
  close = [_fake_run(tmp_path / 'a', test_accuracy=0.9), _fake_run(tmp_path / 'b', test_accuracy=0.8)]
  assert _plot(*close, '--out', str(tmp_path / 'linear.png'))[0] == 0
  far = _fake_run(tmp_path / 'c', test_accuracy=0.999)   # 0.1% beside 50%
  assert _plot(close[0], far, '--out', str(tmp_path / 'log.png'))[0] == 0
  assert [ax.get_yscale() for ax, _ in drawn] == ['linear', 'log']


@pytest.mark.parametrize('metric', ['error', 'loss'])
def test_plot_leaves_out_non_finite_points_with_one_warning(tmp_path, monkeypatch, metric):
  drawn = _drawn(monkeypatch)
  run = _fake_run(tmp_path / 'diverged')
  path = os.path.join(run, 'metrics.jsonl')
  with open(path) as file:
    lines = file.read().splitlines()
  lines[3] = json.dumps({'step': 30, 'train_loss': math.inf, 'train_accuracy': math.nan})  # Infinity, NaN
  lines[-1] = '{"step": 40, "test_accuracy": Infinity, "test_loss": NaN}'
  with open(path, 'w') as file:
    file.write('\n'.join(lines) + '\n')
  status, out, err = _plot(run, '--out', str(tmp_path / 'fig.png'), '--metric', metric)
  assert status == 0 and out.strip() == f'{tmp_path}/fig.png', err
  series = drawn[0][1][0]
  assert series['train'][0] == [10, 20, 40] and series['test'][0] == [20]
  assert all(math.isfinite(value) for part in ('train', 'test') for value in series[part][1])
  assert warnings_of(err) == [f'warning: {run}: not drawn, NaN or infinite: train step 30, test step 40']


# ----------------------------------------------------------------------------------------------------------
# 5. Values that train nothing or diverge for a known reason


class _Reached(Exception):
  """Raised by the train loop stand-in: the run passed every check."""


def _train_cli(tmp_path, monkeypatch, *overrides):
  """`python -m resnet_jax.main` on the tiny config with `overrides`, the train loop replaced by _Reached."""
  def loop(*args, **kwargs):
    raise _Reached()
  monkeypatch.setattr(train, '_train_loop', loop)
  argv = ['--config', QUICKSTART, '--workdir', str(tmp_path / 'run'),
          *[f'--config.{key}={value}' for key, value in TINY.items()], *overrides]
  return run_cli('main', argv)


@pytest.mark.parametrize('overrides, message', [
    (['--config.optimizer.lr_multipliers=.*=0'],
     "config.optimizer.lr_multipliers gives every parameter of cifar_preact_resnet20 that config.freeze=[] leaves a "
     "learning rate of 0"),
    (['--config.freeze=stem,stage1,stage2', '--config.optimizer.lr_multipliers=stage3=0,head=0'],
     "config.optimizer.lr_multipliers gives every parameter of cifar_preact_resnet20 that "
     "config.freeze=['stem', 'stage1', 'stage2'] leaves a learning rate of 0"),
    (['--config.optimizer.lr_multipliers=head=inf'], "config.optimizer.lr_multipliers['head'] = inf must be a finite"),
    (['--config.optimizer.lr_multipliers=head=1e400'],
     "config.optimizer.lr_multipliers['head'] = inf must be a finite"),
    (['--config.optimizer.lr_multipliers=head=nan'], "config.optimizer.lr_multipliers['head'] = nan must be a finite"),
    # Every parameter frozen, only the BatchNorm statistics left to move (they are not frozen with them here).
    (['--config.freeze=stem,stage1,stage2,stage3,head', '--config.batch_norm.freeze_frozen_stats=false'],
     "config.freeze=['stem', 'stage1', 'stage2', 'stage3', 'head'] freezes every parameter"),
], ids=['zero_everywhere', 'zero_beyond_the_freeze', 'infinite', 'overflowing', 'nan', 'only_batchnorm_stats'])
def test_learning_rates_that_train_nothing_or_diverge_are_refused(tmp_path, monkeypatch, overrides, message):
  status, _, err = _train_cli(tmp_path, monkeypatch, *overrides)
  assert_one_error_line(status, err, message)
  assert os.listdir(tmp_path) == []


def test_a_learning_rate_of_zero_on_a_part_still_trains_the_rest(tmp_path, monkeypatch):
  with pytest.raises(_Reached):
    _train_cli(tmp_path, monkeypatch, '--config.optimizer.lr_multipliers=head=0')


# ----------------------------------------------------------------------------------------------------------
# 4. The file system and the environment


def test_setup_cfg_installs_every_package_and_the_configs():
  # `packages` is a list in setup.cfg (the configs are mapped into resnet_jax.configs): a new sub-package must be
  # added there, or a non-editable install lacks it (.ci/check_installed runs every CLI from such an install).
  import configparser  # pylint: disable=g-import-not-at-top
  import setuptools  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  setup = configparser.ConfigParser()
  setup.read(os.path.join(repo, 'setup.cfg'))
  listed = set(setup['options']['packages'].split())
  on_disk = set(setuptools.find_packages(repo, include=['resnet_jax', 'resnet_jax.*']))
  assert listed == on_disk | {'resnet_jax.configs'}
  assert setup['options']['package_dir'].split() == ['resnet_jax.configs', '=', 'configs']


def test_configs_paths_name_the_project_configs_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr('sys.path', list(__import__('sys').path))  # loading a config file may extend it
  assert config_lib.build_config('configs/cifar.py:resnet110').model.name == 'cifar_resnet110'
  status, out, err = run_cli('reproduce', ['--list', 'resnet110'], cwd=str(tmp_path))
  assert status == 0 and out.startswith('configs/cifar.py:resnet110 '), err
  # A configs/ folder of the user's own in the working directory comes first.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'cifar.py').write_text(
      'from configs import default\n\ndef get_config(arg=None):\n  config = default.get_config()\n'
      '  config.model.name = "mine"\n  return config\n')
  assert config_lib.build_config('configs/cifar.py:resnet110').model.name == 'mine'


def _fail(*args, **kwargs):
  raise OSError(28, 'No space left on device')


async def _fail_async(*args, **kwargs):
  raise OSError(28, 'No space left on device')


def _failing_finalize(original):
  def finalize(self, *args, **kwargs):
    raise OSError(28, 'No space left on device')
  return finalize


# Where a save can fail: when it starts (the manager's save), while the state is written (the array handler),
# while the metadata is written (the JSON handler, in Orbax's background thread) and when the step is made final
# (the temporary directory renamed, in the background thread).
SAVE_FAILURES = {
    'start': ('orbax.checkpoint.CheckpointManager.save', _fail),
    'state_write': ('orbax.checkpoint.StandardCheckpointHandler.async_save', _fail_async),
    'meta_write': ('orbax.checkpoint.JsonCheckpointHandler._save_fn', _fail),
    'finalize': ('orbax.checkpoint.CheckpointManager._finalize', _fail),
}


@pytest.mark.parametrize('point', list(SAVE_FAILURES))
def test_a_failed_checkpoint_save_ends_the_run_and_keeps_the_previous_checkpoint(tiny_run, tmp_path, monkeypatch,
                                                                                  point):
  import threading  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_run, workdir)
  target, replacement = SAVE_FAILURES[point]
  monkeypatch.setattr(target, replacement)
  # The finished run, extended by 6 steps: its save at step 18 fails.
  argv = ['--config', QUICKSTART, '--workdir', workdir, *[f'--config.{key}={value}' for key, value in TINY.items()],
          '--config.total_steps=18']
  result = []
  runner = threading.Thread(target=lambda: result.append(run_cli('main', argv)), daemon=True)
  runner.start()
  runner.join(timeout=120)
  assert not runner.is_alive(), f'a save failing at {point} hangs the run'
  status, _, err = result[0]
  assert_one_error_line(status, err, f'saving the checkpoint of step 18 in {workdir} failed (')
  assert 'No space left on device' in err.strip().splitlines()[-1] and 'it resumes from step 12' in err
  monkeypatch.undo()
  assert checkpoints.load(workdir, step=12).step == 12  # the previous checkpoint is kept, whole
  # Failing after Orbax renamed the step's directory (its manager's finalisation: metrics, old steps) leaves step
  # 18 complete: a rerun resumes from it, though the error line names step 12.
  assert checkpoints.load(workdir).step == (18 if point == 'finalize' else 12)


def test_the_embedded_dataset_in_an_unwritable_data_dir_is_one_error_line(tmp_path, monkeypatch):
  (tmp_path / 'file').write_text('x')  # root may write anywhere: a directory below a file cannot be created
  data_dir = str(tmp_path / 'file' / 'tfds')
  status, _, err = _train_cli(tmp_path, monkeypatch, f'--config.dataset.data_dir={data_dir}')
  assert_one_error_line(status, err, f"the built-in dataset 'digits' cannot be built in {data_dir} (Not a "
                                     "directory: ...); set config.dataset.data_dir (or TFDS_DATA_DIR) to a writable")
  assert 'Variant folder' not in err  # TFDS's warnings about the folders it probes are silenced
  assert sorted(os.listdir(tmp_path)) == ['file']


def test_an_unwritable_home_is_one_error_line_naming_the_data_dir(tmp_path):
  # A fresh process: TFDS reads its default directory (~/tensorflow_datasets) when it is imported.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  (tmp_path / 'file').write_text('x')
  home = tmp_path / 'file' / 'home'  # below a file: not creatable, even by root
  env = {key: value for key, value in os.environ.items() if key != 'TFDS_DATA_DIR'}
  env.update(HOME=str(home), JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-m', 'resnet_jax.main', '--config', QUICKSTART, '--workdir',
                           str(tmp_path / 'run')], env=env, capture_output=True, text=True, timeout=300)
  assert_one_error_line(result.returncode, result.stderr, f"the built-in dataset 'digits' cannot be built in "
                                                          f"{home}/tensorflow_datasets (Not a directory")
  assert sorted(os.listdir(tmp_path)) == ['file']


@pytest.mark.parametrize('workdir, message', [
    ('{tmp}/' + 'a' * 300, '--workdir {tmp}/aaa... cannot be created (File name too long)'),
    ('{tmp}/' + 'a/' * 2100, '--workdir is ... bytes long: the files of a run need at most ... (the system\'s path '
                             'limit is ...); choose a shorter path'),
    ('{tmp}/' + 'a/' * 1200, '--workdir {tmp}/a/a/... cannot be created (more nested directories than Python'),
], ids=['name_too_long', 'path_too_long', 'too_deep'])
def test_a_workdir_beyond_the_os_limits_is_one_error_line(tmp_path, monkeypatch, workdir, message):
  def loop(*args, **kwargs):
    raise AssertionError('the train loop was reached')
  monkeypatch.setattr(train, '_train_loop', loop)
  argv = ['--config', QUICKSTART, '--workdir', workdir.format(tmp=tmp_path),
          *[f'--config.{key}={value}' for key, value in TINY.items()]]
  status, _, err = run_cli('main', argv)
  assert_one_error_line(status, err, message.format(tmp=tmp_path))
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------
# 6. What a new user meets first


def test_lesion_figure_names_units_as_the_printed_study_does(tmp_path, monkeypatch):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from conftest import load_cli  # pylint: disable=g-import-not-at-top
  analysis_cli = load_cli('analysis/__main__')
  figures = []
  original = Figure.subplots
  monkeypatch.setattr(Figure, 'subplots', lambda self, *a, **k: figures.append(original(self, *a, **k))
                      or figures[-1])
  units = [{'index': 3 * (stage - 1) + position - 1, 'stage': stage, 'position': position,
            'changes_shape': position == 1 and stage > 1, 'error': 0.1} for stage in (1, 2, 3)
           for position in (1, 2, 3)]
  result = {'baseline_error': 0.08, 'units': units,
            'random_removal': {'1': {'mean_error': 0.1, 'std_error': 0.01}, '3': {'mean_error': 0.2, 'std_error': 0.02},
                               '5': {'mean_error': 0.3, 'std_error': 0.03}}}
  analysis_cli.plot_lesion(result, str(tmp_path / 'lesion.png'))
  ax_unit, ax_k = figures[0]
  assert [label.get_text() for label in ax_unit.get_xticklabels()] == [
      '1.1', '1.2', '1.3', '2.1', '2.2', '2.3', '3.1', '3.2', '3.3']
  assert all(float(tick).is_integer() for tick in ax_k.get_xticks())
  assert os.path.getsize(tmp_path / 'lesion.png') > 1000


def test_benchmark_names_its_json_file_and_prints_the_record_only_for_stdout(tmp_path, monkeypatch, capsys):
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(benchmark, 'benchmark_train', lambda config, **options: {'mode': 'train', 'step_ms': 1.0})
  out = str(tmp_path / 'bench.jsonl')
  benchmark.run(['--config', QUICKSTART, '--json', out, '--synthetic'])
  printed = capsys.readouterr().out
  assert printed.strip() == f'record appended to {out}'
  assert json.loads(open(out).read())['step_ms'] == 1.0
  benchmark.run(['--config', QUICKSTART, '--json', '-', '--synthetic'])
  assert json.loads(capsys.readouterr().out)['step_ms'] == 1.0


@pytest.mark.parametrize('name', ['01_quickstart', '02_checkpoint_eval', '03_paper_figures',
                                  '04_lesion_paths_propagation', '05_pretrained_and_finetune'])
def test_notebooks_open_from_the_notebooks_folder(name):
  # Jupyter starts a notebook's kernel in its folder; the notebooks' paths (configs/..., runs/...) are the
  # repository's, so each moves there first, before its first relative path.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, 'notebooks', f'{name}.ipynb')) as file:
    code = [''.join(cell['source']) for cell in json.load(file)['cells'] if cell['cell_type'] == 'code']
  first = code[0]
  guard = "if os.path.basename(os.getcwd()) == 'notebooks':\n  os.chdir('..')"
  assert guard in first, name
  relative = re.search(r"'(configs|runs|tests)/", first)
  assert relative is None or first.index(guard) < relative.start(), name


# ----------------------------------------------------------------------------------------------------------
# 2. convert on real-world files


@pytest.fixture(scope='module')
def resnet18_tensors():
  """A torchvision-layout resnet18 state dict of random values (names and shapes from the converter's mapping)."""
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import convert  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import create_model  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: create_model('resnet18').init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                                                train=False))
  rng = np.random.default_rng(0)
  return {convert.torch_name(tuple(str(getattr(key, 'key', key)) for key in path)):
          rng.uniform(0.5, 1.0, convert.torch_shape(leaf.shape)).astype(np.float32)
          for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}


@pytest.fixture(scope='module')
def resnet18_file(resnet18_tensors, tmp_path_factory):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('weights') / 'resnet18.safetensors')
  save_file(resnet18_tensors, path)
  return path


@pytest.mark.parametrize('damage, message', [
    (lambda t: {**t, 'conv1.weight': t['conv1.weight'].astype(np.int8)}, 'SRC holds int8 tensors (conv1.weight): a '
                                                                          'quantised or integer checkpoint'),
    (lambda t: {**t, 'fc.bias': t['fc.bias'].astype(np.uint8)}, 'SRC holds uint8 tensors (fc.bias)'),
    (lambda t: {**t, 'bn1.weight': t['bn1.weight'] > 0.7}, 'SRC holds bool tensors (bn1.weight)'),
    (lambda t: {**t, 'layer1.0.conv1.weight': t['layer1.0.conv1.weight'] * np.nan},
     'SRC holds NaN or infinite values in layer1.0.conv1.weight'),
    (lambda t: {**t, 'fc.weight': t['fc.weight'] * np.inf}, 'SRC holds NaN or infinite values in fc.weight'),
    (lambda t: {**t, 'bn1.running_var': -t['bn1.running_var']}, 'SRC holds negative BatchNorm variances in '
                                                                'bn1.running_var'),
], ids=['int8', 'uint8', 'bool', 'nan', 'inf', 'negative_variance'])
def test_convert_refuses_tensors_that_do_not_convert_faithfully(resnet18_tensors, damage, message):
  from resnet_jax import convert  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError) as refused:
    convert.from_torch_state_dict(damage(resnet18_tensors), 'resnet18', source='SRC')
  assert str(refused.value).startswith(message)


@pytest.mark.parametrize('prefix', ['module.', '_orig_mod.', 'module._orig_mod.', 'model.'])
def test_convert_strips_the_prefixes_training_wrappers_add(resnet18_tensors, prefix):
  from resnet_jax import convert  # pylint: disable=g-import-not-at-top
  wrapped = {prefix + name: value for name, value in resnet18_tensors.items()}
  assert convert._without_wrapper_prefixes(wrapped).keys() == resnet18_tensors.keys()
  if prefix == 'module._orig_mod.':  # one full conversion: the same variables as the bare names give
    converted = convert.from_torch_state_dict(wrapped, 'resnet18')
    np.testing.assert_array_equal(converted['params']['stem_conv']['kernel'],
                                  resnet18_tensors['conv1.weight'].transpose(2, 3, 1, 0))


def _convert(*argv):
  """`python -m resnet_jax.convert ARGV` in-process: (exit status, stdout, stderr)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from resnet_jax import convert  # pylint: disable=g-import-not-at-top
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      convert.main(list(argv))
    status = 0
  except SystemExit as exit_:
    status = exit_.code
  return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize('out, message', [
    ('', "--out '' is empty; name the directory to write"),
    ('{tmp}/file/converted', '--out {tmp}/file/converted: {tmp}/file is a file, not a directory'),
    ('{tmp}/file', '--out {tmp}/file is a file, not a directory'),
])
def test_convert_to_an_invalid_out_is_one_error_line(tmp_path, resnet18_file, out, message):
  (tmp_path / 'file').write_text('x')
  before = snapshot(str(tmp_path))
  status, _, err = _convert(resnet18_file, '--model', 'resnet18', '--out', out.format(tmp=tmp_path))
  assert_one_error_line(status, err, message.format(tmp=tmp_path))
  assert snapshot(str(tmp_path)) == before and os.listdir(tmp_path) == ['file']


def test_convert_to_an_unwritable_out_is_one_error_line(tmp_path, resnet18_file, monkeypatch):
  monkeypatch.setattr(os, 'access', lambda path, mode: False)  # root passes every permission check
  status, _, err = _convert(resnet18_file, '--model', 'resnet18', '--out', str(tmp_path / 'converted'))
  assert_one_error_line(status, err, f'--out {tmp_path}/converted: {tmp_path} is not writable')
  assert os.listdir(tmp_path) == []


def test_a_killed_convert_leaves_nothing_that_blocks_the_rerun(tmp_path, resnet18_file, monkeypatch):
  out = str(tmp_path / 'converted')

  def killed(*args, **kwargs):
    raise KeyboardInterrupt()  # the process stops mid-write, as a kill would

  monkeypatch.setattr(checkpoints.Checkpointer, 'save', killed)
  with pytest.raises(KeyboardInterrupt):
    _convert(resnet18_file, '--model', 'resnet18', '--out', out)
  assert os.listdir(tmp_path) == ['converted.partial']  # not `out`: a rerun is not refused
  monkeypatch.undo()
  status, printed, err = _convert(resnet18_file, '--model', 'resnet18', '--out', out)
  assert status == 0, err
  assert printed.startswith(f'wrote {out}: resnet18, 1000 classes') and os.listdir(tmp_path) == ['converted']
  assert checkpoints.load(out).step == 0


def test_a_convert_that_cannot_write_is_one_error_line(tmp_path, resnet18_file, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(checkpoints.Checkpointer, 'save', full)
  out = str(tmp_path / 'converted')
  status, _, err = _convert(resnet18_file, '--model', 'resnet18', '--out', out)
  assert_one_error_line(status, err, f'--out {out} cannot be written (No space left on device)')
  assert not os.path.exists(out)




def test_init_from_the_other_unit_layout_names_scan_units(trained):
  """Category 2, scanned vs unrolled: a run's weights are stored unrolled; a model with scan_units=True (the same
  network, its units stacked) is refused with the one setting that loads them, and that setting loads them."""
  from resnet_jax import classifier, finetune  # pylint: disable=g-import-not-at-top
  def initialization(**overrides):
    config = conftest.tiny_config(init_from=trained, **overrides)
    return finetune.load_initialization(config, classifier.model_from_config(config, 10, (0.0,), (1.0,)), (8, 8, 1))
  with pytest.raises(UserError, match='stores its units unrolled and this model scanned: set '
                                      'config.model.scan_units=False to load it'):
    initialization(**{'model.scan_units': 'True'})
  assert initialization() is not None
