"""`python -m resnet_jax.analysis` on a trained run: lesion and path studies written next to the run. The CLI runs
in-process (conftest's `cli`) on a copy of the session's tiny run."""

import json
import os

import pytest


def test_lesion_and_path_studies_of_a_trained_run(trained_run, run_copy, cli):
  workdir, final = run_copy, trained_run[1]
  status, stdout, stderr = cli('analysis/__main__', ['--workdir', workdir, '--remove', '1,3,9', '--samples', '2'])
  assert status == 0, stderr[-3000:]
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
  assert 'no unit removed: test error' in stdout


def test_analysis_of_a_missing_run_is_one_error_line(tmp_path, cli):
  status, _, stderr = cli('analysis/__main__', ['--workdir', str(tmp_path / 'nothing')])
  assert status == 2
  assert stderr.strip().splitlines()[-1].startswith('error: no checkpoints in')
  assert 'Traceback' not in stderr
