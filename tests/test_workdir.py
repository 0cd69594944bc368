"""One run per workdir: the lock (a second run refused, a killed run's lock taken over), a rerun's config checked
against the recorded one (refused, or allowed and recorded in config_history.jsonl), an honest resume message
and the outcome on stdout. The same on a gs:// bucket is in test_cloud_workdirs.py."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, snapshot, xla_flags
from resnet_jax import checkpoints
from resnet_jax import train
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import UserError

from workdir_runs import cli_args, finish, flat, run_config, start, wait_for


def lock_holder(workdir):
  path = os.path.join(workdir, workdir_lib.LOCK_FILE)
  try:
    return json.loads(open(path).read())
  except (OSError, ValueError):
    return {}


def test_a_second_run_is_refused_while_the_first_trains_and_the_first_is_unharmed(reference, cache, tmp_path):
  workdir = tmp_path / 'busy'
  first = start(cli_args(workdir, cache))
  wait_for(lambda: lock_holder(workdir).get('pid') == first.pid and os.path.exists(workdir / 'config.json'),
           what='the first run to lock its workdir')
  config_before = (workdir / 'config.json').read_bytes()
  # Another seed: without the lock, config.json and metrics.jsonl would become a hybrid of the two runs.
  with pytest.raises(UserError, match=rf'--workdir {workdir} is in use \(training by pid {first.pid} on '):
    train.train_and_evaluate(run_config(seed='1'), str(workdir))
  assert (workdir / 'config.json').read_bytes() == config_before
  # Readers take no lock: a checkpoint is loaded while the run trains (only complete steps are visible).
  wait_for(lambda: checkpoints.latest_step(str(workdir)) is not None or first.poll() is not None,
           what='a first checkpoint')
  assert checkpoints.load(str(workdir)).step in (6, 12, 18)
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  np.testing.assert_array_equal(flat(checkpoints.load(str(workdir)).variables),
                                flat(checkpoints.load(reference).variables))
  assert not os.path.exists(workdir / workdir_lib.HISTORY_FILE)


def test_two_runs_started_at_once_one_trains_the_other_is_one_error_line(reference, cache, tmp_path):
  workdir = tmp_path / 'race'
  runs = [start(cli_args(workdir, cache)), start(cli_args(workdir, cache, seed='1'))]
  outcomes = [finish(run) for run in runs]
  statuses = sorted(status for status, _, _ in outcomes)
  assert statuses == [0, 2], [err[-2000:] for _, _, err in outcomes]
  _, _, refused = next(o for o in outcomes if o[0] == 2)
  lines = refused.strip().splitlines()
  assert 'Traceback' not in refused and lines[-1].startswith(f'error: --workdir {workdir} is in use'), refused
  winner = next(index for index, o in enumerate(outcomes) if o[0] == 0)
  alone = reference if winner == 0 else None
  if alone is None:  # the seed-1 run won: it must equal the seed-1 run alone
    alone = str(tmp_path / 'seed1_alone')
    train.train_and_evaluate(run_config(seed='1'), alone)
  np.testing.assert_array_equal(flat(checkpoints.load(str(workdir)).variables),
                                flat(checkpoints.load(alone).variables))


def test_the_lock_of_a_killed_run_is_taken_over_and_the_resume_is_bitwise_and_said(reference, cache, tmp_path,
                                                                                      capfd):
  workdir = tmp_path / 'killed'
  victim = start(cli_args(workdir, cache))
  wait_for(lambda: os.path.exists(workdir / 'checkpoints' / '6') or victim.poll() is not None,
           what='the first checkpoint')
  os.kill(victim.pid, signal.SIGKILL)
  victim.wait()
  assert lock_holder(workdir).get('pid') == victim.pid  # the lock file names the dead holder; the OS lock is gone
  capfd.readouterr()
  train.train_and_evaluate(run_config(), str(workdir))
  err = capfd.readouterr().err
  assert f' of {workdir} (checkpoint written 20' in err, err[-2000:]  # the step, the workdir, when it was saved
  assert int(err.split('resumed from step ')[1].split()[0]) in (6, 12, 18)
  np.testing.assert_array_equal(flat(checkpoints.load(str(workdir)).variables),
                                flat(checkpoints.load(reference).variables))


@pytest.fixture
def rerun(reference, tmp_path):
  workdir = str(tmp_path / 'rerun')
  shutil.copytree(reference, workdir)
  return workdir


def test_a_rerun_with_another_setting_is_refused_naming_the_fields(rerun):
  before = snapshot(rerun)
  with pytest.raises(UserError, match=r"holds a run recorded with other settings: schedule.base_lr "
                                      r"\(0.1 -> 0.05\), seed \(0 -> 3\)\. .*--allow_config_change"):
    train.train_and_evaluate(run_config(**{'schedule.base_lr': '0.05', 'seed': '3'}), rerun)
  with pytest.raises(UserError, match=r'holds a run with a different config.init_from'):
    train.train_and_evaluate(run_config(init_from=rerun), rerun)
  # A shorter run than the recorded one is a change of what is trained, too.
  with pytest.raises(UserError, match=r'total_steps \(18 -> 12\)'):
    train.train_and_evaluate(run_config(total_steps='12', eval_every_steps='12'), rerun)
  assert snapshot(rerun) == before


def test_an_allowed_change_is_recorded_with_its_step_and_config_json_is_kept(rerun):
  config_json = open(os.path.join(rerun, 'config.json')).read()
  # Extending the run and changing the intervals needs no flag; the learning rate does.
  changed = run_config(**{'total_steps': '24', 'eval_every_steps': '24', 'schedule.base_lr': '0.05'})
  train.train_and_evaluate(changed, rerun, allow_config_change=True)
  assert open(os.path.join(rerun, 'config.json')).read() == config_json
  (entry,) = workdir_lib.read_history(rerun)
  assert entry['step'] == 18 and entry['allowed_by_flag'] is True
  assert entry['changes'] == {'eval_every_steps': [18, 24], 'schedule.base_lr': [0.1, 0.05],
                              'total_steps': [18, 24]}
  recorded = workdir_lib.recorded_config(rerun)
  assert recorded['total_steps'] == 24 and recorded['schedule']['base_lr'] == 0.05
  # The same config again is no change; the recorded one (with the history) is what the rerun is checked against.
  train.train_and_evaluate(changed, rerun)
  assert len(workdir_lib.read_history(rerun)) == 1
  assert checkpoints.latest_step(rerun) == 24


def test_the_cli_says_where_everything_is_on_stdout(reference, tmp_path):
  workdir = tmp_path / 'outcome'
  shutil.copytree(reference, workdir)
  result = subprocess.run([sys.executable] + cli_args(workdir), cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS='cpu'), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{workdir}: training already finished at step 18' in result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith(f'run in {workdir}: step 18, test_accuracy ')
  assert lines[1:] == [f'  checkpoints  {workdir}/checkpoints (latest step 18)',
                       f'  metrics      {workdir}/metrics.jsonl',
                       f'  curves       {workdir}/curves.png',
                       f'  config       {workdir}/config.json']
