r"""Fault injection for preemptible machines: SIGKILL a training run again and again, check every resume.

  python tests/kill_loop.py --kills 20 --workdir DIR [--seed 0] [--checkpoint_every 5]

Runs one small training command (`python -m resnet_jax.main --config configs/quickstart.py`, a tiny model,
a log line every step, a checkpoint every few steps, Orbax's asynchronous saves) uninterrupted in DIR/uninterrupted,
then the same command in DIR/killed, SIGKILLed `--kills` times at moments drawn from a seeded RNG:
  startup  a random delay after the start (while it restores, compiles, writes config.json or metrics.jsonl);
  step     at a random step (read from the progress output);
  save     the moment Orbax's temporary directory of a save appears (`checkpoints/N.orbax-checkpoint-tmp`),
           i.e. during an asynchronous checkpoint write.
After each kill the same command is started again, and the loop checks that
  * it resumes from the newest checkpoint the killed run completed (never from a partial one: a step whose
    temporary directory was left behind);
  * it loses at most the steps since that checkpoint: less than one save interval, or when it was killed during
    a save, that interval plus the steps run while it was being written;
  * a temporary directory left by a kill does not block saving that step again.
The last run completes; then no temporary directory is left, metrics.jsonl has one training line per step (no
duplicated or missing step) and equals the uninterrupted run's except for timing fields, and the final parameters
equal the uninterrupted run's bitwise (CPU).

`run_kill_loop` is the same as a function (tests/test_preemption.py runs it with a few kills).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_SUFFIX = '.orbax-checkpoint-tmp'
#: metrics.jsonl fields that depend on the wall clock (differ between identical runs).
TIMING_FIELDS = ('images_per_sec', 'compile_s')
#: A tiny residual network on the embedded digits: a run compiles and trains in seconds on one CPU core. (The
#: test suite's one-device network, tests/test_distributed.py's TINY: under the suite its compiled train step is
#: shared through the suite's compilation cache.)
TINY = ['--config', 'configs/quickstart.py', '--config.batch_size=32', '--config.schedule.boundaries_epochs=None',
        '--config.model.stage_widths=(8,16,16)', '--config.model.stage_sizes=(1,1,1)',
        '--config.eval_every_steps=1000']
KEEP = 3  # config.keep_checkpoints of configs/default.py
_STEP_LINE = re.compile(r'^step (\d+)/(\d+) \|')


def command(workdir: str, total_steps: int, checkpoint_every: int, cache_dir: str, extra=()) -> list[str]:
  """The training command line (every run of a comparison uses the same one, but for --workdir)."""
  return [sys.executable, '-m', 'resnet_jax.main', *TINY, f'--config.total_steps={total_steps}',
          '--config.log_every_steps=1', f'--config.checkpoint_every_steps={checkpoint_every}',
          f'--config.compilation_cache_dir={cache_dir}', *extra, '--workdir', str(workdir)]


def environment() -> dict[str, str]:
  """One CPU device, as tests/conftest.py's subprocesses (fast compilation: results are still bitwise equal)."""
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
              XLA_FLAGS='--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0')


class Run:
  """A training process whose stderr is read by a thread: the steps it reported, all its text."""

  def __init__(self, args: list[str]):
    self.started = time.monotonic()
    self.proc = subprocess.Popen(args, cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.text: list[str] = []
    self.steps: list[int] = []
    self.compiled = False
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.text.append(line)
      match = _STEP_LINE.match(line)
      if match:
        self.steps.append(int(match.group(1)))
      elif 'compiled the train step' in line:
        self.compiled = True

  @property
  def last_step(self) -> Optional[int]:
    return self.steps[-1] if self.steps else None

  def running(self) -> bool:
    return self.proc.poll() is None

  def finish(self, timeout: float = 600) -> int:
    """Waits for the process and for its last output (what it wrote before a kill is still read)."""
    code = self.proc.wait(timeout=timeout)
    self._reader.join(timeout=60)
    return code

  def output(self) -> str:
    return ''.join(self.text)


def checkpoint_dirs(workdir: str) -> tuple[list[int], list[str]]:
  """(complete steps, temporary directories) under WORKDIR/checkpoints."""
  directory = os.path.join(workdir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if TMP_SUFFIX in n)


def temporary_stamps(workdir: str) -> dict[str, tuple[int, int]]:
  """The temporary checkpoint directories under WORKDIR/checkpoints with (inode, ctime): a directory that Orbax
  removed and made again, or wrote into, has another ctime (the inode is often reused)."""
  directory = os.path.join(workdir, 'checkpoints')
  stamps = {}
  for name in checkpoint_dirs(workdir)[1]:
    info = os.stat(os.path.join(directory, name))
    stamps[name] = (info.st_ino, info.st_ctime_ns)
  return stamps


def metric_records(workdir: str) -> list[dict]:
  """metrics.jsonl's records; a last line cut short by a kill is left out (as a resume drops it)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  records = []
  lines = [line for line in open(path) if line.strip()]
  for index, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except ValueError:
      if index != len(lines) - 1:
        raise
  return records


def without_timing(records: list[dict]) -> list[dict]:
  """The records without wall-clock fields; records holding nothing else (compile times) left out."""
  kept = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]
  return [r for r in kept if set(r) != {'step'}]


def check_metric_steps(records: list[dict], total_steps: int, log_every: int = 1) -> None:
  """One training line per log step, in order: none duplicated, none missing."""
  steps = [r['step'] for r in records if 'train_loss' in r]
  expected = list(range(log_every, total_steps + 1, log_every))
  if steps != expected:
    duplicated = sorted({s for s in steps if steps.count(s) > 1})
    missing = sorted(set(expected) - set(steps))
    raise AssertionError(f'metrics.jsonl training steps: duplicated {duplicated}, missing {missing}')


def final_parameters(workdir: str):
  """The final checkpoint's step and variables as one float64 vector (loaded in this process)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resnet_jax import checkpoints  # pylint: disable=g-import-not-at-top
  loaded = checkpoints.load(workdir)
  flat = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(loaded.variables)])
  return loaded.step, flat


@dataclasses.dataclass
class Kill:
  """One SIGKILL: what was aimed at, the moment it landed, what the next run resumed from."""
  kind: str                      # startup | step | save
  step_at_kill: Optional[int]    # last step the killed run reported (None: killed before its first step)
  mid_save: bool                 # a temporary checkpoint directory of this run existed when it died
  saving_step: Optional[int]     # the step being saved then
  complete_steps: list[int]      # the complete checkpoints on disk after the kill
  resumed_from: Optional[int] = None  # the step the next run started from (None: it did not get that far)
  steps_lost: Optional[int] = None

  def describe(self) -> str:
    moment = 'before its first step' if self.step_at_kill is None else f'at step {self.step_at_kill}'
    save = f', during the save of step {self.saving_step}' if self.mid_save else ''
    resumed = '' if self.resumed_from is None else f'; resumed from {self.resumed_from}, lost {self.steps_lost}'
    return f'{self.kind:7s} kill {moment}{save}{resumed}'


@dataclasses.dataclass
class Summary:
  kills: list[Kill]
  total_steps: int
  checkpoint_every: int
  runs: int
  resaved: list[int]  # steps whose temporary directory, left by a kill, a later run replaced by the checkpoint

  @property
  def mid_save(self) -> int:
    return sum(k.mid_save for k in self.kills)

  @property
  def max_steps_lost(self) -> int:
    return max([k.steps_lost for k in self.kills if k.steps_lost is not None] or [0])

  def text(self) -> str:
    return (f'{len(self.kills)} kills ({self.mid_save} during a checkpoint write, '
            f"{sum(k.kind == 'startup' for k in self.kills)} at startup), {self.runs} runs, max steps lost "
            f'{self.max_steps_lost} (checkpoint every {self.checkpoint_every} of {self.total_steps} steps); '
            f'{len(self.resaved)} steps saved over a temporary directory a kill had left; final parameters '
            'bitwise equal to the uninterrupted run, metrics.jsonl without duplicated or missing steps')


def _wait_and_kill(run: Run, kind: str, target, workdir: str) -> bool:
  """Waits for the moment `kind`/`target` and SIGKILLs; False if the run finished first."""
  tmp_path = None if kind != 'save' else os.path.join(workdir, 'checkpoints', f'{target}{TMP_SUFFIX}')
  deadline = run.started + target if kind == 'startup' else None
  while run.running():
    if kind == 'startup' and time.monotonic() >= deadline:
      break
    if kind == 'step' and run.last_step is not None and run.last_step >= target:
      break
    if kind == 'save' and (os.path.exists(tmp_path) or (run.last_step or 0) >= target + 2):
      break  # (a save written faster than it is seen: killed just after, as a 'step' kill)
    time.sleep(0.0005 if kind == 'save' else 0.005)
  else:
    return False
  run.proc.send_signal(signal.SIGKILL)
  return True


def run_reference(workdir: str, total_steps: int, checkpoint_every: int, cache_dir: str) -> None:
  run = Run(command(workdir, total_steps, checkpoint_every, cache_dir))
  code = run.finish()
  if code != 0:
    raise AssertionError(f'the uninterrupted run failed ({code}):\n{run.output()[-3000:]}')


def run_kill_loop(workdir: str, kills: int, seed: int = 0, checkpoint_every: int = 5,
                  total_steps: Optional[int] = None, reference: Optional[str] = None,
                  cache_dir: Optional[str] = None, log: Callable[[str], None] = print) -> Summary:
  """Kills a run of `command` `kills` times (see the module docstring), checking each resume; then lets it
  complete and compares it with `reference` (an uninterrupted run's workdir of the same command; trained in
  WORKDIR/uninterrupted if None). Raises AssertionError on the first broken invariant."""
  c = checkpoint_every
  total_steps = total_steps or c * (kills + 3)
  cache_dir = cache_dir or os.path.join(workdir, 'compilation_cache')
  if reference is None:
    reference = os.path.join(workdir, 'uninterrupted')
    run_reference(reference, total_steps, c, cache_dir)
  killed = os.path.join(workdir, 'killed')
  rng = random.Random(seed)
  # At least one kill during a checkpoint write, and (from 3 kills) one at startup.
  kinds = [rng.choices(('startup', 'step', 'save'), weights=(1, 4, 4))[0] for _ in range(kills)]
  if kills and 'save' not in kinds:
    kinds[rng.randrange(kills)] = 'save'
  if kills >= 3 and 'startup' not in kinds:
    kinds[next(i for i, kind in enumerate(kinds) if kind != 'save' or kinds.count('save') > 1)] = 'startup'
  records: list[Kill] = []
  resaved: set[int] = set()  # steps whose temporary directory a kill left, saved again by a later run
  expected_start = 0
  runs = 0

  def start_of(run: Run) -> Optional[int]:
    return None if not run.steps else run.steps[0] - 1  # a line per step: the first is the start + 1

  while True:
    steps_before, tmp_before = checkpoint_dirs(killed)[0], temporary_stamps(killed)
    run = Run(command(killed, total_steps, c, cache_dir))
    runs += 1
    kind = kinds[len(records)] if len(records) < kills else None
    if kind == 'startup':
      target = rng.uniform(0.5, 6.0)  # seconds: restoring, compiling, writing config.json / metrics.jsonl
    elif kind == 'step':
      target = rng.randint(expected_start + 1, min(expected_start + 2 * c - 1, total_steps - 1))
    elif kind == 'save':  # the second save after the start (the first if that is the last)
      target = expected_start + 2 * c if expected_start + 2 * c < total_steps else expected_start + c
    died = kind is not None and _wait_and_kill(run, kind, target, killed)
    code = run.finish()
    started = start_of(run)
    if started is not None and started != expected_start:
      raise AssertionError(f'run {runs} started from step {started}, but the newest complete checkpoint was '
                           f'{expected_start} (on disk before it: {steps_before}, temporary: {tmp_before})')
    if records and records[-1].resumed_from is None and started is not None:
      records[-1].resumed_from = started
      records[-1].steps_lost = (records[-1].step_at_kill or started) - started
    # A temporary directory left by an earlier kill must not block saving its step again: once the run has
    # started the next save (which waits for the one before), that step is complete.
    for name in tmp_before:
      leftover = int(name.split('.')[0])
      if run.last_step is not None and run.last_step > leftover + c and started is not None and started < leftover:
        complete, temporary = checkpoint_dirs(killed)
        newer = [step for step in complete if step > leftover]  # the config keeps the newest KEEP steps
        if name in temporary or (leftover not in complete and len(newer) < KEEP):
          raise AssertionError(f'run {runs} reached step {run.last_step}, but step {leftover}, whose temporary '
                               f'directory an earlier kill left, was not saved: {complete}, {temporary}')
        resaved.add(leftover)
    if not died:
      if code != 0:
        raise AssertionError(f'run {runs} failed ({code}) after {len(records)} kills:\n{run.output()[-3000:]}')
      if kind is not None:
        raise AssertionError(f'run {runs} completed before kill {len(records) + 1} ({kind} {target}); use more '
                             'total_steps')
      break
    steps_after, tmp_after = checkpoint_dirs(killed)
    # A temporary directory that this run created (not one left by an earlier kill) is a write in flight.
    fresh_tmp = [name for name, stamp in temporary_stamps(killed).items() if tmp_before.get(name) != stamp]
    mid_save = bool(fresh_tmp)
    saving = int(fresh_tmp[0].split('.')[0]) if fresh_tmp else None
    reached = run.last_step
    record = Kill(kind=kind, step_at_kill=reached, mid_save=mid_save, saving_step=saving,
                  complete_steps=steps_after)
    newest = max(steps_after) if steps_after else 0
    # Only the save in flight may be lost: with L the last save due, the newest complete step is L, or L - c
    # when L was being written.
    if reached is not None:
      due = reached // c * c
      allowed = {due, due - c} if mid_save else {due}
      if newest not in allowed and not (newest == expected_start and due <= expected_start):
        raise AssertionError(f'after a kill at step {reached} (mid-save {mid_save}) the newest complete '
                             f'checkpoint is {newest}; expected one of {sorted(allowed)}')
    if mid_save and saving in steps_after:
      raise AssertionError(f'step {saving} is both complete and temporary: {steps_after}, {tmp_after}')
    records.append(record)
    expected_start = newest
    if reached is None:  # killed before its first step: it lost nothing more
      record.resumed_from, record.steps_lost = expected_start, 0
    log(f'kill {len(records)}/{kills}: {record.describe()} (complete checkpoints {steps_after}, temporary '
        f'{tmp_after})')

  # The completed run.
  steps, tmp = checkpoint_dirs(killed)
  if tmp:
    raise AssertionError(f'temporary checkpoint directories left after the run completed: {tmp}')
  if total_steps not in steps:
    raise AssertionError(f'no checkpoint of the last step {total_steps}: {steps}')
  mine, theirs = metric_records(killed), metric_records(reference)
  check_metric_steps(mine, total_steps)
  if without_timing(mine) != without_timing(theirs):
    raise AssertionError('metrics.jsonl differs from the uninterrupted run (other than in timing fields)')
  (step_a, a), (step_b, b) = final_parameters(killed), final_parameters(reference)
  if step_a != step_b or a.shape != b.shape or not (a == b).all():
    raise AssertionError(f'final parameters differ from the uninterrupted run (steps {step_a}, {step_b})')
  summary = Summary(kills=records, total_steps=total_steps, checkpoint_every=c, runs=runs,
                    resaved=sorted(resaved))
  log(summary.text())
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--workdir', required=True, help='a new directory (uninterrupted/, killed/ are made in it)')
  parser.add_argument('--seed', type=int, default=0, help='seeds the moments of the kills')
  parser.add_argument('--checkpoint_every', type=int, default=5)
  parser.add_argument('--total_steps', type=int, default=None, help='default: checkpoint_every * (kills + 3)')
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  summary = run_kill_loop(args.workdir, args.kills, seed=args.seed, checkpoint_every=args.checkpoint_every,
                          total_steps=args.total_steps)
  print(json.dumps({'kills': len(summary.kills), 'mid_save': summary.mid_save,
                    'startup': sum(k.kind == 'startup' for k in summary.kills),
                    'max_steps_lost': summary.max_steps_lost, 'runs': summary.runs, 'resaved': summary.resaved,
                    'moments': [dataclasses.asdict(k) for k in summary.kills]}))


if __name__ == '__main__':
  main()
