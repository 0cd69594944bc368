r"""Reproduce a paper row: several seeds of one config, summarised beside the published number.

  python -m resnet_jax.reproduce --config configs/cifar.py:preact_resnet164 --seeds 5 --workdir runs/p164

Each seed trains in WORKDIR/seed_<k> (resumable: rerun the same command after an interruption), then the
test errors are summarised as the papers do: median (He et al. 2016 report medians of 5 runs) and
mean +- std (He et al. 2015 Table 6, Xie et al. 2017 Table 7), next to the row's published error. The summary
is printed as a Markdown table and written to WORKDIR/reproduce.json.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax

from resnet_jax import config as config_lib
from resnet_jax import errors
from resnet_jax import parallel
from resnet_jax import train
from resnet_jax.errors import UserError

flags.DEFINE_string('config', None, 'Config file with its row, e.g. configs/cifar.py:preact_resnet164.')
flags.DEFINE_string('workdir', None, 'Directory holding one sub-directory per seed.')
flags.DEFINE_integer('seeds', 5, 'Number of seeds (runs) to train: seeds 0..N-1, offset by config.seed.')
FLAGS = flags.FLAGS

_OVERRIDES: list[tuple[str, str]] = []


def summarize(errors: Sequence[float], published: Any = None) -> dict[str, Any]:
  """Median, mean and standard deviation (sample, as the papers' '+-') of test errors in %."""
  errors = list(errors)
  return {
      'runs': len(errors),
      'errors': errors,
      'median': statistics.median(errors),
      'mean': statistics.fmean(errors),
      'std': statistics.stdev(errors) if len(errors) > 1 else 0.0,
      'best': min(errors),
      'published': published,
  }


def markdown_table(name: str, source: str, summary: dict[str, Any]) -> str:
  published = summary['published']
  published = f'{published:.2f}' if isinstance(published, (int, float)) else (published or '–')
  return '\n'.join([
      '| row | source | published error (%) | median (%) | mean ± std (%) | best (%) | runs |',
      '|---|---|---|---|---|---|---|',
      f"| {name} | {source} | {published} | {summary['median']:.2f} | {summary['mean']:.2f} ± {summary['std']:.2f} "
      f"| {summary['best']:.2f} | {summary['runs']} |",
  ])


def reproduce(config, workdir: str, seeds: int) -> dict[str, Any]:
  """Trains `seeds` runs of `config` (seed, seed+1, ...) under `workdir` and summarises their test errors."""
  if seeds < 1:
    raise UserError(f'--seeds must be at least 1, got {seeds}')
  paper = config.get('paper') or {}
  test_errors = []
  for index in range(seeds):
    run_config = config_lib.from_json(config_lib.to_json(config))
    run_config.seed = int(config.seed) + index
    result = train.train_and_evaluate(run_config, os.path.join(workdir, f'seed_{index}'))
    test_errors.append(100.0 * result['test_error'])
  summary = summarize(test_errors, paper.get('published_error'))
  summary.update({'row': paper.get('row', config.model.name), 'source': paper.get('source', ''),
                  'note': paper.get('note', '')})
  table = markdown_table(summary['row'], summary['source'], summary)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'reproduce.json'), 'w') as file:
      json.dump(summary, file, indent=2)
    print(table)
  return summary


def _parse_flags(argv):
  with errors.exit_on_error():
    rest, overrides = config_lib.split_override_args(argv)
  _OVERRIDES.extend(overrides)
  try:
    return FLAGS(rest)
  except flags.Error as error:
    errors.fail(f'{error}; see --help')


def main(argv):
  del argv
  with errors.exit_on_error():
    if not FLAGS.config or not FLAGS.workdir:
      raise UserError('--config and --workdir are required, e.g. --config configs/cifar.py:resnet110 '
                      '--workdir runs/resnet110')
    parallel.initialize_distributed()
    reproduce(config_lib.build_config(FLAGS.config, _OVERRIDES), FLAGS.workdir, FLAGS.seeds)


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # Orbax's per-restore INFO lines are not for the terminal
  app.run(main, flags_parser=_parse_flags)
