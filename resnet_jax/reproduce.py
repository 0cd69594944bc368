r"""Reproduce a paper row: several seeds of one config, summarised beside the published number.

  python -m resnet_jax.reproduce --list [FILTER]          # every paper row: --config value, source, error, recipe
  python -m resnet_jax.reproduce --config configs/cifar.py:preact_resnet164 --seeds 5 --workdir runs/p164
  python -m resnet_jax.reproduce --config ... --seeds 5 --workdir runs/p164 --print_commands   # one line per seed
  python -m resnet_jax.reproduce --config ... --seeds 5 --workdir runs/p164 --seed_index 3     # seed 3 only
  python -m resnet_jax.reproduce --aggregate runs/p164 runs/r110 runs/single_run ...

Each seed trains in WORKDIR/seed_<k> with config.seed + k (resumable: rerun the same command after an
interruption), then the test errors are summarised as the papers do: median (He et al. 2016 report medians of
5 runs) and mean +- std (He et al. 2015 Table 6, Xie et al. 2017 Table 7), next to the row's published error.
WORKDIR gets reproduce.json (the plan and the summary) and results.{md,csv}. `--aggregate` builds the
same table from existing workdirs (reproduce directories or single runs of `resnet_jax.main`), grouped by the
paper row each run's config.json records (`config.paper`), in the papers' order; unfinished runs are counted
and listed, not dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from resnet_jax import config as config_lib
from resnet_jax import errors
from resnet_jax import storage
from resnet_jax.errors import UserError

flags.DEFINE_string('config', None, 'Config file with its row, e.g. configs/cifar.py:preact_resnet164.')
flags.DEFINE_string('workdir', None, 'Directory holding one sub-directory per seed.')
flags.DEFINE_integer('seeds', 5, 'Number of seeds (runs) to train: seeds 0..N-1, offset by config.seed.')
flags.DEFINE_integer('seed_index', None, 'Train only this seed (0..seeds-1), e.g. one per machine.')
flags.DEFINE_bool('print_commands', False, 'Print the `python -m resnet_jax.main` command of every seed; train none.')
flags.DEFINE_bool('list', False, 'List the paper rows (optionally those whose line contains the argument).')
flags.DEFINE_bool('aggregate', False, 'Summarise the workdirs given as arguments (reproduce dirs or single runs).')
FLAGS = flags.FLAGS

_OVERRIDES: list[tuple[str, str]] = []
CONFIG_MODULES = ('cifar', 'imagenet')   # configs/<module>.py, each with ROWS: {row name: configs._rows.Row}
PLAN_FILE = 'reproduce.json'
RESULTS = 'results'              # WORKDIR/results.{md,csv}
SEED_DIR = re.compile(r'^seed_(\d+)$')


# ------------------------------------------------------------------------------------------------- the rows

@dataclasses.dataclass(frozen=True)
class PaperRow:
  config: str       # the --config value: configs/cifar.py:resnet110
  name: str         # the row: resnet110
  spec: Any         # configs._rows.Row (model, source, published_error, recipe, dataset, note)
  order: int        # position in the papers' order


def _paper_key(source: str, index: int):
  """Papers' order: by year, then author, then table (or section / figure) number, then the configs' order."""
  year = re.search(r'\b(19|20)\d\d\b', source)
  number = re.search(r'(Table|Sec\.|Fig\.)\s*(\d+)', source)
  author = source.split(' et al.')[0] if year else source
  return (int(year.group(0)) if year else 9999, author, int(number.group(2)) if number else 99, index)


def config_rows() -> dict[str, dict]:
  """`{module: ROWS}` of configs/cifar.py and configs/imagenet.py, imported as the README's one-liner does (from
  the checkout, or the copy installed with the package)."""
  config_lib.import_configs()
  return {module: importlib.import_module(f'configs.{module}').ROWS for module in CONFIG_MODULES}


def paper_rows() -> list[PaperRow]:
  """Every paper row of configs/cifar.py and configs/imagenet.py, in the papers' order."""
  found = []
  for module, table in config_rows().items():
    for name, spec in table.items():
      found.append((f'configs/{module}.py:{name}', name, spec))
  keys = sorted(range(len(found)), key=lambda i: _paper_key(found[i][2].source, i))
  return [PaperRow(*found[i], order=rank) for rank, i in enumerate(keys)]


def recipe_summary(config) -> str:
  """The recipe at a glance: length, batch, learning-rate schedule, warm-up, optimizer."""
  def count(value):
    return f'{value / 1000:g}k' if value >= 1000 and value % 100 == 0 else f'{value:g}'
  schedule, optimizer = config.schedule, config.optimizer
  if config.get('total_steps') is not None:
    length, unit = f'{count(config.total_steps)} steps', ''
  else:
    length, unit = f'{config.total_epochs:g} epochs', 'ep '
  bounds = schedule.get('boundaries_steps') or schedule.get('boundaries_epochs') or ()
  lr = f'lr {schedule.base_lr:g}'
  if schedule.name == 'step' and bounds:
    lr += f' /{1 / schedule.decay_factor:g} at {unit}{",".join(count(b) for b in bounds)}'
  elif schedule.name != 'step':
    lr += f' {schedule.name}'
  parts = [length, f'batch {config.batch_size}', lr]
  if schedule.get('warmup', 'none') != 'none':
    warm = schedule.get('warmup_steps')
    warm = f'{warm} steps' if warm is not None else f"{schedule.get('warmup_epochs'):g} epochs"
    parts.append(f"warm-up {warm} {schedule.warmup}"
                 + (f' {schedule.base_lr * schedule.warmup_factor:g}' if schedule.warmup == 'constant' else ''))
  parts.append(f'wd {optimizer.weight_decay:g}' + (', Nesterov' if optimizer.get('nesterov') else ''))
  return ', '.join(parts)


def _published(value) -> str:
  return f'{value:.2f}' if isinstance(value, (int, float)) else '–'


def list_rows(pattern: str = '') -> list[str]:
  """Lines of `--list`: one per row whose line contains `pattern` (ignoring case and '_' vs ' '); raises if
  none does."""
  lines = []
  for row in paper_rows():
    config = config_lib.build_config(os.path.join(config_lib.configs_directory(), row.config.split('/', 1)[1]))
    note = f' [{row.spec.note}]' if row.spec.note else ''
    lines.append(f'{row.config:<58} {row.spec.source}{note} | published {_published(row.spec.published_error)} '
                 f'| {row.spec.model} | {row.spec.dataset} | {recipe_summary(config)}')
  def norm(text):  # case and '_' / ' ' do not matter: `--list table_1` finds "Table 1"
    return text.lower().replace('_', ' ')
  selected = [line for line in lines if norm(pattern) in norm(line)]
  if not selected:
    raise UserError(f'no paper row matches {pattern!r}; `python -m resnet_jax.reproduce --list` shows all '
                    f'{len(lines)}')
  return selected


# ------------------------------------------------------------------------------------------------- seeds

@dataclasses.dataclass(frozen=True)
class SeedRun:
  index: int
  seed: int
  workdir: str


def seed_runs(config, workdir: str, seeds: int) -> list[SeedRun]:
  """The runs of a reproduction: seed config.seed + k in WORKDIR/seed_k, k = 0..seeds-1 (the one place)."""
  if seeds < 1:
    raise UserError(f'--seeds must be at least 1, got {seeds}')
  return [SeedRun(k, int(config.seed) + k, os.path.join(workdir, f'seed_{k}')) for k in range(seeds)]


def seed_config(config, run: SeedRun):
  run_config = config_lib.from_json(config_lib.to_json(config))
  run_config.seed = run.seed
  return run_config


def commands(spec: str, overrides: Sequence[tuple[str, str]], config, workdir: str, seeds: int) -> list[str]:
  """One `python -m resnet_jax.main` line per seed, training exactly what `reproduce` trains."""
  extra = ''.join(f' {shlex.quote(f"--config.{path}={value}")}' for path, value in overrides if path != 'seed')
  return [f'python -m resnet_jax.main --config {shlex.quote(spec)} --workdir {shlex.quote(run.workdir)}{extra} '
          f'--config.seed={run.seed}' for run in seed_runs(config, workdir, seeds)]


def reproduce(config, workdir: str, seeds: int, seed_index: Optional[int] = None) -> dict[str, Any]:
  """Trains the runs of `config` under `workdir` (all, or only `seed_index`); writes reproduce.json and
  results.{md,csv}; returns the row's summary (see `aggregate`)."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top  (--list/--aggregate need no JAX)
  import jax  # pylint: disable=g-import-not-at-top
  runs = seed_runs(config, workdir, seeds)
  if seed_index is not None and not 0 <= seed_index < seeds:
    raise UserError(f'--seed_index {seed_index} is out of range: --seeds {seeds} gives seeds 0..{seeds - 1}')
  root = storage.resolve(workdir)
  if storage.exists(root) and not storage.is_dir(root):
    raise UserError(f'--workdir {workdir} is a file, not a directory; choose another path')
  paper = dict(config.get('paper') or {})
  plan = {'row': paper.get('row', config.model.name), 'source': paper.get('source', ''),
          'published': paper.get('published_error'), 'note': paper.get('note', ''), 'seeds': seeds,
          'runs': [dataclasses.asdict(run) for run in runs]}
  chosen = [run for run in runs if seed_index is None or run.index == seed_index]
  # The plan is written when the first seed's run has passed its checks (train_and_evaluate refuses a bad config
  # before it writes anything), so that a refused reproduction leaves nothing behind either.
  planned = storage.exists(root / PLAN_FILE)
  for number, run in enumerate(chosen, 1):
    if jax.process_index() == 0:
      print(f'== seed {run.index} ({number} of {len(chosen)}): config.seed={run.seed}, workdir {run.workdir}',
            file=sys.stderr, flush=True)
    try:
      train.train_and_evaluate(seed_config(config, run), run.workdir)
    except BaseException:  # refused (nothing written), or failed or interrupted after the run started
      if storage.exists(run.workdir):
        _write_plan(root, plan, planned=planned)
      raise
    planned = _write_plan(root, plan, planned=planned)
  groups = aggregate([workdir])
  summary = groups[0] if groups else {}
  if jax.process_index() == 0:
    written = write_results(groups, workdir)
    _write_json(root / PLAN_FILE, {**plan, 'summary': summary})
    print(markdown_table(groups))
    print(f"results in {' and '.join(written)}; the plan and the summary in {root / PLAN_FILE}")
  return summary


def _write_plan(root, plan: dict[str, Any], planned: bool) -> bool:
  """Writes WORKDIR/reproduce.json (process 0) unless it is already written; returns True."""
  import jax  # pylint: disable=g-import-not-at-top  (--list/--aggregate need no JAX)
  if not planned and jax.process_index() == 0:
    storage.make_dirs(root)
    _write_json(root / PLAN_FILE, plan)
  return True


def _write_json(path, value) -> None:
  storage.write_text(path, json.dumps(value, indent=2))


# ------------------------------------------------------------------------------------------------- aggregation

def summarize(errors_pct: Sequence[float], published: Any = None) -> dict[str, Any]:
  """Median, mean and standard deviation (sample, as the papers' '+-') of test errors in %."""
  errors_pct = list(errors_pct)
  if not errors_pct:
    return {'runs': 0, 'errors': [], 'median': None, 'mean': None, 'std': None, 'best': None,
            'published': published}
  return {
      'runs': len(errors_pct),
      'errors': errors_pct,
      'median': statistics.median(errors_pct),
      'mean': statistics.fmean(errors_pct),
      'std': statistics.stdev(errors_pct) if len(errors_pct) > 1 else 0.0,
      'best': min(errors_pct),
      'published': published,
  }


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _run_identity(workdir: str) -> str:
  """One name per run directory however it is reached (relative path, symlink, trailing slash): local paths
  by their real path, bucket URLs as resolved."""
  path = storage.resolve(workdir)
  return str(path) if storage.is_remote(path) else os.path.realpath(os.fspath(path))


def run_status(workdir: str) -> dict[str, Any]:
  """What a run directory holds: its row (config.paper, else the model name), steps done of total, the final
  test error (%) if it finished (an evaluation at the last step). Raises UserError for a config.json or
  metrics.jsonl that cannot be read (cut short or edited by hand); a metrics.jsonl whose last line was cut short
  by a kill is read without that line, as training reads it, and an evaluation with a non-finite accuracy is
  dropped with a warning."""
  # Imported here: they load JAX, which --list and the config checks before a refusal do not need.
  from resnet_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = workdir_lib.recorded_config(workdir)  # config.json with its recorded changes (total_steps, ...)
  if not isinstance(config, dict) or not isinstance(config.get('model'), dict) or 'name' not in config['model']:
    raise UserError(f"{storage.resolve(workdir) / workdir_lib.CONFIG_FILE} holds no run config (no model.name)")
  records = metrics_lib.read_metrics(workdir)
  total = config.get('total_steps')
  if total is None and config.get('total_epochs') is not None:  # the training lines record step/steps_per_epoch
    per_epoch = [r['step'] / r['epoch'] for r in records if r.get('epoch')]
    total = int(math.ceil(config['total_epochs'] * per_epoch[-1] - 1e-6)) if per_epoch else None
  evals = []
  for record in records:
    if 'test_accuracy' not in record:
      continue
    if isinstance(record['test_accuracy'], (int, float)) and math.isfinite(record['test_accuracy']):
      evals.append(record)
    else:
      _warn(f"{workdir}: the evaluation at step {record.get('step')} has test_accuracy "
            f"{record['test_accuracy']!r}; not counted")
  step = max((r['step'] for r in records if isinstance(r.get('step'), int)), default=0)
  finished = bool(evals) and total is not None and evals[-1]['step'] >= total
  paper = config.get('paper') or {}
  return {'workdir': workdir, 'row': paper.get('row') or config['model']['name'], 'source': paper.get('source', ''),
          'published': paper.get('published_error'), 'note': paper.get('note', ''), 'seed': config.get('seed'),
          'started': True, 'step': step, 'total_steps': total, 'finished': finished,
          'test_error': 100.0 * (1.0 - evals[-1]['test_accuracy']) if evals else None}


def _readable_run(workdir: str) -> Optional[dict[str, Any]]:
  """run_status, or None with one warning for a run whose files cannot be read: the other runs still count."""
  try:
    return run_status(workdir)
  except UserError as error:
    _warn(f'{workdir} skipped: {error}')
    return None


def find_runs(directory: str) -> list[dict[str, Any]]:
  """The runs of `directory`: itself if it is a run, else its seed_<k> sub-directories (planned seeds that have
  not started are listed as such). A run whose config.json or metrics.jsonl cannot be read is skipped with a
  warning. Raises UserError if it holds no run."""
  root = storage.resolve(directory)
  if not storage.is_dir(root):
    raise UserError(f'{directory}: no such directory')
  if storage.exists(root / 'config.json'):
    run = _readable_run(directory)
    return [run] if run else []
  plan = {}
  if storage.exists(root / PLAN_FILE):
    try:
      plan = json.loads(storage.read_text(root / PLAN_FILE))
    except ValueError:
      _warn(f'{root / PLAN_FILE} is not valid JSON; the seeds that have not started are not listed')
  seeds = sorted((int(m.group(1)), name) for name in storage.list_names(root) if (m := SEED_DIR.match(name)))
  runs, seen = [], set()
  for index, name in seeds:
    path = os.path.join(directory, name)
    if storage.exists(root / name / 'config.json'):
      seen.add(index)
      run = _readable_run(path)
      if run:
        runs.append(run)
  for planned in plan.get('runs', []) if isinstance(plan, dict) else []:
    if planned['index'] not in seen:
      runs.append({'workdir': planned['workdir'], 'row': plan.get('row'), 'source': plan.get('source', ''),
                   'published': plan.get('published'), 'note': plan.get('note', ''), 'seed': planned['seed'],
                   'started': False, 'step': 0, 'total_steps': None, 'finished': False, 'test_error': None})
  if not runs and not seen:
    raise UserError(f'{directory}: no runs (neither a config.json nor seed_<k>/config.json); '
                    'pass a run directory or a reproduce --workdir')
  return runs


def _row_order() -> dict[tuple[str, str], int]:
  return {(row.name, row.spec.source): row.order for row in paper_rows()}


def aggregate(directories: Sequence[str]) -> list[dict[str, Any]]:
  """One summary per paper row over all runs found under `directories`, in the papers' order."""
  runs, seen = [], {}
  for directory in directories:
    for run in find_runs(directory):
      identity = _run_identity(run['workdir'])
      if identity in seen:  # given twice, directly or through its reproduce directory
        also = '' if seen[identity] == run['workdir'] else f" (as {seen[identity]} too)"
        _warn(f"{run['workdir']} is given more than once{also}; counted once")
        continue
      seen[identity] = run['workdir']
      runs.append(run)
  if not runs:
    raise UserError(f"no readable runs in {', '.join(directories)} (see the warnings above)")
  groups: dict[tuple[str, str], list[dict]] = {}
  for run in runs:
    groups.setdefault((run['row'], run['source']), []).append(run)
  order = _row_order()
  summaries = []
  for (row, source), members in groups.items():
    done = [run for run in members if run['finished']]
    summary = summarize([run['test_error'] for run in done], members[0]['published'])
    summary.update({'row': row, 'source': source, 'note': members[0]['note'], 'finished': len(done),
                    'total': len(members),
                    'unfinished': [{'workdir': run['workdir'], 'started': run['started'], 'step': run['step'],
                                    'total_steps': run['total_steps'],
                                    'test_error': run['test_error']} for run in members if not run['finished']]})
    summaries.append(summary)
  summaries.sort(key=lambda s: (order.get((s['row'], s['source']), len(order)), _paper_key(s['source'], 0),
                                s['row']))
  return summaries


def _pct(value) -> str:
  return '–' if value is None else f'{value:.2f}'


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
  lines = ['| row | source | published error (%) | median (%) | mean ± std (%) | best (%) | runs | finished/total |',
           '|---|---|---|---|---|---|---|---|']
  for s in summaries:
    mean = '–' if s['mean'] is None else f"{s['mean']:.2f} ± {s['std']:.2f}"
    published = _published(s['published']) if s['published'] is not None else (s.get('note') or '–')
    lines.append(f"| {s['row']} | {s['source'] or '–'} | {published} | {_pct(s['median'])} | {mean} "
                 f"| {_pct(s['best'])} | {s['runs']} | {s['finished']}/{s['total']} |")
  unfinished = [(s['row'], run) for s in summaries for run in s['unfinished']]
  if unfinished:
    lines.append('')
    lines.append('Unfinished runs:')
    for row, run in unfinished:
      at = f"step {run['step']} of {run['total_steps'] or '?'}" if run.get('started', True) else 'not started'
      last = '' if run['test_error'] is None else f", last test error {run['test_error']:.2f}%"
      lines.append(f"- {row}: {run['workdir']} ({at}{last})")
  return '\n'.join(lines)


CSV_FIELDS = ('row', 'source', 'published', 'median', 'mean', 'std', 'best', 'runs', 'finished', 'total')


def csv_text(summaries: Sequence[dict[str, Any]]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(CSV_FIELDS)
  for s in summaries:
    writer.writerow(['' if s[field] is None else (f'{s[field]:.4f}' if isinstance(s[field], float) else s[field])
                     for field in CSV_FIELDS])
  return out.getvalue()


def write_results(summaries: Sequence[dict[str, Any]], directory: str) -> list[str]:
  """WORKDIR/results.{md,csv}: the Markdown table, and one CSV line per row. Returns the paths written; a
  directory that cannot be written is a UserError."""
  paths = [storage.resolve(directory) / f'{RESULTS}.md', storage.resolve(directory) / f'{RESULTS}.csv']
  try:
    storage.make_dirs(directory)
    storage.write_text(paths[0], markdown_table(summaries) + '\n')
    storage.write_text(paths[1], csv_text(summaries))
  except OSError as error:
    raise UserError(f"cannot write the results to {directory} ({error.strerror or error}); pass a writable "
                    "--workdir for them") from None
  return [str(path) for path in paths]


# ------------------------------------------------------------------------------------------------- CLI


def main(argv):
  args = argv[1:]
  with errors.exit_on_error():
    if FLAGS.list:
      if len(args) > 1:
        raise UserError(f"--list takes at most one filter, got {' '.join(args)}")
      print('\n'.join(list_rows(args[0] if args else '')))
      return
    if FLAGS.aggregate:
      if not args:
        raise UserError('--aggregate needs one or more directories: reproduce workdirs or run workdirs')
      out = FLAGS.workdir or (args[0] if len(args) == 1 else None)
      if out and storage.exists(out) and not storage.is_dir(out):
        raise UserError(f'{out} is a file; pass a directory for the results table (.md and .csv) with --workdir')
      summaries = aggregate(args)
      written = write_results(summaries, out) if out else []
      print(markdown_table(summaries))
      if written:  # stderr: stdout is the table alone, ready to paste or redirect
        print(f"results in {' and '.join(written)}", file=sys.stderr)
      return
    if args:
      raise UserError(f"unexpected arguments {' '.join(args)}")
    if not FLAGS.config or not FLAGS.workdir:
      raise UserError('--config and --workdir are required, e.g. --config configs/cifar.py:resnet110 '
                      '--workdir runs/resnet110 (or --list to see the rows, --aggregate DIR... to summarise)')
    config = config_lib.build_config(FLAGS.config, _OVERRIDES)
    if FLAGS.seed_index is not None and not 0 <= FLAGS.seed_index < FLAGS.seeds:
      raise UserError(f'--seed_index {FLAGS.seed_index} is out of range: --seeds {FLAGS.seeds} gives seeds '
                      f'0..{FLAGS.seeds - 1}')
    if FLAGS.print_commands:
      print('\n'.join(commands(FLAGS.config, _OVERRIDES, config, FLAGS.workdir, FLAGS.seeds)))
      return
    from resnet_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize_distributed()
    reproduce(config, FLAGS.workdir, FLAGS.seeds, FLAGS.seed_index)


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # Orbax's per-restore INFO lines are not for the terminal
  app.run(main, flags_parser=config_lib.flags_parser(FLAGS, _OVERRIDES))
