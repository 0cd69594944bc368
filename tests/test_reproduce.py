"""Multi-seed reproduction of a paper row: per-seed runs, median / mean +- std beside the published error.

The command lines (reproduce, the `python -m resnet_jax.main` commands it prints, plot) run in-process
(conftest.run_cli) on the suite's 2 fake devices, with the suite's tiny quickstart: seed 0 is the session's
tiny run, whose programs are already compiled.
"""

import csv
import json
import os
import shlex
import shutil

import pytest

from conftest import TINY_OVERRIDES
from conftest import run_cli
from test_distributed import DIVERGING
from resnet_jax import config as config_lib
from resnet_jax import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TINY = [f'--config.{key}={value}' for key, value in TINY_OVERRIDES.items()]


def _ok(result):
  """The stdout of a command line that succeeded ((exit status, stdout, stderr) of run_cli)."""
  status, out, err = result
  assert status == 0, err[-3000:]
  return out


def _error_line(result):
  status, _, err = result
  assert status == 2, err[-3000:]
  assert 'Traceback' not in err
  lines = err.strip().splitlines()
  assert lines[-1].startswith('error: '), lines[-1]
  return lines[-1]


@pytest.fixture(scope='module')
def reproduced(tmp_path_factory):
  """2 seeds of a tiny digits config, once by `reproduce`, once by running its --print_commands one by one."""
  root = tmp_path_factory.mktemp('reproduce')
  by_reproduce, by_commands = str(root / 'by_reproduce'), str(root / 'by_commands')
  base = ['--config', 'configs/quickstart.py', '--seeds', '2']
  trained = _ok(run_cli('reproduce', base + ['--workdir', by_reproduce] + TINY))
  listed = _ok(run_cli('reproduce', base + ['--workdir', by_commands, '--print_commands'] + TINY)).strip().splitlines()
  for line in listed:
    words = shlex.split(line)
    assert words[:3] == ['python', '-m', 'resnet_jax.main']
    _ok(run_cli('main', words[3:]))
  aggregated = _ok(run_cli('reproduce', ['--aggregate', by_commands]))
  return {'by_reproduce': by_reproduce, 'by_commands': by_commands, 'commands': listed, 'stdout': trained,
          'aggregate_stdout': aggregated, 'root': str(root)}


def test_summary_statistics_match_the_papers_conventions():
  summary = reproduce.summarize([6.5, 6.2, 6.9, 6.4, 6.6], published=6.43)
  assert summary['median'] == 6.5 and summary['best'] == 6.2 and summary['runs'] == 5
  assert summary['mean'] == pytest.approx(6.52)
  assert summary['std'] == pytest.approx(0.2588, abs=1e-4)  # sample standard deviation
  summary.update(row='resnet110', source='He et al. 2015, Table 6', finished=5, total=5, unfinished=[])
  table = reproduce.markdown_table([summary])
  assert '| resnet110 | He et al. 2015, Table 6 | 6.43 | 6.50 | 6.52 ± 0.26 | 6.20 | 5 | 5/5 |' in table


def test_list_names_every_paper_row_with_its_table():
  rows = reproduce.config_rows()
  lines = reproduce.list_rows()
  assert len(lines) == sum(len(table) for table in rows.values()) >= 70
  listed = {line.split()[0]: line for line in lines}
  for module, table in rows.items():
    for name, row in table.items():
      line = listed[f'configs/{module}.py:{name}']
      assert row.source in line and row.model in line and row.dataset in line
      assert (f'published {row.published_error:.2f}' if row.published_error else 'published –') in line
  assert 'batch 128' in listed['configs/cifar.py:resnet110'] and '32k,48k' in listed['configs/cifar.py:resnet110']
  # the papers' order: He et al. 2015 before He et al. 2016 before Xie et al. 2017
  order = [line.split()[0] for line in lines]
  assert order.index('configs/cifar.py:resnet110') < order.index('configs/cifar.py:preact_resnet164') < order.index(
      'configs/cifar.py:resnext29_8x64d')
  assert all('Table 1 ' in line or 'Table 1,' in line for line in reproduce.list_rows('table 1 ('))
  assert {line.split()[0] for line in reproduce.list_rows('resnext')} >= {
      'configs/cifar.py:resnext29_8x64d', 'configs/imagenet.py:resnext50_32x4d'}


def test_list_cli_and_a_filter_matching_nothing():
  listed = _ok(run_cli('reproduce', ['--list', 'table_2']))
  assert all('Table 2' in line for line in listed.strip().splitlines())
  assert len(listed.strip().splitlines()) == 3 + 10 + 4  # He et al. 2015, He et al. 2016, Huang et al. 2017
  listed = _ok(run_cli('reproduce', ['--list', 'Table 6']))
  assert len(listed.strip().splitlines()) == 11 + 3  # ResNet-20..1202 and plain-20..110; Bag of Tricks Table 6
  assert _error_line(run_cli('reproduce', ['--list', 'no_such_row'])).startswith(
      "error: no paper row matches 'no_such_row'")


def test_reproduce_writes_the_table_and_print_commands_reproduce_it(reproduced):
  workdir = reproduced['by_reproduce']
  assert sorted(os.listdir(workdir)) == ['reproduce.json', 'results.csv', 'results.md', 'seed_0', 'seed_1']
  seeds = [config_lib.from_json(open(os.path.join(workdir, f'seed_{k}', 'config.json')).read()).seed for k in (0, 1)]
  assert seeds == [0, 1]
  losses = [[json.loads(line)['train_loss'] for line in open(os.path.join(workdir, f'seed_{k}', 'metrics.jsonl'))
             if 'train_loss' in line] for k in (0, 1)]
  assert len(losses[0]) == len(losses[1]) > 0 and losses[0] != losses[1]  # another seed trains another run
  assert [c.split('--workdir ')[1].split()[0] for c in reproduced['commands']] == [
      os.path.join(reproduced['by_commands'], f'seed_{k}') for k in (0, 1)]
  assert [c.split()[-1] for c in reproduced['commands']] == ['--config.seed=0', '--config.seed=1']
  plan = json.load(open(os.path.join(workdir, 'reproduce.json')))
  assert plan['seeds'] == 2 and plan['summary']['runs'] == 2 and plan['summary']['finished'] == 2
  table = open(os.path.join(workdir, 'results.md')).read()
  assert '| cifar_preact_resnet20 | – | – |' in table and '| 2 | 2/2 |' in table
  assert table.strip() in reproduced['stdout']
  rows = list(csv.DictReader(open(os.path.join(workdir, 'results.csv'))))
  assert len(rows) == 1 and rows[0]['runs'] == '2' and rows[0]['total'] == '2'
  assert float(rows[0]['median']) == pytest.approx(plan['summary']['median'], abs=1e-4)
  # the same seeds trained command by command give the same table
  other = reproduced['by_commands']
  assert open(os.path.join(other, 'results.md')).read() == table
  assert open(os.path.join(other, 'results.csv')).read() == open(os.path.join(workdir, 'results.csv')).read()
  assert reproduced['aggregate_stdout'].strip() == table.strip()


def test_aggregate_groups_by_row_and_lists_unfinished_runs(reproduced, tmp_path):
  # a third, unfinished run of the same row (a copy of seed 0 cut after its first log line), and one row
  # recorded as a paper row
  unfinished = tmp_path / 'unfinished'
  shutil.copytree(os.path.join(reproduced['by_reproduce'], 'seed_0'), unfinished)
  lines = open(unfinished / 'metrics.jsonl').read().splitlines()
  (unfinished / 'metrics.jsonl').write_text('\n'.join(l for l in lines if json.loads(l)['step'] <= 4
                                                       and 'test_accuracy' not in l) + '\n')
  paper = tmp_path / 'paper_row'
  shutil.copytree(os.path.join(reproduced['by_reproduce'], 'seed_1'), paper)
  config = json.load(open(paper / 'config.json'))
  config['paper'] = {'row': 'resnet20', 'source': 'He et al. 2015, Table 6', 'published_error': 8.75, 'note': ''}
  json.dump(config, open(paper / 'config.json', 'w'))
  summaries = reproduce.aggregate([str(paper), reproduced['by_reproduce'], str(unfinished)])
  assert [s['row'] for s in summaries] == ['resnet20', 'cifar_preact_resnet20']  # paper rows first
  assert summaries[0]['published'] == 8.75 and summaries[0]['runs'] == 1
  assert (summaries[1]['runs'], summaries[1]['finished'], summaries[1]['total']) == (2, 2, 3)
  table = reproduce.markdown_table(summaries)
  assert '| resnet20 | He et al. 2015, Table 6 | 8.75 |' in table and '2/3 |' in table
  assert f'- cifar_preact_resnet20: {unfinished} (step 4 of 12)' in table


def test_plot_draws_the_reproduce_directories(reproduced):
  out = os.path.join(reproduced['root'], 'fig.png')
  printed = _ok(run_cli('plot', [reproduced['by_reproduce'], os.path.join(reproduced['by_commands'], 'seed_0'),
                                  '--out', out]))
  assert os.path.getsize(out) > 5000 and out in printed


def test_bad_inputs_are_one_error_line(tmp_path):
  (tmp_path / 'empty').mkdir()
  assert _error_line(run_cli('reproduce', ['--aggregate', str(tmp_path / 'empty')])).endswith(
      'pass a run directory or a reproduce --workdir')
  assert "has no variant 'resnet21'" in _error_line(run_cli(
      'reproduce', ['--config', 'configs/cifar.py:resnet21', '--workdir', str(tmp_path / 'x')]))
  assert _error_line(run_cli(
      'reproduce', ['--config', 'configs/quickstart.py', '--seeds', '2', '--seed_index', '2',
                    '--workdir', str(tmp_path / 'x')])) == (
           'error: --seed_index 2 is out of range: --seeds 2 gives seeds 0..1')
  assert not os.path.exists(tmp_path / 'x')


def test_override_without_a_value_is_one_error_line(tmp_path):
  assert _error_line(run_cli('reproduce', ['--config', 'configs/quickstart.py', '--workdir', str(tmp_path / 'never'),
                                            '--config.seed'])) == (
                                                'error: --config.seed: missing value; write --config.seed=VALUE')


def test_a_diverged_seed_exits_with_the_status_main_uses(tmp_path):
  # test_distributed's diverging run (lr 1e8 after step 4), whose programs are compiled once for the suite.
  status, _, err = run_cli('reproduce', ['--seeds', '1', '--workdir', str(tmp_path), *DIVERGING])
  assert status == 3, err[-3000:]
  assert err.strip().splitlines()[-1].startswith('error: loss or gradients became NaN/Inf at step ')
  assert 'Traceback' not in err
