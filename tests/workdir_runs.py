"""The short training run that the workdir tests (test_workdir.py, test_cloud_workdirs.py) start, contest, kill
and resume, in-process and as `python -m resnet_jax.main` subprocesses on the same 2 fake devices."""

import os
import subprocess
import sys
import time

import jax
import numpy as np

from conftest import QUICKSTART, REPO, TINY_OVERRIDES, tiny_config, xla_flags

#: The suite's tiny run (conftest.TINY_OVERRIDES) for 18 steps, a checkpoint every 6 steps and a log line every
#: step, so that a run lasts long enough to be seen holding its workdir.
RUN = {**TINY_OVERRIDES, 'total_steps': '18', 'log_every_steps': '1', 'eval_every_steps': '18'}


def run_config(**overrides):
  return tiny_config(**{**RUN, **overrides})


def cli_args(workdir, cache=None, **overrides):
  """`resnet_jax.main` arguments for RUN; `cache`: a compilation cache shared by a module's subprocesses."""
  cached = [f'--config.compilation_cache_dir={cache}'] if cache else []
  return (['-m', 'resnet_jax.main', '--config', QUICKSTART, '--workdir', str(workdir)] + cached
          + [f'--config.{k}={v}' for k, v in {**RUN, **overrides}.items()])


def start(args, devices=2, env=None):
  """`python ARGS` in the background, on `devices` fake devices (2, as the in-process runs)."""
  full_env = dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **(env or {}))
  return subprocess.Popen([sys.executable] + args, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(process):
  """(exit status, stdout, stderr) of a started process."""
  out, err = process.communicate(timeout=600)
  return process.returncode, out, err


def wait_for(condition, timeout=300.0, what='the condition'):
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.02)


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])
