"""`python -m resnet_jax.analysis` on a trained run: lesion and path studies written next to the run."""

import json
import os

import pytest

from conftest import run_python
from resnet_jax import config as config_lib
from resnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lesion_and_path_studies_of_a_trained_run(tmp_path):
  workdir = str(tmp_path / 'run')
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'quickstart.py'), [
      ('total_steps', '30'), ('batch_size', '32'), ('schedule.boundaries_epochs', 'None'),
      ('log_every_steps', '30'), ('model.stage_widths', '(8,8,8)')])
  final = train.train_and_evaluate(config, workdir)
  result = run_python(['-m', 'resnet_jax.analysis', '--workdir', workdir, '--remove', '1,3,9', '--samples', '2'])
  assert result.returncode == 0, result.stderr[-3000:]
  lesion = json.load(open(os.path.join(workdir, 'analysis', 'lesion.json')))
  # The intact network on the whole test split is the run's final evaluation.
  assert lesion['baseline_error'] == pytest.approx(final['test_error'], abs=1e-6)
  assert lesion['num_examples'] == 364 and len(lesion['units']) == 9
  assert [u['changes_shape'] for u in lesion['units']] == [False] * 3 + [True, False, False] * 2
  assert sorted(lesion['random_removal']) == ['1', '3', '9']
  assert lesion['random_removal']['9']['std_error'] == 0.0  # all 9 removed: one possible subset
  paths = json.load(open(os.path.join(workdir, 'analysis', 'paths.json')))
  assert paths['lengths'] == list(range(10)) and sum(paths['distribution']) == pytest.approx(1.0)
  assert all(v > 0 for v in paths['mean_grad_norm'])
  assert os.path.exists(os.path.join(workdir, 'analysis', 'lesion.png'))
  assert 'no unit removed: test error' in result.stdout


def test_analysis_of_a_missing_run_is_one_error_line(tmp_path):
  result = run_python(['-m', 'resnet_jax.analysis', '--workdir', str(tmp_path / 'nothing')])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: no checkpoints in')
