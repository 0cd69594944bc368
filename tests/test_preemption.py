"""Preemption, checked as a cluster does it: SIGKILL at random moments (also during an asynchronous checkpoint
write), SIGTERM at a random step for device-resident and streamed input. (That a run's metrics.jsonl is the same but for
its timing fields each time it runs: tests/test_train.py's golden metrics; that another seed differs:
tests/test_reproduce.py.)

Every run is the command line of tests/kill_loop.py (a tiny network on digits, a log line every step, a
checkpoint every 5 steps, 30 steps) on one CPU device; one uninterrupted run per input pipeline is trained once
per module and compared with, and a compilation cache shared by the module's runs keeps the compiles short.
tests/kill_loop.py --kills 20 is the long form of the first test.
"""

import random
import re
import signal
import time

import pytest

import kill_loop
from kill_loop import Run, checkpoint_dirs, check_metric_steps, command, final_parameters, metric_records, \
    without_timing

TOTAL, EVERY = 30, 5
STREAMED = ('--config.dataset.pipeline=grain', '--config.input.num_workers=0')
PIPELINES = {'device': (), 'grain': STREAMED}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, cache):
  """pipeline -> the workdir of an uninterrupted run of the module's command (trained when first asked for)."""
  runs = {}

  def get(pipeline):
    if pipeline not in runs:
      workdir = str(tmp_path_factory.mktemp(f'uninterrupted_{pipeline}'))
      _run_to_completion(command(workdir, TOTAL, EVERY, cache, PIPELINES[pipeline]))
      runs[pipeline] = workdir
    return runs[pipeline]

  return get


def _run_to_completion(args):
  run = Run(args)
  code = run.finish()
  assert code == 0, run.output()[-3000:]
  return run


def _assert_same_run(workdir, reference):
  """Final parameters bitwise equal, metrics.jsonl equal but for timing, one training line per step."""
  (step, params), (reference_step, reference_params) = final_parameters(workdir), final_parameters(reference)
  assert step == reference_step == TOTAL
  assert (params == reference_params).all()  # bitwise on CPU
  records = metric_records(workdir)
  check_metric_steps(records, TOTAL)
  assert without_timing(records) == without_timing(metric_records(reference))


def test_sigkill_at_random_moments_and_mid_save_resumes_from_the_last_complete_checkpoint(
    tmp_path, uninterrupted, cache):
  """3 SIGKILLs (one at startup, one when a checkpoint's temporary directory appears, one at a random step):
  each resume starts from the newest complete checkpoint and loses only the save in flight; the completed run
  equals the uninterrupted one. The invariants are checked inside run_kill_loop."""
  lines = []
  summary = kill_loop.run_kill_loop(str(tmp_path), kills=3, seed=0, checkpoint_every=EVERY, total_steps=TOTAL,
                                    reference=uninterrupted('device'), cache_dir=cache, log=lines.append)
  assert len(summary.kills) == 3, lines
  assert summary.mid_save >= 1, lines  # at least one kill hit an asynchronous checkpoint write
  assert all(kill.steps_lost is not None for kill in summary.kills), lines
  assert summary.max_steps_lost < 2 * EVERY, lines  # the save in flight and the steps run while it was written


@pytest.mark.parametrize('pipeline', ['device', 'grain'])
def test_sigterm_at_a_random_step_saves_that_step_and_the_resumed_run_is_bitwise_the_uninterrupted_one(
    tmp_path, uninterrupted, cache, pipeline):
  reference = uninterrupted(pipeline)
  target = random.Random(f'sigterm-{pipeline}').choice([s for s in range(2, TOTAL - 2) if s % EVERY])
  workdir = str(tmp_path / 'preempted')
  args = command(workdir, TOTAL, EVERY, cache, PIPELINES[pipeline])
  run = Run(args)
  while run.running() and (run.last_step or 0) < target:  # the progress output names every step
    time.sleep(0.005)
  run.proc.send_signal(signal.SIGTERM)
  code = run.finish()
  output = run.output()
  assert code == 0, output[-3000:]
  stopped = int(re.search(r'SIGTERM: saved a checkpoint at step (\d+)', output).group(1))
  assert target <= stopped < TOTAL and stopped == run.last_step
  steps, tmp = checkpoint_dirs(workdir)
  assert max(steps) == stopped and not tmp  # the save completed before the exit
  check_metric_steps(metric_records(workdir), stopped)

  resumed = _run_to_completion(args)  # the same command resumes
  assert resumed.steps[0] == stopped + 1
  _assert_same_run(workdir, reference)
