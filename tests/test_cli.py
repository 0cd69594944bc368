"""`python -m resnet_jax.main` as a user runs it: the tiny quickstart trains and evaluates in fresh processes.
(A rerun of a finished run trains nothing: tests/test_train.py::test_rerun_resumes_and_does_not_retrain, in
process; the one-error-line refusals run in-process as rows of tests/test_bad_inputs.py.)"""

import json
import os

from conftest import TINY_ARGS
from conftest import run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_trains_and_evaluates(tmp_path):
  workdir = str(tmp_path / 'quick')
  cache = tmp_path / 'xla_cache'
  # A cache of its own (not the suite's, which the environment names): config.compilation_cache_dir must fill it.
  first = run_python(['-m', 'resnet_jax.main', *TINY_ARGS, '--workdir', workdir,
                      f'--config.compilation_cache_dir={cache}'], devices=2)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'step 12/12' in first.stderr and 'img/s' in first.stderr and 'ETA' in first.stderr
  assert len(os.listdir(cache)) >= 2  # the persistent cache holds the compiled init and train step
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  final = [l for l in lines if 'test_accuracy' in l][-1]

  evaluated = run_python(['-m', 'resnet_jax.main', '--workdir', workdir, '--mode', 'eval'], devices=1)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'read only' not in evaluated.stderr and 'read_only' not in evaluated.stderr  # no Orbax warnings
  assert f"test_accuracy {final['test_accuracy']:.4f}" in evaluated.stdout
