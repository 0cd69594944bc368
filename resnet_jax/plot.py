r"""Paper-style training curves of several runs in one figure (He et al. 2015 Fig. 6, He et al. 2016 Fig. 6).

  python -m resnet_jax.plot runs/resnet20 runs/plain20 runs/p164 --out fig6.png [--metric error|loss]

Per run: the training error (thin, dashed; `train_accuracy` of metrics.jsonl, averaged over each log interval)
and the test error (bold) against iterations, in one colour, named by the run's paper row (config.json's
`paper.row`) or its model. A reproduce directory (seed_<k> sub-directories) is drawn as the median over its
seeds with a min-max band. The drawing itself is `resnet_jax.metrics.draw_curves`, which also draws each run's
curves.png.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from typing import Any, Sequence

from absl import app
from absl import flags

from resnet_jax import errors
from resnet_jax import metrics as metrics_lib
from resnet_jax import storage
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import UserError

flags.DEFINE_string('out', None, 'Output image (PNG).')
flags.DEFINE_enum('metric', 'error', ['error', 'loss'], 'error: 100 * (1 - accuracy) in %; loss: cross-entropy.')
flags.DEFINE_string('title', None, 'Figure title (default: none).')
FLAGS = flags.FLAGS


def _warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)


def _run_dirs(workdir: str) -> list[str]:
  """The runs of `workdir`: itself, or its seed_<k> sub-directories (a reproduce directory)."""
  root = storage.resolve(workdir)
  if storage.exists(root / 'config.json'):
    return [workdir]
  if not storage.is_dir(root):
    raise UserError(f'{workdir}: no such directory')
  seeds = sorted((name for name in storage.list_names(root) if name.startswith('seed_')
                  and storage.exists(root / name / 'config.json')),
                 key=lambda name: int(name[len('seed_'):]) if name[len('seed_'):].isdigit() else 1 << 30)
  if not seeds:
    raise UserError(f'{workdir}: no runs (neither a config.json nor seed_<k>/config.json)')
  return [str(root / name) for name in seeds]


def _run_identity(run_dir: str) -> str:
  """One name per run directory however it is reached (relative path, symlink, trailing slash)."""
  path = storage.resolve(run_dir)
  return str(path) if storage.is_remote(path) else os.path.realpath(os.fspath(path))


def _label(run_dir: str) -> str:
  """The run's paper row or model (config.json), or its directory's name with a warning when config.json cannot
  be read (cut short or edited): its curves still count."""
  try:
    config = workdir_lib.recorded_config(run_dir)
    return (config.get('paper') or {}).get('row') or config['model']['name']
  except (UserError, AttributeError, KeyError, TypeError) as error:
    name = os.path.basename(os.path.normpath(run_dir))
    reason = error if isinstance(error, UserError) else 'config.json names no model'
    _warn(f'{run_dir}: labelled {name!r}: {reason}')
    return name


def _finite(series: dict[str, Any], run_dir: str) -> dict[str, Any]:
  """`series` without its NaN or infinite points (a diverged or hand-edited run), named in one warning."""
  dropped = []
  for part in ('train', 'test'):
    steps, values = series[part]
    kept = [(step, value) for step, value in zip(steps, values) if math.isfinite(value)]
    dropped += [f'{part} step {step}' for step, value in zip(steps, values) if not math.isfinite(value)]
    series[part] = tuple(list(v) for v in zip(*kept)) if kept else ([], [])
  if dropped:
    _warn(f"{run_dir}: not drawn, NaN or infinite: {', '.join(dropped[:5])}"
          + (f' (and {len(dropped) - 5} more)' if len(dropped) > 5 else ''))
  return series


def _median_band(curves: Sequence[tuple[list, list]]):
  by_step: dict[int, list[float]] = {}
  for steps, values in curves:
    for step, value in zip(steps, values):
      by_step.setdefault(step, []).append(value)
  steps = sorted(by_step)
  return (steps, [statistics.median(by_step[s]) for s in steps],
          (steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]))


def workdir_series(workdir: str, metric: str = 'error', runs: Sequence[str] | None = None) -> dict[str, Any]:
  """The curves of one workdir (a run, or the median and min-max band of a reproduce directory's seeds); `runs`:
  the run directories of it to draw (default: all)."""
  runs = _run_dirs(workdir) if runs is None else list(runs)
  per_run = [_finite(metrics_lib.curve_series(metrics_lib.read_metrics(run), _label(run), metric), run)
             for run in runs]
  if len(per_run) == 1 and runs[0] == workdir:
    return per_run[0]
  series = {'label': f"{per_run[0]['label']} (median of {len(per_run)})"}
  for part in ('train', 'test'):
    steps, median, band = _median_band([s[part] for s in per_run])
    series[part] = (steps, median)
    series[f'{part}_band'] = band
  return series


def plot(workdirs: Sequence[str], out: str, metric: str = 'error', title: str | None = None) -> str:
  """Draws every workdir's curves into `out` (PNG); returns its path."""
  if not workdirs:
    raise UserError('give one or more workdirs (run directories or reproduce directories)')
  out = output_path(out)
  series, names, seen = [], [], {}
  for workdir in workdirs:  # a run given twice, directly or through its reproduce directory, is drawn once
    runs = []
    for run in _run_dirs(workdir):
      identity = _run_identity(run)
      if identity in seen:
        also = '' if seen[identity] == run else f' (as {seen[identity]} too)'
        _warn(f'{run} is given more than once{also}; drawn once')
        continue
      seen[identity] = run
      runs.append(run)
    if runs:
      series.append(workdir_series(workdir, metric, runs))
      names.append(os.path.basename(os.path.normpath(workdir)))
  labels = [s['label'] for s in series]
  for s, name in zip(series, names):  # several workdirs: the legend names each by its directory too
    if (len(series) > 1 or labels.count(s['label']) > 1) and s['label'].split(' (')[0] != name:
      s['label'] = f"{s['label']} [{name}]"
  if not any(len(s[part][0]) for s in series for part in ('train', 'test')):
    raise UserError(f"no {metric} curves in {', '.join(workdirs)} (metrics.jsonl holds no training or test lines)")
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.subplots()
  metrics_lib.draw_curves(ax, series, metric)
  if metric == 'error' and spans_decades([s[part][1] for s in series for part in ('train', 'test')]):
    ax.set_yscale('log')  # a 0.5% and a 50% error on one axis: linear squeezes the low curves flat
  if title:
    ax.set_title(title)
  fig.tight_layout()
  try:
    storage.save_figure(fig, out, dpi=120)
  except OSError as error:
    raise UserError(f'--out {out} cannot be written ({error.strerror or error}); choose a writable path') from None
  return out


def spans_decades(value_lists: Sequence[Sequence[float]]) -> bool:
  """Whether the finite positive values span a factor of 10 or more (then a log axis shows them all)."""
  values = [v for values in value_lists for v in values if math.isfinite(v) and v > 0]
  return bool(values) and max(values) >= 10 * min(values)


def output_path(out: str) -> str:
  """The file `plot` writes for `--out`: a PNG path (`.png` added when there is no extension), refused when it is
  a directory or names another format."""
  path = storage.resolve(out)
  if not path.name or storage.is_dir(path):
    raise UserError(f'--out {out} is a directory; name the figure file, e.g. {path / "curves.png"}')
  if not storage.is_remote(path):
    parent = storage.existing_ancestor(os.path.dirname(os.path.abspath(os.fspath(path))))
    if not os.path.isdir(parent):
      raise UserError(f'--out {out}: {parent} is a file, not a directory; choose another path')
  extension = os.path.splitext(path.name)[1]
  if not extension:
    return out + '.png'
  if extension.lower() != '.png':
    raise UserError(f'--out {out}: plot writes PNG images; name the file .png')
  return out


def main(argv):
  with errors.exit_on_error():
    if not FLAGS.out:
      raise UserError('--out FIG.png is required')
    path = plot(argv[1:], FLAGS.out, FLAGS.metric, FLAGS.title)
  print(path)


if __name__ == '__main__':
  app.run(main)
