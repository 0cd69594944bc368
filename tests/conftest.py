"""Test-suite setup: two fake CPU devices, a private TFDS data dir, and shared helpers.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here, at import. Every test that does
not build its own mesh therefore runs data-parallel over 2 devices, exercising the sharded code paths.
Tests needing other device or process counts run in subprocesses (see `run_python`).
"""

import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile

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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(args, devices=1, env=None, timeout=600, cwd=REPO):
  """Runs `python ARGS` in a fresh process with `devices` fake CPU devices; returns CompletedProcess."""
  full_env = dict(os.environ)
  full_env['XLA_FLAGS'] = xla_flags(devices)
  full_env['JAX_PLATFORMS'] = 'cpu'
  full_env['PYTHONUNBUFFERED'] = '1'
  full_env.update(env or {})
  return subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env, capture_output=True, text=True,
                        timeout=timeout)


def snapshot(root):
  """Every file under `root` with its bytes (to show that nothing was written or overwritten); the workdir's lock
  file is left out: it names whoever last held the lock, not what the run holds."""
  files = {}
  for path in sorted(glob.glob(os.path.join(root, '**'), recursive=True)):
    if os.path.isfile(path) and os.path.basename(path) != 'run.lock':
      with open(path, 'rb') as file:
        files[os.path.relpath(path, root)] = file.read()
  return files


@pytest.fixture
def run_copy(trained, tmp_path):
  """A copy of the module's `trained` run (each module that uses this defines its own `trained` fixture)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  return workdir


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """workdir_runs.RUN trained alone, in-process: what every interrupted or contested run of test_workdir.py and
  test_cloud_workdirs.py must equal bitwise. Not the modules' usual tiny run: these tests need a run that logs
  every step, long enough to be seen holding its workdir (module scope: one per module that uses it)."""
  from resnet_jax import train  # pylint: disable=g-import-not-at-top  (conftest sets XLA_FLAGS before JAX loads)
  from workdir_runs import run_config  # pylint: disable=g-import-not-at-top  (it imports this module)
  workdir = str(tmp_path_factory.mktemp('reference') / 'alone')
  train.train_and_evaluate(run_config(), workdir)
  return workdir


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """One XLA compilation cache for a module's `python -m resnet_jax.main` subprocesses (results do not depend
  on it; it saves each subprocess the compile)."""
  return str(tmp_path_factory.mktemp('compilation_cache'))
