"""Test-suite setup: two fake CPU devices, a private TFDS data dir, one persistent compilation cache, the
suite's one tiny training config and its session-wide trained run, and shared helpers.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here, at import. Every test that does
not build its own mesh therefore runs data-parallel over 2 devices, exercising the sharded code paths.
Tests needing other device or process counts run in subprocesses (see `run_python`).
"""

import atexit
import contextlib
import functools
import glob
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import absl
from absl import flags
import pytest

# Compiling dominates the suite's time and its programs are tiny: skip XLA's backend optimisation (a 12-step
# training run: 16 s -> 12 s). Results are still checked bitwise where it matters, under the same flags.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def xla_flags(devices: int) -> str:
  return f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}'


os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags(2)).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The bucket tests' emulator speaks no gRPC: gcsfs's experimental bucket-type probe would wait 60 s for it on
# every new bucket (set before gcsfs is first imported; see docs/storage.md).
os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'
# TFDS reads its data dir when first imported: a private one keeps ~/tensorflow_datasets out of the suite.
TFDS_DATA_DIR = tempfile.mkdtemp(prefix='resnet_jax_tfds_')
os.environ['TFDS_DATA_DIR'] = TFDS_DATA_DIR
atexit.register(shutil.rmtree, TFDS_DATA_DIR, ignore_errors=True)

# One persistent XLA compilation cache for the whole session: most of the suite's time is compiling the same few
# programs (the tiny run's train step, its evaluation, the init) again in another test, worker, subprocess or
# notebook kernel. JAX reads these variables when it is imported, so every process started from here (xdist
# workers, `run_python`, `python -m resnet_jax.main` subprocesses, Jupyter kernels) inherits the same cache; the
# first process (the xdist controller, or pytest -n 0) makes the directory and removes it at exit. A cached
# executable is the compiled program itself: results stay bitwise equal (tests/test_train.py compares against
# golden metrics and a resumed run against an uninterrupted one through it). Every entry is kept, however quick
# to compile: the suite's programs are small.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='resnet_jax_xla_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
COMPILATION_CACHE_DIR = os.environ['JAX_COMPILATION_CACHE_DIR']
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position  (after XLA_FLAGS and the cache variables)

jax.config.update('jax_compilation_cache_dir', COMPILATION_CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')

#: The suite's one tiny training run: the quickstart (digits, pre-activation ResNet-20) shortened to 12 steps of
#: batch 32 at widths (8,16,16), a learning-rate step at 8, a log line every 4 steps, checkpoints at 6 and 12 and
#: one evaluation at the end. Every module that trains derives its run from it (`tiny_config(**overrides)`), so
#: that its programs compile once for the suite (the persistent cache above), and every module that only reads a
#: run reads the session's `trained` run. tests/golden/quickstart_tiny_metrics.json holds its metrics.
TINY_OVERRIDES = {'total_steps': '12', 'batch_size': '32', 'schedule.boundaries_epochs': 'None',
                  'schedule.boundaries_steps': '8', 'log_every_steps': '4', 'eval_every_steps': '12',
                  'checkpoint_every_steps': '6', 'model.stage_widths': '(8,16,16)'}
#: TINY_OVERRIDES as `python -m resnet_jax.main` arguments (for subprocesses and in-process CLI runs).
TINY_ARGS = ['--config', QUICKSTART] + [f'--config.{key}={value}' for key, value in TINY_OVERRIDES.items()]


def tiny_config(**overrides):
  """The tiny quickstart config (TINY_OVERRIDES), with `overrides` (config paths -> strings) on top."""
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  return config_lib.build_config(QUICKSTART, list({**TINY_OVERRIDES, **overrides}.items()))


def run_python(args, devices=1, env=None, timeout=600, cwd=REPO):
  """Runs `python ARGS` in a fresh process with `devices` fake CPU devices; returns CompletedProcess."""
  full_env = dict(os.environ)
  full_env['XLA_FLAGS'] = xla_flags(devices)
  full_env['JAX_PLATFORMS'] = 'cpu'
  full_env['PYTHONUNBUFFERED'] = '1'
  full_env.update(env or {})
  return subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


@functools.cache
def load_cli(module: str) -> types.ModuleType:
  """resnet_jax/MODULE.py (e.g. 'main', 'reproduce', 'analysis/__main__') as a private module whose absl flags
  live in their own FlagValues: main, reproduce and analysis all define --config/--workdir on absl's global FLAGS,
  so one process could import only one of them. Loaded once per process."""
  private = flags.FlagValues()
  shim = types.ModuleType('absl.flags')
  shim.__dict__.update(flags.__dict__)
  for name, define in flags.__dict__.items():
    if name.startswith('DEFINE_') and callable(define):
      setattr(shim, name, functools.partial(define, flag_values=private))
  shim.FLAGS = private
  name = '_resnet_jax_cli_' + module.replace('/', '_')
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'resnet_jax', f'{module}.py'))
  loaded = importlib.util.module_from_spec(spec)
  sys.modules[name] = loaded  # dataclasses and pickling look a class's module up by name
  absl.flags = shim  # what the module's `from absl import flags` reads
  try:
    spec.loader.exec_module(loaded)
  finally:
    absl.flags = flags
  return loaded


def run_cli(module: str, argv, cwd=REPO):
  """Runs `python -m resnet_jax.MODULE ARGV` in this process (in `cwd`, on the suite's 2 fake devices) and returns
  (exit status, stdout, stderr): a command line's checks without starting a Python process each. The flags are
  parsed as the CLI's `app.run` parses them; what Python code prints is captured (not what C++ writes)."""
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  loaded = load_cli(module)
  loaded.FLAGS.unparse_flags()
  overrides = getattr(loaded, '_OVERRIDES', None)
  if overrides is not None:
    del overrides[:]
  program = f'resnet_jax.{module}'
  out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
  try:
    os.chdir(cwd)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      if overrides is not None:
        rest = config_lib.flags_parser(loaded.FLAGS, overrides)([program, *argv])
      else:  # absl's own parsing (app.run(main) without a flags_parser)
        rest = loaded.FLAGS([program, *argv])
      loaded.main(rest)
    status = 0
  except SystemExit as exit_:
    status = exit_.code
  finally:
    os.chdir(before)
  return status, out.getvalue(), err.getvalue()


@pytest.fixture
def cli(monkeypatch):
  """cli(module, argv) -> (exit status, stdout, stderr): `run_cli` with sys.argv as a command line's."""
  monkeypatch.setattr(sys, 'argv', ['python'])
  return run_cli


def assert_one_error_line(status, err, message):
  """Status 2 and one `error:` line, the last, starting with `message` ('...' in it matches any text)."""
  lines = err.strip().splitlines()
  assert status == 2, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  assert sum(line.startswith('error:') for line in lines) == 1, err[-3000:]
  assert re.match('.*'.join(re.escape(part) for part in f'error: {message}'.split('...')), lines[-1]), err[-3000:]


def snapshot(root):
  """Every file under `root` with its bytes (to show that nothing was written or overwritten); the workdir's lock
  file is left out: it names whoever last held the lock, not what the run holds."""
  files = {}
  for path in sorted(glob.glob(os.path.join(root, '**'), recursive=True)):
    if os.path.isfile(path) and os.path.basename(path) != 'run.lock':
      with open(path, 'rb') as file:
        files[os.path.relpath(path, root)] = file.read()
  return files


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """tiny_config() trained in-process once per session (per xdist worker): (workdir, the final evaluation
  train_and_evaluate returned)."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top  (conftest sets XLA_FLAGS before JAX loads)
  workdir = str(tmp_path_factory.mktemp('tiny') / 'run')
  return workdir, train.train_and_evaluate(tiny_config(), workdir)


@pytest.fixture(scope='session')
def trained(trained_run):
  """The session's tiny run's workdir. Read only: a test that writes into a run (resumes it, evaluates it,
  damages it) takes `run_copy`."""
  return trained_run[0]


@pytest.fixture
def run_copy(trained, tmp_path):
  """A private copy of the session's `trained` run, for a test that writes into it."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  return workdir


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
  """workdir_runs.RUN trained alone, in-process: what every interrupted or contested run of test_workdir.py and
  test_cloud_workdirs.py must equal bitwise (read only). The tiny run, longer and logging every step, so that a
  run is seen holding its workdir; its train step is the tiny run's (the intervals are not compiled in)."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top  (conftest sets XLA_FLAGS before JAX loads)
  from workdir_runs import run_config  # pylint: disable=g-import-not-at-top  (it imports this module)
  workdir = str(tmp_path_factory.mktemp('reference') / 'alone')
  train.train_and_evaluate(run_config(), workdir)
  return workdir


@pytest.fixture(scope='session')
def cache():
  """The session's XLA compilation cache, for command lines that name theirs (`--config.compilation_cache_dir`,
  tests/kill_loop.py): results do not depend on it; it saves each subprocess the compile."""
  return COMPILATION_CACHE_DIR
