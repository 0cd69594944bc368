"""Faults and bad inputs a new user meets (issue 15): each test fails on the code before its fix.

The session's tiny run (conftest's `trained`: digits, 12 steps, checkpoints at steps 6 and 12) is copied per test
that damages or resumes it; everything works in-process on 2 fake devices (the command line's refusals are rows of
tests/test_bad_inputs.py). docs/RELIABILITY.md lists every case with its test.
"""

import glob
import json
import os
import shutil
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from conftest import snapshot
from conftest import tiny_config
from resnet_jax import checkpoints
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import metrics as metrics_lib
from resnet_jax import parallel
from resnet_jax import train
from resnet_jax.data import sources
from resnet_jax.errors import UserError

# Orbax leaves coroutines of a failed read behind, which Python reports when it collects them.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')
#: For the runs that compile programs of their own anyway (another on_nonfinite policy, another learning rate):
#: one unit per stage, narrower, compiles in about half the time of the tiny run's network.
SMALL_MODEL = {'model.stage_sizes': '(1,1,1)', 'model.stage_widths': '(8,8,8)'}


def damage(workdir, step, how):
  directory = os.path.join(workdir, 'checkpoints', str(step))
  data = glob.glob(os.path.join(directory, 'state', 'ocdbt.process_0', 'd', '*'))
  if how == 'data_deleted':
    for path in data:
      os.remove(path)
  elif how == 'truncated':
    for path in data:
      with open(path, 'r+b') as file:
        file.truncate(10)
  elif how == 'garbage':
    for path in glob.glob(os.path.join(directory, 'state', '**'), recursive=True):
      if os.path.isfile(path):
        with open(path, 'wb') as file:
          file.write(b'garbage' * 10)
  elif how == 'meta_deleted':
    shutil.rmtree(os.path.join(directory, 'meta'))
  else:
    raise ValueError(how)


def write_npz(path, labels, shape=(8, 8, 1), **extra):
  labels = np.asarray(labels, np.int64)
  images = np.random.default_rng(0).integers(0, 255, (len(labels),) + shape, dtype=np.uint8)
  np.savez(path, images=images, labels=labels, **extra)


def mesh():
  return parallel.make_mesh()


# ----------------------------------------------------------------------------------------------------------
# 1. Silently wrong results.


def test_eval_on_a_dataset_with_other_classes_is_refused(run_copy, tmp_path):
  write_npz(str(tmp_path / 'three_test.npz'), [0, 1, 2] * 10)
  config = checkpoints.load(run_copy).config
  config.dataset.name = f"npz:{tmp_path / 'three'}"
  with pytest.raises(UserError, match=r'has 3 classes but the model of .* predicts 10'):
    evaluate.evaluate_checkpoint(run_copy, config=config)
  assert not os.path.exists(os.path.join(run_copy, 'eval_results.jsonl'))


def test_eval_refuses_model_overrides_it_would_ignore(run_copy):
  config = checkpoints.load(run_copy).config
  config.model.name = 'cifar_resnet20'
  with pytest.raises(UserError, match='takes the model from the checkpoint'):
    evaluate.evaluate_checkpoint(run_copy, config=config)


@pytest.mark.parametrize('train_labels,test_labels,message', [
    ([0, 1, 2, 3] * 8, [0, 1, 2] * 8, "has 4 classes but the evaluation split 'test' has 3"),
    ([0, 1, 3] * 8, [0, 1, 2, 3] * 8, "classes 2 of the evaluation split 'test' never occur in the training"),
])
def test_npz_splits_with_different_classes_are_refused(tmp_path, train_labels, test_labels, message):
  write_npz(str(tmp_path / 'd_train.npz'), train_labels)
  write_npz(str(tmp_path / 'd_test.npz'), test_labels)
  with pytest.raises(UserError, match=message):
    train.build_experiment(tiny_config(**{'dataset.name': f"npz:{tmp_path / 'd'}"}), mesh())


def test_folder_splits_with_different_classes_are_refused(tmp_path):
  for split, classes in (('train', ('cat', 'dog')), ('test', ('cat', 'owl'))):
    for name in classes:
      os.makedirs(tmp_path / split / name)
      for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / split / name / f'{i}.png')
  with pytest.raises(UserError, match="classes owl of the evaluation split 'test' never occur in the training split"):
    train.build_experiment(tiny_config(**{'dataset.name': f'folder:{tmp_path}'}), mesh())


def test_eval_record_names_the_dataset_and_falls_back_past_a_damaged_checkpoint(run_copy, capfd):
  damage(run_copy, 12, 'garbage')
  result = evaluate.evaluate_checkpoint(run_copy)
  record = json.loads(open(os.path.join(run_copy, 'eval_results.jsonl')).read().splitlines()[-1])
  assert record['dataset'] == 'digits' and record['split'] == 'test' and record['step'] == 6 == result['step']
  err = capfd.readouterr().err
  assert 'checkpoint step 12' in err and 'loaded step 6' in err and 'Traceback' not in err


# ----------------------------------------------------------------------------------------------------------
# 2 and 3. Resume: nothing written before the restore succeeds; damaged checkpoints fall back.


def test_failed_resume_writes_nothing(run_copy):
  for step in (6, 12):
    damage(run_copy, step, 'data_deleted')
  before = snapshot(run_copy)
  with pytest.raises(UserError, match=r'no checkpoint in .* can be restored \(step 12: .*; step 6: '):
    # Another optimizer, allowed: its state no longer fits the checkpoints, so none restores.
    train.train_and_evaluate(tiny_config(**{'total_steps': '18', 'optimizer.momentum': '0.5'}), run_copy,
                             allow_config_change=True)
  assert snapshot(run_copy) == before  # config.json, metrics.jsonl and both checkpoints as they were


@pytest.mark.parametrize('how', ['data_deleted', 'truncated', 'garbage', 'meta_deleted'])
def test_load_falls_back_to_the_newest_checkpoint_that_restores(run_copy, how, capfd):
  damage(run_copy, 12, how)
  loaded = checkpoints.load(run_copy)
  assert loaded.step == 6
  err = capfd.readouterr().err
  assert 'warning: checkpoint step 12' in err and 'loaded step 6' in err
  assert len(err.splitlines()) < 5  # no pages of Orbax/TensorStore errors
  assert os.path.isdir(os.path.join(run_copy, 'checkpoints', '12'))  # load only reads
  with pytest.raises(UserError, match='no checkpoint in .* can be restored'):
    checkpoints.load(run_copy, step=12)  # an explicit step does not fall back


def test_training_resumes_from_the_newest_checkpoint_that_restores(run_copy, capfd):
  damage(run_copy, 12, 'truncated')
  train.train_and_evaluate(tiny_config(), run_copy)
  err = capfd.readouterr().err
  assert 'checkpoint step 12' in err and 'resuming from step 6' in err
  kept = os.path.join(run_copy, checkpoints.UNUSABLE_DIR, '12')
  assert os.path.isdir(kept)  # moved aside, not deleted
  assert sorted(checkpoints.Checkpointer(run_copy, read_only=True).all_steps()) == [6, 12]
  assert checkpoints.load(run_copy).step == 12  # step 12 trained again


# ----------------------------------------------------------------------------------------------------------
# 4. A half-written last line of metrics.jsonl.


def test_partial_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
  path = tmp_path / metrics_lib.METRICS_FILE
  path.write_text('{"step": 2, "train_loss": 2.3}\n{"step": 4, "train_loss": 2.2}\n{"step": 6, "train_lo')
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=4)
  writer.close()
  assert [r['step'] for r in metrics_lib.read_metrics(str(tmp_path))] == [2, 4]
  assert 'cut short' in capsys.readouterr().err
  path.write_text('{"step": 2}\n{"step": 4, "tr\n{"step": 6}\n')
  with pytest.raises(UserError, match='line 2 is not JSON'):
    metrics_lib.read_metrics(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# 5. Validation before training; a failed save stops the run.


@pytest.mark.parametrize('overrides,message', [
    ({'best_metric': 'test_acc'}, "config.best_metric 'test_acc' is not a metric of the evaluation"),
    ({'eval_batch_size': '0'}, 'config.eval_batch_size=0 is out of range'),
    ({'eval_batch_size': '-4'}, 'config.eval_batch_size=-4 is out of range'),
    ({'dataset.eval_split': 'train[5:2]'}, "split 'train\\[5:2\\]' selects no examples"),
])
def test_eval_settings_are_checked_before_training(tmp_path, overrides, message):
  workdir = tmp_path / 'never'
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize('test_shape,message', [
    ((8, 8, 3), 'have 1 channel\\(s\\) but evaluation images'),
    ((10, 10, 1), 'training images are \\(8, 8, 1\\) but evaluation images are \\(10, 10, 1\\)'),
])
def test_npz_splits_in_different_formats_are_refused(tmp_path, test_shape, message):
  write_npz(str(tmp_path / 'd_train.npz'), [0, 1, 2] * 8)
  write_npz(str(tmp_path / 'd_test.npz'), [0, 1, 2] * 8, shape=test_shape)
  with pytest.raises(UserError, match=message):
    train.build_experiment(tiny_config(**{'dataset.name': f"npz:{tmp_path / 'd'}"}), mesh())


def test_a_failed_save_stops_training_naming_workdir_and_step(tmp_path, monkeypatch):
  def full_disk(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  workdir = str(tmp_path / 'run')
  with pytest.raises(UserError, match=rf'saving the checkpoint of step 2 in {workdir} failed .*No space left'):
    train.train_and_evaluate(tiny_config(**{'total_steps': '8', 'checkpoint_every_steps': '2',
                                            'log_every_steps': '2'}), workdir)
  steps = [r['step'] for r in metrics_lib.read_metrics(workdir)]
  assert max(steps) == 2  # stopped at the failed save, not after the last step


def test_benchmark_checks_its_json_path_before_running(tmp_path):
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(UserError, match='--json .* is a directory'):
    benchmark.run(['--config', QUICKSTART, '--synthetic', '--json', str(tmp_path)])
  with pytest.raises(UserError, match='--json .* cannot be created: .*a_file is a file'):
    benchmark.run(['--config', QUICKSTART, '--synthetic', '--json', str(tmp_path / 'a_file' / 'bench.jsonl')])
  assert os.listdir(tmp_path) == ['a_file']


# ----------------------------------------------------------------------------------------------------------
# 6 and 7. Skipped steps are reported; divergence names a real step and no "step None".


def test_skipping_most_steps_fails_with_the_count(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(**SMALL_MODEL, **{'on_nonfinite': 'skip', 'schedule.base_lr': '1e30', 'total_steps': '4',
                          'log_every_steps': '2', 'eval_every_steps': '4', 'checkpoint_every_steps': '4'})
  with pytest.raises(FloatingPointError, match=r'of the 4 steps of this run had NaN/Inf .* were skipped'):
    train.train_and_evaluate(config, workdir)
  assert checkpoints.latest_step(workdir) == 4  # the run is saved; the error says it is not trusted
  assert train.MAX_SKIPPED_FRACTION == 0.5


def test_divergence_before_the_first_checkpoint_names_no_step_none(tmp_path):
  config = tiny_config(**SMALL_MODEL, **{'schedule.base_lr': '1e30', 'checkpoint_every_steps': '100',
                                         'total_steps': '6', 'log_every_steps': '6', 'eval_every_steps': '6'})
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 'None' not in str(error.value) and 'No checkpoint was saved before it' in str(error.value)


@pytest.mark.parametrize('split', ['train[abc]', 'train[:200%]', 'train[5:2]'])
def test_a_bad_split_is_not_blamed_on_the_prepared_dataset(split):
  with pytest.raises(UserError) as error:
    sources.open_split('digits', split)
  assert 'prepare' not in str(error.value) and split in str(error.value)


def test_a_non_npz_file_does_not_suggest_allow_pickle(tmp_path):
  path = tmp_path / 'data.npz'
  path.write_text('label,pixels\n1,0 0 0\n')
  with pytest.raises(UserError) as error:
    sources.open_split(f'npz:{path}', 'train')
  assert 'pickle' not in str(error.value) and 'np.savez' in str(error.value)


# ----------------------------------------------------------------------------------------------------------
# 8. Tracebacks where one error line is promised.


def test_a_damaged_config_json_is_one_error(run_copy):
  path = os.path.join(run_copy, 'config.json')
  with open(path, 'w') as file:
    file.write('{"model": ')
  with pytest.raises(UserError, match='config.json is not valid JSON'):
    train.train_and_evaluate(tiny_config(), run_copy)


def test_a_file_where_the_checkpoints_go_is_one_error(tmp_path):
  (tmp_path / 'checkpoints').write_text('')
  with pytest.raises(UserError, match='checkpoints is a file'):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert os.listdir(tmp_path) == ['checkpoints']


def test_analysis_limit_of_zero_is_one_error(tmp_path):
  from resnet_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  source = sources.open_split('digits', 'test')
  with pytest.raises(UserError, match='evaluation examples to use must be positive, got 0'):
    pipelines.make_eval_batches(config, mesh(), source, limit=0)  # python -m resnet_jax.analysis --limit 0


# ----------------------------------------------------------------------------------------------------------
# 9. Ctrl-C is a preemption.


def test_ctrl_c_saves_at_the_next_step_and_returns(tmp_path, monkeypatch, capfd):
  advance = train.StepDispatcher.advance

  def interrupted_once(self, *args):
    result = advance(self, *args)
    if not getattr(self, 'interrupted', False):
      self.interrupted = True
      os.kill(os.getpid(), signal.SIGINT)
    return result

  monkeypatch.setattr(train.StepDispatcher, 'advance', interrupted_once)
  before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs in the background
  signal.signal(signal.SIGINT, signal.default_int_handler)
  workdir = str(tmp_path / 'run')
  try:
    train.train_and_evaluate(tiny_config(**{'total_steps': '8', 'checkpoint_every_steps': '100'}), workdir)
    handler_after = signal.getsignal(signal.SIGINT)
  finally:
    signal.signal(signal.SIGINT, before)
  assert checkpoints.latest_step(workdir) == 1
  assert 'SIGINT: saved a checkpoint at step 1' in capfd.readouterr().err
  assert handler_after is signal.default_int_handler  # restored


def test_a_second_ctrl_c_stops_at_once():
  with train._Preemption() as preemption:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested and preemption.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


# ----------------------------------------------------------------------------------------------------------
# 10. Values nobody means, flags that would be ignored: one error line.


@pytest.mark.parametrize('field,value,message', [
    ('schedule.base_lr', '-0.1', 'config.schedule.base_lr=-0.1 is out of range: it must be > 0.0'),
    ('label_smoothing', '1.5', 'config.label_smoothing=1.5 is out of range: it must be [0.0, 1.0)'),
    ('optimizer.momentum', '1.5', 'config.optimizer.momentum=1.5 is out of range'),
    ('optimizer.weight_decay', '-1e-4', 'config.optimizer.weight_decay=-0.0001 is out of range'),
])
def test_values_nobody_means_are_refused(field, value, message):
  with pytest.raises(UserError) as error:
    config_lib.validate(tiny_config(**{field: value}))
  assert str(error.value).startswith(message)
