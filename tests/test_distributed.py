"""Training at scale, checked on CPU: divergence and ghost BN.

Device- and process-count invariance is checked by tests/test_topology_faults.py (a run moved over 8 devices, 1
device and 2 processes equals the 1-device run at every step); SIGTERM preemption by tests/test_preemption.py."""

import json
import socket

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpoints
from resnet_jax.models import create_model

# The suite's tiny quickstart network (conftest.TINY_OVERRIDES) with one unit per stage, for the runs that compile
# per topology (tests/test_topology_faults.py, tests/kill_loop.py, the diverging run here and in test_reproduce):
# half the compile time, and their programs are shared through the suite's compilation cache.
TINY = ['--config', 'configs/quickstart.py', '--config.batch_size=32', '--config.schedule.boundaries_epochs=None',
        '--config.model.stage_widths=(8,16,16)', '--config.model.stage_sizes=(1,1,1)',
        '--config.eval_every_steps=1000']


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


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
