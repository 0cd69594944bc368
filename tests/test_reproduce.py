"""Multi-seed reproduction of a paper row: per-seed runs, median / mean +- std beside the published error."""

import json
import os

import pytest

from conftest import run_python
from resnet_jax import config as config_lib
from resnet_jax import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_statistics_match_the_papers_conventions():
  summary = reproduce.summarize([6.5, 6.2, 6.9, 6.4, 6.6], published=6.43)
  assert summary['median'] == 6.5 and summary['best'] == 6.2 and summary['runs'] == 5
  assert summary['mean'] == pytest.approx(6.52)
  assert summary['std'] == pytest.approx(0.2588, abs=1e-4)  # sample standard deviation
  table = reproduce.markdown_table('resnet110', 'He et al. 2015, Table 6', summary)
  assert '| resnet110 | He et al. 2015, Table 6 | 6.43 | 6.50 | 6.52 ± 0.26 | 6.20 | 5 |' in table


def test_reproduce_trains_each_seed_and_writes_the_summary(tmp_path, capsys):
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'quickstart.py'), [
      ('total_steps', '4'), ('batch_size', '32'), ('schedule.boundaries_epochs', 'None'), ('log_every_steps', '4'),
      ('model.stage_widths', '(8,8,8)')])
  summary = reproduce.reproduce(config, str(tmp_path), seeds=2)
  assert summary['runs'] == 2 and len(summary['errors']) == 2
  assert sorted(os.listdir(tmp_path)) == ['reproduce.json', 'seed_0', 'seed_1']
  seeds = [config_lib.from_json(open(tmp_path / f'seed_{k}' / 'config.json').read()).seed for k in (0, 1)]
  assert seeds == [0, 1]
  assert json.load(open(tmp_path / 'reproduce.json'))['median'] == summary['median']
  assert '| cifar_preact_resnet20 |' in capsys.readouterr().out


def test_override_without_a_value_is_one_error_line(tmp_path):
  result = run_python(['-m', 'resnet_jax.reproduce', '--config', 'configs/quickstart.py', '--workdir',
                       str(tmp_path / 'never'), '--config.seed'])
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == 'error: --config.seed: missing value; write --config.seed=VALUE'
  assert 'Traceback' not in result.stderr


def test_a_diverged_seed_exits_with_the_status_main_uses(tmp_path):
  # lr 0.1 for 4 steps, then 1e8: the loss overflows within a few steps (as in test_distributed).
  result = run_python(['-m', 'resnet_jax.reproduce', '--config', 'configs/quickstart.py', '--seeds', '1',
                       '--workdir', str(tmp_path), '--config.batch_size=32', '--config.model.stage_widths=(8,8,8)',
                       '--config.total_steps=12', '--config.schedule.boundaries_epochs=None',
                       '--config.schedule.boundaries_steps=4', '--config.schedule.decay_factor=1e9',
                       '--config.log_every_steps=4', '--config.checkpoint_every_steps=4'])
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith('error: loss or gradients became NaN/Inf at step ')
  assert 'Traceback' not in result.stderr
