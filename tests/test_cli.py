"""`python -m resnet_jax.main` as a user runs it: a short quickstart, eval mode, and one-line errors."""

import json
import os

import pytest

from conftest import run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ['--config', 'configs/quickstart.py', '--config.total_steps=10', '--config.schedule.boundaries_epochs=None',
         '--config.log_every_steps=5', '--config.eval_every_steps=10', '--config.checkpoint_every_steps=10']


def test_cli_trains_resumes_and_evaluates(tmp_path):
  workdir = str(tmp_path / 'quick')
  cache = tmp_path / 'xla_cache'
  first = run_python(['-m', 'resnet_jax.main', *QUICK, '--workdir', workdir,
                      f'--config.compilation_cache_dir={cache}'], devices=2)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'step 10/10' in first.stderr and 'img/s' in first.stderr and 'ETA' in first.stderr
  assert len(os.listdir(cache)) >= 2  # the persistent cache holds the compiled init and train step
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  final = [l for l in lines if 'test_accuracy' in l][-1]

  again = run_python(['-m', 'resnet_jax.main', *QUICK, '--workdir', workdir], devices=2)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'compiled the train step' not in again.stderr  # finished: nothing to train

  evaluated = run_python(['-m', 'resnet_jax.main', '--workdir', workdir, '--mode', 'eval'], devices=1)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'read only' not in evaluated.stderr and 'read_only' not in evaluated.stderr  # no Orbax warnings
  assert f"test_accuracy {final['test_accuracy']:.4f}" in evaluated.stdout


@pytest.mark.parametrize('args,devices,message', [
    (['--config', 'configs/quickstart.py', '--config.optimizer.momentun=0.5'], 1,
     "error: unknown config field 'optimizer.momentun'; did you mean momentum?"),
    (['--config', 'configs/quickstart.py', '--config.model.name=resnet17'], 1, "error: unknown model name 'resnet17'"),
    (['--config', 'configs/quickstart.py', '--config.batch_size=63'], 2,
     'error: config.batch_size=63 is not divisible by the 2 devices'),
    (['--config', 'configs/does_not_exist.py'], 1, "error: config file 'configs/does_not_exist.py' does not exist"),
    (['--config', 'configs/quickstart.py', '--config.schedule.boundaries_epochs=(15,10)'], 1,
     'error: learning-rate boundaries must be positive and strictly increasing'),
])
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, args, devices, message):
  workdir = tmp_path / 'never'
  result = run_python(['-m', 'resnet_jax.main', *args, '--workdir', str(workdir)], devices=devices)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
  assert sum(line.startswith('error:') for line in result.stderr.splitlines()) == 1
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_unwritable_workdir_is_one_error_line(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  result = run_python(['-m', 'resnet_jax.main', '--config', 'configs/quickstart.py',
                       '--workdir', str(blocker / 'run')])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: --workdir {blocker}/run cannot be created')
