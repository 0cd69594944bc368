r"""Several `python -m resnet_jax.benchmark` runs in ONE process (one interpreter and one device start-up for all),
each with its own patches of patched_benchmark.py applied and undone around it.

  python benchmarks/experiments/multi_benchmark.py SPEC.json

SPEC.json: a list of {"tag": str, "patches": "p1,p2" or "", "args": [benchmark arguments]}. A run that fails
prints one `failed TAG: reason` line and the next one runs. The profile summary (--profile) keeps the top 30
operations, and a failure to read the trace is recorded (profile_error) instead of losing the run's figures.
XLA_FLAGS are per process: variants that differ in them need one process each.
"""

import functools
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import patched_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position


def _robust_profile_summary(original):
  @functools.wraps(original)
  def summary(trace_dir, steps, top=30):
    try:
      return original(trace_dir, steps, top=max(top, 30))
    except Exception as error:  # pylint: disable=broad-except
      return {'profile_error': f'{type(error).__name__}: {error}'}
  return summary


def main(argv):
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  benchmark.profile_summary = _robust_profile_summary(benchmark.profile_summary)
  with open(argv[0]) as f:
    spec = json.load(f)
  failures = 0
  for item in spec:
    tag = item['tag']
    names = [p.strip() for p in item.get('patches', '').split(',') if p.strip()]
    undos = []
    try:
      undos = [patched_benchmark.PATCHES[name]() for name in names]
      record = benchmark.run(list(item['args']) + ['--tag', tag])
      summary = {key: record.get(key) for key in ('step_ms', 'images_per_sec', 'images_per_sec_pipelined',
                                                  'compile_s', 'profile_busy_ms_per_step', 'mfu')}
      print(f'done {tag}: ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                         for k, v in summary.items()), flush=True)
    except BaseException as error:  # pylint: disable=broad-except  (SystemExit from a UserError too)
      failures += 1
      print(f'failed {tag}: {type(error).__name__}: {error}', flush=True)
      traceback.print_exc()
    finally:
      for undo in reversed(undos):
        undo()
  return failures


if __name__ == '__main__':
  sys.exit(1 if main(sys.argv[1:]) else 0)
