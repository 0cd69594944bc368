"""Data parallelism with `jax.jit` over a `Mesh` of every device of every process (one axis, `data`).

Parameters and optimizer state are replicated; batches are sharded along their leading axis. A batch is a
global `jax.Array` assembled from the rows each process loaded (`jax.make_array_from_process_local_data`),
so the same jitted step runs unchanged on one CPU, one GPU, eight GPUs or a TPU pod.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.errors import UserError

DATA_AXIS = 'data'

#: Seconds without a heartbeat after which JAX's coordination service declares a process of a multi-process run
#: dead (`jax.distributed.initialize(heartbeat_timeout_seconds=...)`; JAX's default is 100). A process that is
#: killed fails the next collective of the others at once (the connection drops; measured with gloo on CPU: the
#: survivor exits within a second), and they stop with one error line (`exit_if_a_process_is_lost`). This timeout
#: bounds the rest: a process that hangs or whose host vanishes, and a survivor waiting at a barrier rather than
#: in a collective. JAX then aborts every process (a fatal 'Terminating process because the JAX distributed
#: service detected fatal errors' log line, SIGABRT) about this many seconds later. Heartbeats are sent by a
#: background thread, so long compiles and evaluations do not miss them.
HEARTBEAT_TIMEOUT_S = 30
#: Seconds a process waits for all processes of the run to connect at start (JAX's default).
INITIALIZATION_TIMEOUT_S = 300
#: Exit status of a process that stopped because another process of its run died or became unreachable. The
#: checkpoints saved are kept: restarting every process with the same command resumes from the newest.
EXIT_LOST_PROCESS = 4
_TIMEOUTS = dict(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S, initialization_timeout=INITIALIZATION_TIMEOUT_S)
# Words of the errors a collective or the coordination service raises when a process of the run is gone.
_LOST_PROCESS_SIGNS = ('gloo', 'connection reset', 'connection closed', 'connection refused', 'socket closed',
                       'broken pipe', 'heartbeat', 'coordination service', 'unavailable:', 'barrier')


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Calls `jax.distributed.initialize()` when this process is one of several; a no-op otherwise.

  Explicit: the arguments (main.py's --coordinator_address/--num_processes/--process_id) or the environment
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. Otherwise JAX detects TPU pods,
  SLURM and other clusters itself. On CPU the collectives are gloo (JAX's default). Safe to call twice.
  """
  if jax.distributed.is_initialized():
    return
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0')) or None
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if coordinator_address and num_processes and num_processes > 1:
    if process_id is None:
      raise UserError('several processes need a process id: set --process_id or JAX_PROCESS_ID')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **_TIMEOUTS)
    return
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  tpu_pod = ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if slurm or tpu_pod:
    jax.distributed.initialize(**_TIMEOUTS)


def lost_process(error: BaseException) -> bool:
  """Whether `error`, raised in a run of several processes, says that another process died or is unreachable
  (a failed gloo/NCCL collective, a lost coordination service)."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return False
  text = str(error).lower()
  return any(sign in text for sign in _LOST_PROCESS_SIGNS)


@contextlib.contextmanager
def exit_if_a_process_is_lost(workdir: str) -> Iterator[None]:
  """In a run of several processes: when another process dies (killed, its host lost), prints one `error:` line
  naming this process and `workdir` and exits at once with EXIT_LOST_PROCESS, instead of a page of collective
  and coordination-service errors.

  `os._exit`, not `sys.exit`: at a normal exit JAX's distributed shutdown waits at a barrier for every process,
  the dead one too, until HEARTBEAT_TIMEOUT_S, and then aborts the process. Nothing is lost by skipping it: the
  run cannot go on without the dead process, and its checkpoints are saved (a save in progress was incomplete
  and is ignored on resume).
  """
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    if not lost_process(error):
      raise
    text = (str(error).strip().splitlines() or [''])[0]
    text = text if len(text) <= 160 else text[:157] + '...'
    print(f"error: process {jax.process_index()} of {jax.process_count()} stopped: another process of the run "
          f"died or became unreachable ({type(error).__name__}: {text}). The checkpoints saved in {workdir} are "
          "kept; restart every process with the same command to resume from the newest", file=sys.stderr,
          flush=True)
    sys.stdout.flush()
    os._exit(EXIT_LOST_PROCESS)  # pylint: disable=protected-access


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(global_batch: int, mesh: Mesh, what: str = 'config.batch_size') -> None:
  devices = mesh.devices.size
  if global_batch % devices:
    lower = global_batch - global_batch % devices
    raise UserError(f"{what}={global_batch} is not divisible by the {devices} devices; use a multiple of "
                    f"{devices} such as {max(lower, devices)} or {lower + devices}")


def local_batch_slice(global_batch: int, mesh: Mesh) -> slice:
  """The rows [start, stop) of each global batch that belong to this process's devices."""
  per_device = global_batch // mesh.devices.size
  positions = [index for index, device in enumerate(mesh.devices.flat)
               if device.process_index == jax.process_index()]
  start, stop = min(positions) * per_device, (max(positions) + 1) * per_device
  if stop - start != len(positions) * per_device:
    raise ValueError('this process\'s devices are not contiguous in the mesh')
  return slice(start, stop)


def host_to_global(local: Mapping[str, np.ndarray], mesh: Mesh, global_batch: int) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_process_local_data(sharding, value, (global_batch,) + value.shape[1:])
  return out


def fetch(tree: Any) -> Any:
  """Device -> host for replicated or fully addressable values (metrics, small state)."""
  def get(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return np.asarray(leaf.addressable_data(0))
    return np.asarray(leaf)
  return jax.tree.map(get, tree)
