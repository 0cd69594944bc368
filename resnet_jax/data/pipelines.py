"""Input pipelines: what the train loop and the evaluator iterate over.

Device-resident training data (small datasets: digits, CIFAR, SVHN)
  The whole training split is held once on the accelerators as a uint8 array sharded over the `data` mesh
  axis (each device keeps 1/D of it, each process loads only its part). The batch for step `s` is a pure
  function of (seed, s): examples are drawn without replacement from a fresh permutation each epoch, epochs
  following each other without a gap (a batch may straddle two epochs; nothing is dropped). Inside jit each
  device picks the requested examples it holds and a `psum_scatter` hands every device its slice of the
  batch, so the batch sequence is identical on any number of devices and hosts, and a resumed run sees
  exactly the batches of an uninterrupted one. The per-step traffic is one batch, not the dataset.

Evaluation batches
  Every example is counted exactly once on any device count: the split is cut into global batches, the last
  one padded, and a `mask` marks real examples. Each process reads only its rows of each batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import parallel
from resnet_jax.data.sources import ExampleSource
from resnet_jax.errors import UserError

# Domain-separation constant: data-order randomness never collides with model/augmentation randomness.
_DATA_ORDER_STREAM = 0x5EED


@dataclasses.dataclass
class DeviceResidentData:
  """A training split resident on the devices. `arrays` is the pytree to pass into jit."""
  arrays: dict[str, jax.Array]   # {'image': uint8 [N_pad, H, W, C], 'label': int32 [N_pad]}, sharded
  num_examples: int              # N, real examples (the rest is padding up to a multiple of the device count)
  global_batch: int
  seed: int
  mesh: Mesh

  @property
  def steps_per_epoch(self) -> float:
    return self.num_examples / self.global_batch

  @classmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray], mesh: Mesh, global_batch: int,
                  seed: int) -> 'DeviceResidentData':
    """Places a whole split ({'image': uint8 [N,H,W,C], 'label': int [N]}) on the devices of `mesh`.

    Every process passes the same arrays; each transfers only the rows its devices hold.
    """
    n = len(arrays['label'])
    if global_batch > n:
      raise UserError(f"config.batch_size={global_batch} is larger than the {n} training examples; use a "
                      f"batch of at most {n}")
    devices = mesh.devices.size
    padded = math.ceil(n / devices) * devices
    per_device = padded // devices
    positions = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    start, stop = min(positions) * per_device, (max(positions) + 1) * per_device
    sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
    placed = {}
    for key, value in (('image', arrays['image']), ('label', arrays['label'].astype(np.int32))):
      local = value[start:min(stop, n)]
      if len(local) < stop - start:
        local = np.concatenate([local, np.zeros((stop - start - len(local),) + value.shape[1:], value.dtype)])
      placed[key] = jax.make_array_from_process_local_data(sharding, local, (padded,) + value.shape[1:])
    return cls(arrays=placed, num_examples=n, global_batch=global_batch, seed=seed, mesh=mesh)

  def batch_indices(self, step: jax.Array) -> jax.Array:
    """Dataset indices of the global batch at `step` (traceable)."""
    n, b = self.num_examples, self.global_batch
    position = step * b + jnp.arange(b)
    epoch = position // n
    offset = position % n
    first_epoch = epoch[0]
    base = jax.random.fold_in(jax.random.key(self.seed), _DATA_ORDER_STREAM)
    perm_a = jax.random.permutation(jax.random.fold_in(base, first_epoch), n)
    perm_b = jax.random.permutation(jax.random.fold_in(base, first_epoch + 1), n)
    # A batch spans at most two epochs because from_arrays requires b <= n.
    return jnp.where(epoch == first_epoch, perm_a[offset], perm_b[offset])

  def batch(self, arrays: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
    """The global batch at `step`, sharded over `data`; call inside jit with `arrays` as an argument."""
    indices = self.batch_indices(step)
    devices = self.mesh.devices.size
    per_device_rows = arrays['label'].shape[0] // devices

    def gather_local(local_arrays, idx):
      shard = jax.lax.axis_index(parallel.DATA_AXIS)
      local_idx = idx - shard * per_device_rows
      mine = (local_idx >= 0) & (local_idx < per_device_rows)
      safe_idx = jnp.where(mine, local_idx, 0)
      out = {}
      for key, value in local_arrays.items():
        picked = jnp.take(value, safe_idx, axis=0)
        picked = jnp.where(mine.reshape((-1,) + (1,) * (value.ndim - 1)), picked, 0)
        # Exactly one device holds each example, so the sum is that example; sum in int32 (exact for uint8).
        out[key] = jax.lax.psum_scatter(picked.astype(jnp.int32), parallel.DATA_AXIS,
                                        scatter_dimension=0, tiled=True).astype(value.dtype)
      return out

    return jax.shard_map(gather_local, mesh=self.mesh,
                         in_specs=(P(parallel.DATA_AXIS), P()), out_specs=P(parallel.DATA_AXIS))(arrays, indices)


def eval_batches(source: ExampleSource, mesh: Mesh, global_batch: int,
                 limit: Optional[int] = None) -> Iterator[dict[str, jax.Array]]:
  """Yields global batches {'image', 'label', 'mask'} covering `source` exactly once (padded + masked)."""
  n = len(source) if limit is None else min(limit, len(source))
  rows = parallel.local_batch_slice(global_batch, mesh)
  for start in range(0, n, global_batch):
    lo, hi = start + rows.start, min(start + rows.stop, n)
    wanted = rows.stop - rows.start
    indices = np.arange(lo, hi) if hi > lo else np.zeros((0,), np.int64)
    if len(indices):
      local = source.read(indices)
    else:
      shape = source.image_shape
      local = {'image': np.zeros((0,) + tuple(shape), np.uint8), 'label': np.zeros((0,), np.int32)}
    mask = np.zeros((wanted,), bool)
    mask[:len(indices)] = True
    pad = wanted - len(indices)
    if pad:
      local = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in local.items()}
    local['mask'] = mask
    yield parallel.host_to_global(local, mesh, global_batch)


def num_eval_batches(num_examples: int, global_batch: int) -> int:
  return math.ceil(num_examples / global_batch)
