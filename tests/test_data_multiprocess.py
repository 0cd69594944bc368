"""Input pipelines with two JAX processes on CPU (gloo collectives), as on a multi-host pod.

Each process reads only its rows of every global batch; over an epoch the processes' shards are disjoint and
cover the split; the assembled global batches equal the single-process sequence and, for the same seed, the
device-resident path's batches (one data order); evaluation counts every example exactly once.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO, xla_flags
import data_helpers as testing

WORKER = r'''
import json, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
port, process_id, data_dir, out, tests_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, tests_dir)
import data_helpers as testing
jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=2, process_id=process_id)
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from resnet_jax import parallel
from resnet_jax.data import host_pipeline, pipelines, sources

mesh = parallel.make_mesh()
config = ml_collections.ConfigDict({
    'seed': 5, 'batch_size': 8, 'eval_batch_size': 6,
    'dataset': {'name': f'npz:{data_dir}/ids', 'pipeline': 'grain'},
    'augment': {'crop_padding': 0, 'flip': False, 'normalization': 'per_channel', 'pad_after_normalize': False},
    'input': {'train_crop': 'none', 'num_workers': 0}})
train = sources.open_split(config.dataset.name, 'train')
rows = parallel.local_batch_slice(8, mesh)
report = {'process': jax.process_index(), 'devices': jax.local_device_count(), 'rows': [rows.start, rows.stop],
          'train': [], 'eval': [], 'resident': [], 'streamed_global': [], 'resident_global': []}

# Streaming training: this process's rows, and the assembled global batch.
data = pipelines.make_train_data(config, mesh, train)
full = host_pipeline.TrainBatchMaker(train, 8, (0, 8), 5, data.transform)  # single-process reference
for step in range(8):
  batch = next(data)
  report['train'].append(testing.image_ids(testing.local_rows(batch['image'])).tolist())
  everything = multihost_utils.process_allgather(batch['image'], tiled=True)
  assert (testing.image_ids(everything) == testing.image_ids(full(step)['image'])).all(), step
  report['streamed_global'].append(testing.image_ids(everything).tolist())
data.close()

# Evaluation: 13 examples, global batch 6 (rounded up to a multiple of the device count); masks mark real rows.
evaluation = pipelines.make_eval_batches(config, mesh, sources.open_split(config.dataset.name, 'test'))
for batch in evaluation:
  ids = testing.image_ids(testing.local_rows(batch['image']))
  mask = testing.local_rows(batch['mask'])
  report['eval'].append(ids[mask].tolist())
report['eval_batches'] = evaluation.num_batches

# Device-resident training data: each process holds and gathers only its part.
arrays = train.read_all()
resident = pipelines.DeviceResidentData.from_arrays(arrays, mesh, 8, seed=5)
batch_fn = jax.jit(resident.batch)
report['resident_global'] = [np.asarray(resident.batch_indices(jnp.int32(step))).tolist() for step in range(8)]
for step in range(4):
  wanted = np.asarray(resident.batch_indices(jnp.int32(step)))[rows]
  got = testing.image_ids(testing.local_rows(batch_fn(resident.arrays, jnp.int32(step))['image']))
  report['resident'].append([wanted.tolist(), got.tolist()])
with open(out, 'w') as f:
  json.dump(report, f)
print('ok', process_id)
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_read_disjoint_shards_that_cover_the_split(tmp_path):
  """2 processes x 2 devices: each process's rows are split again over its devices (the case of one device per
  process gives each process the same rows, 4 of 8; tests/test_topology_faults.py trains on 2 x 2 as well)."""
  devices_per_process = 2
  np.savez(tmp_path / 'ids_train.npz', images=testing.indexed_images(32, (4, 4, 3)), labels=np.arange(32) % 4)
  np.savez(tmp_path / 'ids_test.npz', images=testing.indexed_images(13, (4, 4, 3), seed=1), labels=np.arange(13) % 4)
  script = tmp_path / 'worker.py'
  script.write_text(WORKER)
  port = _free_port()
  procs = []
  for process_id in range(2):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices_per_process),
               JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
    procs.append(subprocess.Popen([sys.executable, str(script), str(port), str(process_id), str(tmp_path),
                                   str(tmp_path / f'report{process_id}.json'), os.path.join(REPO, 'tests')],
                                  cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
  reports = [json.loads((tmp_path / f'report{i}.json').read_text()) for i in range(2)]
  assert [r['devices'] for r in reports] == [devices_per_process] * 2
  assert reports[0]['rows'] == [0, 4] and reports[1]['rows'] == [4, 8]

  # Training: per epoch (4 steps of 8 from 32 examples) the two shards are disjoint and cover the split.
  for epoch in range(2):
    shards = [sum(r['train'][4 * epoch:4 * epoch + 4], []) for r in reports]
    assert len(shards[0]) == len(shards[1]) == 16
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(32))

  # Evaluation: every one of the 13 examples exactly once over both processes.
  devices = 2 * devices_per_process
  global_batch = -(-6 // devices) * devices  # 6 rounded up to the device count
  assert reports[0]['eval_batches'] == -(-13 // global_batch)
  counted = sum((sum(r['eval'], []) for r in reports), [])
  assert sorted(counted) == list(range(13))

  # One data order: with the same seed, the streamed global batches are the device-resident ones, step by step.
  for report in reports:
    assert report['streamed_global'] == report['resident_global']
  # Device-resident: each process's rows of the gathered batch are the examples the order asks for.
  for report in reports:
    for wanted, got in report['resident']:
      assert wanted == got
