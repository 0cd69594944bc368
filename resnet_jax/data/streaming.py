"""Streaming input (Grain) for datasets that do not fit on the accelerators, and evaluation batches.

Host side: a Grain `MapDataset.range(start, ...)` of batch numbers mapped by a `TrainBatchMaker` /
`EvalBatchMaker` (resnet_jax.data.host_pipeline), turned into an `IterDataset` with `ReadOptions(num_threads)`
and, with `num_workers > 0`, `mp_prefetch` worker processes (each builds whole batches; Grain hands them back
in order). Device side: a background thread (`DevicePrefetcher`) assembles each host batch into a global
`jax.Array` sharded over the mesh's `data` axis (`parallel.host_to_global`, i.e.
`jax.make_array_from_process_local_data`) and keeps the next `prefetch` batches already transferred, so the
train step never waits on the host while the pipeline keeps up.

Because the batch at step s is a pure function of (seed, s) (see host_pipeline), the pipeline position is the
step. `StreamingTrainData.get_state()` is a small JSON dict, the same on every process; `set_state()`
rebuilds the Grain iterator at that step. A resumed pipeline yields exactly the batches the uninterrupted one
would have, and the state can be stored once (by process 0) in the checkpoint metadata.

Sharding across processes: process p builds rows [lo, hi) of every global batch (the rows of its devices),
reading only those examples. Over an epoch the processes therefore read disjoint sets of examples that cover
the split. This replaces Grain's fixed per-process shards (`IndexSampler` + `ShardByJaxProcess`), under which
the global batch would depend on the number of processes and every process would need its own iterator
state in the checkpoint; here the batch sequence is the same on 1 GPU or a pod, and a run can even resume
on a different number of hosts. Random access to the source (ArrayRecord, files) makes this free.
"""

from __future__ import annotations

import math
import queue
import threading
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data import host_pipeline
from resnet_jax.data import order
from resnet_jax.errors import UserError

_NO_END = 1 << 50


def _ensure_absl_flags_parsed() -> None:
  """Grain reads absl flags; outside an absl app (tests, notebooks) use their defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


_END = object()


class DevicePrefetcher:
  """A thread that turns host batches into global device arrays ahead of use (double buffering)."""

  def __init__(self, host_batches: Iterator[dict[str, np.ndarray]], to_device: Callable[[Any], Any],
               size: int = 2):
    self._host = host_batches
    self._to_device = to_device
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(size)))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='resnet_jax-input-prefetch', daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self):
    try:
      for batch in self._host:
        if self._stop.is_set() or not self._put(self._to_device(batch)):
          return
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    if self._stop.is_set():
      raise StopIteration
    item = self._queue.get()
    if item is _END:
      self._stop.set()
      raise StopIteration
    if isinstance(item, BaseException):
      self._stop.set()
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    while True:  # unblock a producer waiting on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=30)
    if hasattr(self._host, 'close'):  # Grain's iterator: stops its threads and worker processes
      try:
        self._host.close()
      except Exception:  # pylint: disable=broad-except  (already stopping; nothing left to report it to)
        pass


class StreamingTrainData:
  """Training batches streamed from a source through Grain, as global arrays sharded over `data`.

  Iterate with `next(data)`: {'image': uint8 [global_batch, H, W, C], 'label': int32 [global_batch]}, after the
  host operations (decode, crops, colour: `host_pipeline.HOST_OPERATIONS`); `device_augment(key, images)` runs
  the device operations (pad-and-crop, flip) inside the jitted step, as on the device-resident path.
  """

  pipeline = 'grain'

  def __init__(self, source, mesh: Mesh, global_batch: int, seed: int, transform: host_pipeline.TrainTransform,
               device_augment: Callable[[jax.Array, jax.Array], jax.Array], *,
               normalization: tuple[Any, Any] = ((0.0,), (1.0,)), num_workers: int = 0, num_threads: int = 1,
               prefetch: int = 2, corrupt_images: str = 'fail', start_step: int = 0, repeats: int = 1):
    parallel.check_batch_divisible(global_batch, mesh)
    order.check_batch_fits(global_batch, len(source))
    self.source = source
    self.mesh = mesh
    self.global_batch = int(global_batch)
    self.seed = int(seed)
    self.transform = transform
    self.device_augment = device_augment
    self.normalization = normalization  # (mean, std): `data.normalization.for_run`
    self.num_workers, self.num_threads, self.prefetch = int(num_workers), int(num_threads), int(prefetch)
    rows = parallel.local_batch_slice(global_batch, mesh)
    self.maker = host_pipeline.TrainBatchMaker(source, global_batch, (rows.start, rows.stop), seed, transform,
                                               corrupt_images, repeats=repeats)
    self.step = int(start_step)  # the step whose batch the next `next()` returns
    self._prefetcher: Optional[DevicePrefetcher] = None

  # Description ------------------------------------------------------------------------------------------
  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.transform.output_shape)

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  @property
  def num_examples(self) -> int:
    return len(self.source)

  @property
  def steps_per_epoch(self) -> float:
    return self.num_examples / self.global_batch

  # Iteration --------------------------------------------------------------------------------------------
  def _start(self) -> None:
    self._prefetcher = device_batches(self.maker, self.step, _NO_END, self.mesh, self.global_batch,
                                      self.num_workers, self.num_threads, self.prefetch)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._prefetcher is None:
      self._start()
    batch = next(self._prefetcher)
    self.step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: the next step plus what must match on resume (`order.position_state`)."""
    return order.position_state(self.step, self.seed, self.global_batch, self.num_examples)

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `state` (from get_state): the next batch is the one of step state['step']."""
    step = order.resume_step(state, self.seed, self.global_batch, self.num_examples)
    self._stop()
    self.step = step

  def program_inputs(self, step: int, num_steps: int) -> dict[str, jax.Array]:
    """The next `num_steps` global batches (those of steps step ..), stacked on a leading axis when several."""
    if step != self.step:
      raise ValueError(f'the input stream is at step {self.step}, not {step}')  # a bug, not a user error
    batches = [next(self) for _ in range(num_steps)]
    return batches[0] if num_steps == 1 else _stack(*batches)

  @staticmethod
  def batch_in_program(inputs: dict[str, jax.Array], step: jax.Array, index: Optional[jax.Array]):
    """Inside jit: the batch of the program's step number `index` (None: the program takes one batch)."""
    del step
    return inputs if index is None else jax.tree.map(lambda stacked: stacked[index], inputs)

  def _stop(self) -> None:
    if self._prefetcher is not None:
      self._prefetcher.close()
    self._prefetcher = None

  def close(self) -> None:
    self._stop()

  def __del__(self):
    try:
      self._stop()
    except Exception:  # pylint: disable=broad-except
      pass


class EvalData:
  """A re-iterable evaluation pass: padded, masked global batches {'image', 'label', 'mask'}.

  Every example of the split is in exactly one batch row with mask True, on any number of processes and
  devices; each process reads and preprocesses only its rows. With `views == 10`, 'image' is
  [global_batch, 10, crop, crop, C] (ten-crop): average the model's outputs over axis 1.
  """

  def __init__(self, source, mesh: Mesh, global_batch: int, transform: host_pipeline.EvalTransform, *,
               num_workers: int = 0, num_threads: int = 1, prefetch: int = 2, corrupt_images: str = 'fail',
               limit: Optional[int] = None):
    devices = mesh.devices.size
    self.global_batch = -(-int(global_batch) // devices) * devices  # padding is masked anyway
    self.source = source
    self.mesh = mesh
    self.transform = transform
    self.num_examples = len(source) if limit is None else min(int(limit), len(source))
    self.num_workers, self.num_threads, self.prefetch = int(num_workers), int(num_threads), int(prefetch)
    rows = parallel.local_batch_slice(self.global_batch, mesh)
    self.maker = host_pipeline.EvalBatchMaker(source, self.global_batch, (rows.start, rows.stop),
                                              self.num_examples, transform, corrupt_images)

  @property
  def num_batches(self) -> int:
    return math.ceil(self.num_examples / self.global_batch)

  @property
  def views(self) -> int:
    return 10 if self.transform.crop == 'ten' else 1

  @property
  def image_shape(self) -> tuple[int, ...]:
    """Shape of one example's 'image' (with a leading 10 for ten-crop)."""
    return tuple(self.transform.output_shape)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    prefetcher = device_batches(self.maker, 0, self.num_batches, self.mesh, self.global_batch, self.num_workers,
                                self.num_threads, self.prefetch)
    try:
      yield from prefetcher
    finally:
      prefetcher.close()


@jax.jit
def _stack(*batches):
  return jax.tree.map(lambda *arrays: jax.numpy.stack(arrays), *batches)


def device_batches(maker: Callable[[int], dict[str, np.ndarray]], start: int, stop: int, mesh: Mesh,
                   global_batch: int, num_workers: int, num_threads: int, prefetch: int) -> 'DevicePrefetcher':
  """Global device batches of `maker(i)` for i in [start, stop): Grain threads (and, with num_workers > 0, worker
  processes, which hand whole batches back in order) build them on the host, a thread transfers them ahead of
  use. Close the result to stop both."""
  import grain  # pylint: disable=g-import-not-at-top  (slow to import; only streamed runs need it)
  _ensure_absl_flags_parsed()
  if num_workers < 0 or num_threads < 0:
    raise UserError(f"config.input.num_workers={num_workers} and num_threads={num_threads} must be >= 0")
  buffer = max(2, int(prefetch))
  dataset = grain.MapDataset.range(int(start), int(stop)).map(maker).to_iter_dataset(
      grain.ReadOptions(num_threads=int(num_threads), prefetch_buffer_size=buffer))
  if num_workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(num_workers),
                                                               per_worker_buffer_size=buffer))
  return DevicePrefetcher(iter(dataset), lambda batch: parallel.host_to_global(batch, mesh, global_batch), prefetch)
