"""The training data order: which example fills each position of the training stream, for every pipeline.

The stream is a sequence of global positions q = 0, 1, 2, ...; the global batch at step s is positions
[s B, (s + 1) B). Position q is example perm_e(q mod N) of epoch e = q // N: epochs follow each other without a
gap (a batch may straddle two epochs; nothing is dropped or repeated within an epoch), and perm_e is a keyed
pseudo-random permutation of [0, N) evaluated per position (`feistel_permutation`), O(B) work per step instead of
materialising an N-element permutation. The order is a pure function of (seed, position), so it is the same on
any number of devices and hosts and a resumed run sees exactly the batches of an uninterrupted one.

One implementation serves both pipelines: the functions take the array module, `numpy` on the host (Grain
workers, which must not import JAX) or `jax.numpy` inside the jitted step of the device-resident path. The keys
of epoch e are `jax.random.bits(fold_in(fold_in(key(seed), 0x5EED), e), (4,), uint32)` (the device-resident
order of earlier versions, kept bitwise); they are computed with Threefry-2x32 written out in integer array ops
(Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", the generator behind `jax.random`), so
NumPy gives the very same bits without JAX.
"""

from __future__ import annotations

from typing import Any, Optional

from absl import logging
import numpy as np

from resnet_jax.errors import UserError

# Domain-separation constant: data-order randomness never collides with model/augmentation randomness.
DATA_ORDER_STREAM = 0x5EED
FEISTEL_ROUNDS = 4
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _rotate_left(x, bits: int):
  return (x << bits) | (x >> (32 - bits))


def threefry2x32(key: tuple[Any, Any], x0, x1, xp=np) -> tuple[Any, Any]:
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011, Random123), as `jax.random`'s threefry2x32 primitive:
  uint32 arrays in, uint32 arrays out."""
  uint = xp.uint32
  keys = (uint(key[0]), uint(key[1]))
  keys = keys + (keys[0] ^ keys[1] ^ uint(_THREEFRY_PARITY),)
  x0, x1 = xp.asarray(x0, xp.uint32) + keys[0], xp.asarray(x1, xp.uint32) + keys[1]
  for block in range(5):
    for bits in _THREEFRY_ROTATIONS[block % 2]:
      x0 = x0 + x1
      x1 = _rotate_left(x1, bits) ^ x0
    x0 = x0 + keys[(block + 1) % 3]
    x1 = x1 + keys[(block + 2) % 3] + uint(block + 1)
  return x0, x1


def epoch_keys(seed: int, epoch, xp=np):
  """uint32 [..., FEISTEL_ROUNDS]: the Feistel round keys of each epoch in `epoch` (an integer array).

  `jax.random.fold_in(key, d)` is threefry2x32(key, (0, d)) and `jax.random.bits(key, (4,), uint32)` (with
  jax_threefry_partitionable, the default) is y0 ^ y1 of threefry2x32(key, (0, i)) for i = 0..3.
  """
  one = lambda value: xp.full((1,), value, xp.uint32)  # arrays, not scalars: uint32 arithmetic wraps silently
  base = threefry2x32((0, int(seed) & 0xFFFFFFFF), one(0), one(DATA_ORDER_STREAM), xp)
  epoch = xp.atleast_1d(xp.asarray(epoch)).astype(xp.uint32)
  key = threefry2x32(base, xp.zeros_like(epoch), epoch, xp)
  words = [threefry2x32(key, xp.zeros_like(epoch), xp.full_like(epoch, i), xp) for i in range(FEISTEL_ROUNDS)]
  return xp.stack([y0 ^ y1 for y0, y1 in words], axis=-1)


def _mix32(x, xp):
  """A 32-bit integer hash (lowbias32, C. Wellons): good avalanche, cheap."""
  x = x ^ (x >> 16)
  x = x * xp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * xp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def feistel_permutation(index, size: int, keys, xp=np):
  """perm(index) for a keyed pseudo-random permutation of [0, size); keys: uint32 [..., rounds] per element.

  A balanced Feistel network on the smallest even-bit power-of-two domain >= size is a bijection of that
  domain; cycle-walking (re-applying it until the value falls below size) restricts it to a bijection of
  [0, size). The domain is smaller than 4 * size, so a few walks suffice.
  """
  bits = max(2, int(np.ceil(np.log2(max(size, 2)))))
  half = (bits + 1) // 2
  mask = xp.uint32((1 << half) - 1)
  keys = xp.asarray(keys).astype(xp.uint32)

  def permute(x):
    left, right = x >> half, x & mask
    for round_index in range(keys.shape[-1]):
      left, right = right, left ^ (_mix32(right ^ keys[..., round_index], xp) & mask)
    return (left << half) | right

  x = permute(xp.asarray(index).astype(xp.uint32))
  walk = lambda x: xp.where(x >= size, permute(x), x)
  if xp is np:
    while np.any(x >= size):
      x = walk(x)
  else:  # traced: jax.numpy; the host path above never imports JAX
    from jax import lax  # pylint: disable=g-import-not-at-top
    x = lax.while_loop(lambda x: xp.any(x >= size), walk, x)
  return x.astype(xp.int32)


def example_indices(seed: int, num_examples: int, positions, xp=np, repeats: int = 1,
                    global_batch: Optional[int] = None):
  """Example index (int32) at each stream position in `positions` (integer array; traceable with jax.numpy).
  repeats > 1: repeated augmentation (`repeated_positions`) in global batches of `global_batch`."""
  if repeats > 1:
    positions = repeated_positions(positions, global_batch, repeats, xp)
  epoch = positions // num_examples
  return feistel_permutation(positions % num_examples, num_examples, epoch_keys(seed, epoch, xp), xp)


def repeated_positions(positions, global_batch: int, repeats: int, xp=np):
  """Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019's "multiplicity"; timm's and torchvision's
  RepeatAugSampler / RASampler, used by "ResNet strikes back" A1/A2 and torchvision's v2 recipe with 3 and 4
  repeats): each global batch holds B / repeats distinct examples, each `repeats` times. The stream position q
  (slot i = q mod B of step s = q // B) is read as the position s * (B / repeats) + (i mod B / repeats) of the
  order without repeats, so the copies of an example sit B / repeats slots apart: in different devices' blocks
  of the batch when repeats divides the device count (timm deals the copies to consecutive ranks, the same
  spread), each augmented on its own (the augmentation draws are per slot). As in timm, an epoch keeps N
  positions, so it shows N / repeats distinct examples; unlike timm, which draws a fresh permutation each epoch and
  keeps its first N / repeats, the distinct examples follow one permutation after the other, so every example is
  seen equally often. A batch that `repeats` does not divide (RSB's 2048 with 3 repeats) holds ceil(B / repeats)
  distinct examples and its last copy is cut short: the last few examples have one copy fewer (timm pads and
  truncates its repeated list in the same spirit); no example is skipped."""
  per_copy = -(-global_batch // repeats)
  step, slot = positions // global_batch, positions % global_batch
  return step * per_copy + slot % per_copy


def check_repeats(repeats: Any, global_batch: int) -> None:
  """config.repeated_augmentation: a positive integer, at most the global batch."""
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise UserError(f"config.repeated_augmentation must be a positive integer (copies of each example per batch; "
                    f"1 = off), got {repeats!r}")
  if repeats > global_batch:
    raise UserError(f"config.repeated_augmentation={repeats} is larger than config.batch_size={global_batch}: "
                    "every copy of an example is in the same batch; use at most the batch size (RSB: 3)")


def batch_positions(step, global_batch: int, rows: Optional[tuple[int, int]] = None, xp=np):
  """Stream positions of the global batch at `step`, or of its rows [lo, hi) (one process's part)."""
  lo, hi = (0, global_batch) if rows is None else rows
  return step * global_batch + xp.arange(lo, hi)


def check_batch_fits(global_batch: int, num_examples: int) -> None:
  if global_batch > num_examples:
    raise UserError(f"config.batch_size={global_batch} is larger than the {num_examples} training examples; use a "
                    f"batch of at most {num_examples}")


# The position saved with a checkpoint: the next step, and what the order depends on. Version 1 was the streaming
# pipeline's order of earlier versions (a NumPy permutation per epoch); version 2 is this module's order.
STATE_VERSION = 2


def position_state(step: int, seed: int, global_batch: int, num_examples: int) -> dict[str, Any]:
  """JSON-serialisable position of a training stream whose next batch is the one of `step`."""
  return {'version': STATE_VERSION, 'step': int(step), 'seed': int(seed), 'global_batch': int(global_batch),
          'num_examples': int(num_examples), 'epoch': int(step) * global_batch / num_examples}


def resume_step(state: dict[str, Any], seed: int, global_batch: int, num_examples: int) -> int:
  """The step a stream saved as `state` (from position_state) continues at; UserError if this run's order
  cannot continue it exactly."""
  ours = {'seed': seed, 'global_batch': global_batch, 'num_examples': num_examples}
  for key, value in ours.items():
    if key in state and int(state[key]) != int(value):
      raise UserError(f"the saved input-pipeline position was made with {key}={state[key]}, this run has {value}; "
                      "resume with the same config.seed, batch_size and dataset, or start a new workdir")
  step, version = int(state['step']), int(state.get('version', STATE_VERSION))
  if version == 1 and (step * global_batch) % num_examples:
    raise UserError(f"this checkpoint (step {step}) was saved in the middle of an epoch by a streaming pipeline "
                    "of an earlier version, whose data order differs; resume from a checkpoint at an epoch "
                    "boundary, or start a new workdir")
  if version == 1:
    logging.warning('the checkpoint of step %d was saved by an earlier version at an epoch boundary; the '
                    'following epochs use the current data order', step)
  elif version != STATE_VERSION:
    raise UserError(f"input-pipeline state version {version} is not known to this version (<= {STATE_VERSION}); "
                    "resume with the version that wrote the checkpoint")
  return step
