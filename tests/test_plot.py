"""Paper-style training curves of several workdirs (python -m resnet_jax.plot) and each run's curves.png."""

import json
import os

import pytest

from conftest import run_cli
from resnet_jax import metrics
from resnet_jax import plot


def _run(path, row=None, model='cifar_resnet20', offset=0.0):
  """A finished run as train.py writes it: config.json and metrics.jsonl (training lines every 10 steps, test
  lines every 20)."""
  os.makedirs(path)
  config = {'model': {'name': model}, 'total_steps': 40, 'seed': 0}
  if row:
    config['paper'] = {'row': row, 'source': 'He et al. 2015, Table 6', 'published_error': 8.75, 'note': ''}
  json.dump(config, open(os.path.join(path, 'config.json'), 'w'))
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as file:
    for step in (10, 20, 30, 40):
      file.write(json.dumps({'step': step, 'train_loss': 2.0 / step + offset,
                             'train_accuracy': 0.5 + step / 100 - offset}) + '\n')
      if step % 20 == 0:
        file.write(json.dumps({'step': step, 'test_accuracy': 0.4 + step / 100 - offset,
                               'test_loss': 1.0 / step + offset}) + '\n')
  return str(path)


def test_series_of_a_run_and_of_a_reproduce_directory(tmp_path):
  single = plot.workdir_series(_run(tmp_path / 'r20', row='resnet20'))
  assert single['label'] == 'resnet20'
  assert single['train'] == ([10, 20, 30, 40], pytest.approx([40.0, 30.0, 20.0, 10.0]))
  assert single['test'] == ([20, 40], pytest.approx([40.0, 20.0]))
  for k, offset in enumerate((0.0, 0.1, 0.05)):
    _run(tmp_path / 'repro' / f'seed_{k}', row='resnet20', offset=offset)
  median = plot.workdir_series(str(tmp_path / 'repro'))
  assert median['label'] == 'resnet20 (median of 3)'
  assert median['test'][1] == pytest.approx([45.0, 25.0])             # offsets 0, 5, 10 points: median 5
  assert median['test_band'][1:] == (pytest.approx([40.0, 20.0]), pytest.approx([50.0, 30.0]))
  loss = plot.workdir_series(_run(tmp_path / 'plain', model='cifar_plain20'), metric='loss')
  assert loss['label'] == 'cifar_plain20' and loss['test'][1] == pytest.approx([0.05, 0.025])


def test_cli_draws_several_workdirs_and_curves_png_uses_the_same_drawing(tmp_path):
  runs = [_run(tmp_path / 'a', row='resnet20'), _run(tmp_path / 'b', row='resnet20', offset=0.1)]
  out = str(tmp_path / 'figs' / 'fig6.png')
  status, _, err = run_cli('plot', [*runs, '--out', out, '--metric', 'loss'])  # the CLI, in-process
  assert status == 0, err[-3000:]
  assert os.path.getsize(out) > 5000
  drawn = []
  original = metrics.draw_curves
  try:
    metrics.draw_curves = lambda ax, series, metric='error': drawn.append((metric, series)) or original(ax, series, metric)
    assert metrics.plot_curves(runs[0]) == os.path.join(runs[0], 'curves.png')
  finally:
    metrics.draw_curves = original
  assert [metric for metric, _ in drawn] == ['error', 'loss']
  assert drawn[0][1][0]['test'] == ([20, 40], pytest.approx([40.0, 20.0]))


def test_a_directory_without_runs_is_one_error_line(tmp_path):
  (tmp_path / 'empty').mkdir()
  status, _, err = run_cli('plot', [str(tmp_path / 'empty'), '--out', str(tmp_path / 'x.png')])
  assert status == 2 and 'Traceback' not in err
  assert err.strip().splitlines()[-1].startswith('error: ') and 'no runs' in err


def test_drawing_leaves_the_callers_matplotlib_backend_alone(tmp_path):
  # A notebook's inline backend must survive a call to the library: switching it to Agg blanks plt.show().
  import matplotlib  # pylint: disable=g-import-not-at-top
  before = matplotlib.get_backend()
  matplotlib.use('svg')
  try:
    run = _run(tmp_path / 'a', row='resnet20')
    plot.plot([run], str(tmp_path / 'fig.png'))
    metrics.plot_curves(run)
    assert matplotlib.get_backend() == 'svg'
    assert os.path.getsize(tmp_path / 'fig.png') > 5000 and os.path.exists(os.path.join(run, 'curves.png'))
  finally:
    matplotlib.use(before)
