"""Multi-seed reproduction of a paper row: per-seed runs, median / mean +- std beside the published error."""

import json
import os

import pytest

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
