"""Faults of preemptible pods, made for real in subprocesses (issue 15): the disk fills up during a save
(RLIMIT_FSIZE), a run resumes or is evaluated on another topology (1 device, 8 devices, 2 processes x 2 devices),
and one process of a multi-process run is killed.

All runs share the suite's persistent compilation cache (tests/conftest.py): a topology's train step is compiled
once for the suite (tests/test_distributed.py's network).
"""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, xla_flags
from test_distributed import TINY, _flat, _free_port
from resnet_jax import checkpoints
from resnet_jax import evaluate
from resnet_jax import parallel

# test_distributed's network (one unit per stage), a log line every 2 steps, every checkpoint kept.
SMALL = [*TINY, '--config.log_every_steps=2', '--config.keep_checkpoints=10']
# A survivor that has not exited this long after the kill is hung (it exits in about a second; the heartbeat
# timeout, parallel.HEARTBEAT_TIMEOUT_S, bounds the cases where no collective fails at once).
SURVIVOR_TIMEOUT_S = 120
# XLA's CPU collectives time out after 30 s here: a process compiling its train step that much later than the other
# (on a loaded 2-core machine) would fail the run. Generous, as on a real machine; a killed process fails the
# collectives at once regardless.
COLLECTIVE_TIMEOUT_S = 300


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """Noise images: no BN channel at a ReLU kink (see the topology test)."""
  root = tmp_path_factory.mktemp('topology')
  rng = np.random.default_rng(0)
  for split, n in (('train', 256), ('test', 40)):
    np.savez(root / f'noise_{split}.npz', images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, n))
  return [f'--config.dataset.name=npz:{root}/noise']


def _command(shared, workdir, steps, checkpoint_every=2, *extra):
  return [sys.executable, '-m', 'resnet_jax.main', *SMALL, *shared, f'--config.total_steps={steps}',
          f'--config.checkpoint_every_steps={checkpoint_every}', '--workdir', str(workdir), *extra]


def _start(command, devices=1, processes=1, **popen):
  """`command` as `processes` processes (gloo collectives) of `devices` fake CPU devices each."""
  port = _free_port()
  procs = []
  for process_id in range(processes):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
    if processes > 1:
      env['XLA_FLAGS'] += f' --xla_cpu_collective_timeout_seconds={COLLECTIVE_TIMEOUT_S}'
      env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(process_id))
    procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, **popen))
  return procs


def _run(command, devices=1, processes=1):
  """Runs to the end; every process must succeed."""
  procs = _start(command, devices, processes)
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('error:')]


# ----------------------------------------------------------------------------------------------------------
# 1. The disk fills up during a save.


def test_a_full_disk_during_a_save_stops_naming_the_step_and_the_same_command_resumes(tmp_path, shared):
  """RLIMIT_FSIZE makes the kernel refuse to grow any file past 8 KiB (EFBIG; Python ignores SIGXFSZ): the
  config, metrics and event files of a tiny run fit, a checkpoint's files (15-45 KiB) do not."""
  workdir = tmp_path / 'run'
  _run(_command(shared, workdir, 2))  # the checkpoint of step 2, saved before the disk fills
  command = _command(shared, workdir, 8)
  limit = 8 * 1024
  full = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS='cpu'),
                        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
  assert full.returncode == 2, full.stderr[-3000:]
  # One error line, among Orbax's and TensorStore's reports of the failed writes, which their threads may print
  # into the same line (docs/RELIABILITY.md, gaps).
  [error] = [line[line.index('error: saving'):] for line in full.stderr.splitlines() if 'error: saving' in line]
  assert error.startswith(f'error: saving the checkpoint of step 4 in {workdir} failed (File too large'), error
  assert error.endswith('rerun the same command: it resumes from step 2')
  assert checkpoints.Checkpointer(str(workdir), read_only=True).all_steps() == [2]
  assert checkpoints.load(str(workdir)).step == 2  # intact
  steps = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
  assert max(steps) <= 6  # stopped at the next save, not after the last step

  _run(command)  # the same command, with room on the disk
  assert checkpoints.Checkpointer(str(workdir), read_only=True).all_steps() == [2, 4, 6, 8]
  assert checkpoints.load(str(workdir)).step == 8


# ----------------------------------------------------------------------------------------------------------
# 2. Another topology on resume and on evaluation.


def test_a_run_resumes_and_evaluates_on_other_topologies_with_the_same_parameters(tmp_path, shared):
  """One run, 2 steps at a time, on 8 devices -> 1 device -> 2 processes x 2 devices -> 8 devices: every
  checkpoint equals the uninterrupted single-device run's at the same step (`checkpoints.load`, which restores
  onto one device, also of the 2 x 2 checkpoint), and so does every logged training loss. The 2 x 2 checkpoint
  also evaluates on 2 devices. (A 2 x 2 checkpoint resumed by one process on one device:
  tests/test_cloud_workdirs.py::test_two_processes_write_one_checkpoint_to_the_bucket_resumed_on_one_device.)

  This is also the suite's device- and process-count invariance check: the first stretch trains from the
  initialisation on 8 devices, the third on 2 processes, each against the 1-device run (up to float
  reassociation). Noise images, not digits: the digits' constant backgrounds put whole BN channels at a ReLU's
  kink, where a last-bit difference in a reduction flips the gradient of thousands of positions at once."""
  _run(_command(shared, tmp_path / 'straight', 8))
  workdir = tmp_path / 'moved'
  for steps, devices, processes in ((2, 8, 1), (4, 1, 1), (6, 2, 2)):
    _run(_command(shared, workdir, steps), devices, processes)
  _run(_command(shared, workdir, 8), devices=8)

  def same(step, other):
    a = checkpoints.load(str(tmp_path / 'straight'), step=step)
    b = checkpoints.load(str(tmp_path / other), step=step)
    assert a.step == b.step == step
    np.testing.assert_allclose(_flat(b.variables), _flat(a.variables), rtol=1e-5, atol=1e-6,
                               err_msg=f'{other} step {step}')

  for step in (2, 4, 6, 8):
    same(step, 'moved')
  # The training loss of every logged stretch (2 steps each), whatever topology trained it: the same global
  # batches and global BN statistics on 8 devices, 1 device and 2 processes x 2 devices (gloo collectives).
  train_losses = {name: {line['step']: line['train_loss'] for line in map(json.loads, open(tmp_path / name / 'metrics.jsonl'))
                         if 'train_loss' in line} for name in ('straight', 'moved')}
  assert sorted(train_losses['moved']) == [2, 4, 6, 8]
  for step, loss in train_losses['moved'].items():
    assert loss == pytest.approx(train_losses['straight'][step], rel=1e-5), step
  final = {name: [json.loads(line) for line in open(tmp_path / name / 'metrics.jsonl')][-1]
           for name in ('straight', 'moved')}  # evaluated on 1 and 8 devices
  assert final['moved']['step'] == 8
  assert final['moved']['test_loss'] == pytest.approx(final['straight']['test_loss'], rel=1e-4)

  # The checkpoint written by 2 processes x 2 devices, evaluated here (`--mode eval`'s function) on 2 devices.
  result = evaluate.evaluate_checkpoint(str(workdir), step=6)
  record = json.loads(open(workdir / 'eval_results.jsonl').readlines()[-1])
  assert record['step'] == 6 and record['num_examples'] == 40
  assert record['test_accuracy'] == pytest.approx(result['test_accuracy'])
  assert 0 <= record['test_accuracy'] <= 1 and np.isfinite(record['test_loss'])


# ----------------------------------------------------------------------------------------------------------
# 3. One process of a multi-process run killed.


def _saved_steps(workdir):
  """Complete checkpoint steps (Orbax renames a step's directory into place when it is complete)."""
  directory = workdir / 'checkpoints'
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if directory.is_dir() else []


def test_the_survivor_of_a_killed_process_exits_with_one_error_line_and_a_rerun_completes(tmp_path, shared):
  """SIGKILL one of 2 processes (process 1, then, in the rerun, the coordinator) once a checkpoint is saved: the
  other stops at its next collective with one error line and exit status 4 (parallel.EXIT_LOST_PROCESS), not a
  page of gloo and coordination-service errors followed by a wait at JAX's shutdown barrier and an abort.
  Restarting both processes with the same command resumes from the newest checkpoint and completes."""
  workdir = tmp_path / 'run'
  command = _command(shared, workdir, 40, 5)
  for victim in (1, 0):
    before = max(_saved_steps(workdir), default=0)
    procs = _start(command, devices=1, processes=2)
    deadline = time.monotonic() + 600
    while max(_saved_steps(workdir), default=0) <= before:  # a new checkpoint: training is under way
      assert all(proc.poll() is None for proc in procs), [proc.communicate()[1][-3000:] for proc in procs]
      assert time.monotonic() < deadline
      time.sleep(0.05)
    killed_at = time.monotonic()
    procs[victim].send_signal(signal.SIGKILL)
    survivor = procs[1 - victim]
    try:
      _, err = survivor.communicate(timeout=SURVIVOR_TIMEOUT_S)
    finally:
      survivor.kill()  # if it hung
      procs[victim].communicate()
    print(f'survivor (process {1 - victim}) exited {time.monotonic() - killed_at:.1f}s after process {victim} '
          'was killed')
    assert survivor.returncode == parallel.EXIT_LOST_PROCESS, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    [error] = _error_lines(err)
    assert error.startswith(f'error: process {1 - victim} of 2 stopped: another process of the run died'), error
    assert str(workdir) in error and 'restart every process with the same command' in error
    assert before < max(_saved_steps(workdir)) < 40

  _run(command, processes=2)
  assert checkpoints.load(str(workdir)).step == 40
  steps = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
  assert steps == sorted(steps) and steps[-1] == 40  # the lines after the checkpoint resumed from are dropped
