r"""The modern CIFAR row against the paper row on real images (issue 24, item 6): runs
benchmarks/peers/seed_study.py's variants and writes the results JSON, with the machine, date, commit and command,
and the README table.

  python benchmarks/experiments/modern_cifar.py --data ../shared/data/cifar10_train_5k.npz --out OUT \
      --steps 540 --seeds 2 --jobs 2 --json benchmarks/results/cpu_cifar5k_modern.json --table OUT/table.md

Variants (seed_study.VARIANTS): jax_cifar_row_ema (configs/cifar.py:resnet20, the He et al. 2015 row, keeping an EMA
that does not change its training: its `test_accuracy` is the paper row's, its `ema_test_accuracy` the paper row
with an average), jax_modern (configs/cifar.py:resnet20_modern: its `test_accuracy` is the raw weights,
`ema_test_accuracy` the row as meant) and jax_modern_no_ema (resnet20_modern_no_ema). Every run has the same
number of steps and batch (128) on the same held-out split (seed_study.write_split). `--summarize` only rewrites the
JSON and table from a finished OUT/results.json (no training).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(REPO, 'benchmarks', 'peers', 'seed_study.py')
VARIANTS = 'jax_cifar_row_ema,jax_modern,jax_modern_no_ema'
# (table row, variant, metric): the metric a row reads from each of the variant's runs.
ROWS = (('paper row `resnet20` (step lr, no mixing, no TrivialAugment)', 'jax_cifar_row_ema', 'test_accuracy'),
        ('paper row + EMA 0.9998 (the same runs, their average)', 'jax_cifar_row_ema', 'ema_test_accuracy'),
        ('modern row `resnet20_modern` (EMA, as meant)', 'jax_modern', 'ema_test_accuracy'),
        ('modern row, its raw weights (the same runs)', 'jax_modern', 'test_accuracy'),
        ('modern row without EMA `resnet20_modern_no_ema`', 'jax_modern_no_ema', 'test_accuracy'))


def machine() -> str:
  cores = os.cpu_count()
  return f'{platform.processor() or platform.machine()} CPU, {cores} cores (shared with other work: wall times vary)'


def summarize(runs: list[dict], steps: int) -> dict:
  table = {}
  for name, variant, metric in ROWS:
    chosen = sorted((run for run in runs if run['variant'] == variant and run['steps'] == steps and metric in run),
                    key=lambda run: run['seed'])
    if not chosen:
      continue
    accuracies = [run[metric] for run in chosen]
    table[name] = {'variant': variant, 'metric': metric, 'seeds': [run['seed'] for run in chosen],
                   'accuracies': accuracies, 'mean': statistics.mean(accuracies),
                   'std': statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                   'final_train_losses': [run['final_train_loss'] for run in chosen]}
  # The average does not change training: the row without it repeats the modern runs' raw weights exactly.
  by_seed = lambda variant: {run['seed']: run for run in runs if run['variant'] == variant and run['steps'] == steps}
  modern, no_ema = by_seed('jax_modern'), by_seed('jax_modern_no_ema')
  same = {seed: (modern[seed]['test_accuracy'] == no_ema[seed]['test_accuracy']
                 and modern[seed]['train_loss_by_step'] == no_ema[seed]['train_loss_by_step'])
          for seed in modern if seed in no_ema}
  return {'table': table, 'no_ema_equals_modern_raw_weights_by_seed': same}


def markdown(summary: dict, steps: int, epochs: float) -> str:
  seeds = sorted({seed for row in summary['table'].values() for seed in row['seeds']})
  lines = [f'| {steps} steps ({epochs:.0f} epochs), test accuracy on the held-out 500 | '
           + ' | '.join(f'seed {seed}' for seed in seeds) + ' | mean ± std | final train loss (mean) |',
           '|---|' + '---:|' * (len(seeds) + 2)]
  for name, row in summary['table'].items():
    cells = {seed: f'{100 * accuracy:.1f} %' for seed, accuracy in zip(row['seeds'], row['accuracies'])}
    lines.append(f'| {name} | ' + ' | '.join(cells.get(seed, '–') for seed in seeds)
                 + f" | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} % | "
                 + f"{statistics.mean(row['final_train_losses']):.3f} |")
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=540)
  parser.add_argument('--seeds', type=int, default=2)
  parser.add_argument('--jobs', type=int, default=2)
  parser.add_argument('--json', required=True)
  parser.add_argument('--table')
  parser.add_argument('--summarize', action='store_true', help='only summarise a finished OUT/results.json')
  parser.add_argument('--command', help='the command that ran the study (with --summarize; default: this one)')
  parser.add_argument('--commit', help='the commit whose code ran the study (with --summarize; default: HEAD)')
  args = parser.parse_args(argv)
  study_json = os.path.join(args.out, 'results.json')
  study_command = [sys.executable, STUDY, '--data', args.data, '--out', args.out, '--seeds', str(args.seeds),
                   '--steps', str(args.steps), '--variants', VARIANTS, '--jobs', str(args.jobs), '--json', study_json]
  if not args.summarize:
    subprocess.run(study_command, cwd=REPO, check=True)
  study = json.load(open(study_json))
  runs = [run for run in study['runs'] if 'error' not in run]
  commit = args.commit or subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True,
                                         text=True).stdout.strip()
  train_examples = 5085 - study.get('split', {}).get('test_examples', 500)
  epochs = args.steps * 128 / train_examples
  result = {
      'what': (f'ResNet-20 on the shared 5k CIFAR-10 file\'s held-out split ({train_examples:,} train / 500 test, '
               f'permutation seed 22), {args.steps} steps of batch 128 ({epochs:.1f} epochs), {args.seeds} seeds: '
               'the paper row configs/cifar.py:resnet20 vs the modern row resnet20_modern vs resnet20_modern_no_ema'),
      'command': args.command or ' '.join(shlex.quote(part) for part in [sys.executable] + sys.argv),
      'study_command': ' '.join(shlex.quote(part) for part in study_command),
      'machine': machine(), 'device': 'cpu', 'date': datetime.date.today().isoformat(), 'commit': commit,
      'split': study.get('split'), 'steps': args.steps, 'epochs': epochs,
      **summarize(runs, args.steps), 'runs': runs, 'errors': [run for run in study['runs'] if 'error' in run]}
  with open(args.json, 'w') as f:
    json.dump(result, f, indent=1)
  text = markdown(result, args.steps, epochs)
  print(text)
  if args.table:
    with open(args.table, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
