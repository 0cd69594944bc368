r"""Paper-style training curves of several runs in one figure (He et al. 2015 Fig. 6, He et al. 2016 Fig. 6).

  python -m resnet_jax.plot runs/resnet20 runs/plain20 runs/p164 --out fig6.png [--metric error|loss]

Per run: the training error (thin, dashed; `train_accuracy` of metrics.jsonl, averaged over each log interval)
and the test error (bold) against iterations, in one colour, named by the run's paper row (config.json's
`paper.row`) or its model. A reproduce directory (seed_<k> sub-directories) is drawn as the median over its
seeds with a min-max band. The drawing itself is `resnet_jax.metrics.draw_curves`, which also draws each run's
curves.png.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Sequence

from absl import app
from absl import flags

from resnet_jax import errors
from resnet_jax import metrics as metrics_lib
from resnet_jax import storage
from resnet_jax.errors import UserError

flags.DEFINE_string('out', None, 'Output image (PNG).')
flags.DEFINE_enum('metric', 'error', ['error', 'loss'], 'error: 100 * (1 - accuracy) in %; loss: cross-entropy.')
flags.DEFINE_string('title', None, 'Figure title (default: none).')
FLAGS = flags.FLAGS


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


def _label(run_dir: str) -> str:
  config = json.loads(storage.read_text(storage.resolve(run_dir) / 'config.json'))
  return (config.get('paper') or {}).get('row') or config['model']['name']


def _median_band(curves: Sequence[tuple[list, list]]):
  by_step: dict[int, list[float]] = {}
  for steps, values in curves:
    for step, value in zip(steps, values):
      by_step.setdefault(step, []).append(value)
  steps = sorted(by_step)
  return (steps, [statistics.median(by_step[s]) for s in steps],
          (steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]))


def workdir_series(workdir: str, metric: str = 'error') -> dict[str, Any]:
  """The curves of one workdir (a run, or the median and min-max band of a reproduce directory's seeds)."""
  runs = _run_dirs(workdir)
  per_run = [metrics_lib.curve_series(metrics_lib.read_metrics(run), _label(run), metric) for run in runs]
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
  series = [workdir_series(workdir, metric) for workdir in workdirs]
  labels = [s['label'] for s in series]
  for s, workdir in zip(series, workdirs):  # two runs of one row: name them by their directories too
    if labels.count(s['label']) > 1:
      s['label'] = f"{s['label']} [{os.path.basename(os.path.normpath(workdir))}]"
  if not any(len(s[part][0]) for s in series for part in ('train', 'test')):
    raise UserError(f"no {metric} curves in {', '.join(workdirs)} (metrics.jsonl holds no training or test lines)")
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.subplots()
  metrics_lib.draw_curves(ax, series, metric)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  storage.save_figure(fig, out, dpi=120)
  return out


def main(argv):
  with errors.exit_on_error():
    if not FLAGS.out:
      raise UserError('--out FIG.png is required')
    path = plot(argv[1:], FLAGS.out, FLAGS.metric, FLAGS.title)
  print(path)


if __name__ == '__main__':
  app.run(main)
