"""Training at scale, checked on CPU: device- and process-count invariance, ghost BN, preemption, divergence."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_python, xla_flags
from resnet_jax import checkpoints
from resnet_jax.models import create_model

# The suite's tiny quickstart network (conftest.TINY_OVERRIDES) with one unit per stage: every run here compiles
# for its own topology, in half the time; tests/test_topology_faults.py runs the same network on the same
# topologies, so the two modules share their compiled programs through the suite's compilation cache.
TINY = ['--config', 'configs/quickstart.py', '--config.batch_size=32', '--config.schedule.boundaries_epochs=None',
        '--config.model.stage_widths=(8,16,16)', '--config.model.stage_sizes=(1,1,1)',
        '--config.eval_every_steps=1000']


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _train_cli(workdir, steps, devices=1, extra=()):
  args = ['-m', 'resnet_jax.main', *TINY, f'--config.total_steps={steps}', f'--config.log_every_steps={steps}',
          f'--config.checkpoint_every_steps={steps}', '--workdir', str(workdir), *extra]
  result = run_python(args, devices=devices)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_same_parameters_on_1_device_8_devices_and_2_processes(tmp_path):
  """The same global batches (device-count invariant pipeline) trained with global BN on 1 device, 8 devices,
  and 2 processes x 2 devices (gloo collectives) give the same parameters up to float reassociation.

  Noise images, not digits: the digits' constant backgrounds put whole BN channels at a ReLU's kink, where a
  last-bit difference in a reduction flips the gradient of thousands of positions at once.
  """
  rng = np.random.default_rng(0)
  for split, n in (('train', 256), ('test', 40)):
    np.savez(tmp_path / f'noise_{split}.npz', images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, n))
  data = [f'--config.dataset.name=npz:{tmp_path}/noise']
  _train_cli(tmp_path / 'one', 3, devices=1, extra=data)
  _train_cli(tmp_path / 'eight', 3, devices=8, extra=data)
  port = _free_port()
  args = [sys.executable, '-m', 'resnet_jax.main', *TINY, *data, '--config.total_steps=3',
          '--config.log_every_steps=3', '--config.checkpoint_every_steps=3', '--workdir', str(tmp_path / 'two_by_two')]
  procs = []
  for process_id in range(2):
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS='cpu',
               JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(process_id))
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  one = checkpoints.load(str(tmp_path / 'one'))
  for other in ('eight', 'two_by_two'):
    loaded = checkpoints.load(str(tmp_path / other))
    assert loaded.step == 3
    np.testing.assert_allclose(_flat(loaded.variables), _flat(one.variables), rtol=1e-5, atol=1e-6,
                               err_msg=other)
  losses = {}
  for name in ('one', 'eight', 'two_by_two'):
    lines = [json.loads(l) for l in open(tmp_path / name / 'metrics.jsonl')]
    losses[name] = [l['train_loss'] for l in lines if 'train_loss' in l][-1]
  assert losses['eight'] == pytest.approx(losses['one'], rel=1e-5)
  assert losses['two_by_two'] == pytest.approx(losses['one'], rel=1e-5)


def test_sigterm_saves_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path):
  steps = 120
  _train_cli(tmp_path / 'straight', steps)
  workdir = tmp_path / 'preempted'
  args = [sys.executable, '-m', 'resnet_jax.main', *TINY, f'--config.total_steps={steps}',
          '--config.log_every_steps=50', '--config.checkpoint_every_steps=1000', '--workdir', str(workdir)]
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS='cpu',
             PYTHONUNBUFFERED='1')
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = ''
  while 'compiled the train step' not in seen:  # wait until it is training
    line = proc.stderr.readline()
    assert line or proc.poll() is None, seen[-3000:]
    seen += line
  time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert 'SIGTERM: saved a checkpoint at step' in err
  stopped = checkpoints.load(str(workdir)).step
  assert 0 < stopped < steps
  _train_cli(workdir, steps)  # the same command resumes
  a, b = checkpoints.load(str(tmp_path / 'straight')), checkpoints.load(str(workdir))
  assert a.step == b.step == steps
  np.testing.assert_array_equal(_flat(a.variables), _flat(b.variables))  # bitwise on CPU


#: lr 0.1 for 4 steps, then 1e8: the loss overflows within a few steps (tests/test_reproduce.py diverges the same way).
DIVERGING = [*TINY, '--config.total_steps=12', '--config.schedule.boundaries_steps=4',
             '--config.schedule.decay_factor=1e9', '--config.log_every_steps=4', '--config.checkpoint_every_steps=4']


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, cli):
  """The command line (in-process, conftest's `cli`): exit status 3 and one line naming the step and the last
  good checkpoint; with config.on_nonfinite=skip the run completes, counting the skipped steps."""
  status, _, err = cli('main', [*DIVERGING, '--workdir', str(tmp_path / 'nan')])
  assert status == 3, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: loss or gradients became NaN/Inf at step ') and 'checkpoint (step 4)' in last
  assert checkpoints.Checkpointer(str(tmp_path / 'nan'), read_only=True).all_steps() == [4]

  status, _, err = cli('main', [*DIVERGING, '--workdir', str(tmp_path / 'skip'), '--config.on_nonfinite=skip'])
  assert status == 0, err[-3000:]
  lines = [json.loads(l) for l in open(tmp_path / 'skip' / 'metrics.jsonl')]
  assert sum(l.get('nonfinite_steps', 0) for l in lines) > 0


def test_ghost_bn_with_the_per_device_batch_reproduces_per_device_statistics():
  """bn_group_size = per-device batch gives what each device computing its own BN statistics gives
  (the papers' per-GPU BN), also when the batch is sharded over 2 devices under jit."""
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  ghost = create_model('cifar_resnet20', bn_group_size=8, stage_widths=(8, 8, 8))
  plain = create_model('cifar_resnet20', stage_widths=(8, 8, 8))
  variables = plain.init(jax.random.key(1), x[:2], train=False)
  run = lambda model, batch: model.apply(variables, batch, train=True, mutable=['batch_stats'])
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ('data',))
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  ghost_logits, ghost_stats = jax.jit(lambda b: run(ghost, b))(sharded)
  per_device = [run(plain, x[:8]), run(plain, x[8:])]
  np.testing.assert_allclose(ghost_logits, jnp.concatenate([p[0] for p in per_device]), rtol=1e-4, atol=1e-4)
  # Running statistics: the average of the per-device updates.
  mean_of_updates = jax.tree.map(lambda a, b: (a + b) / 2, per_device[0][1], per_device[1][1])
  np.testing.assert_allclose(_flat(ghost_stats), _flat(mean_of_updates), rtol=1e-4, atol=1e-5)
