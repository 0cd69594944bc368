"""A run's directory: one lock while a run writes to it, and a config record that is never silently rewritten.

Layout of a workdir (local or gs://): `config.json` (the run's config, written once by the first invocation),
`config_history.jsonl` (every later change, with the step it took effect at), `metrics.jsonl`,
`eval_results.jsonl`, `curves.png`, TensorBoard events, `checkpoints/` (Orbax) and `run.lock`.

The lock (`run.lock`, JSON naming host, pid, start time and purpose) is held by process 0 of a training run or
of a writing `--mode eval`; the other processes learn the outcome by a broadcast, so all of them stop together.
  - Locally it is an OS lock (`flock`) on that file, which the kernel releases when its holder dies, so a run
    killed with SIGKILL never leaves a lock behind.
  - On an object store it is a lease: an object created with a create-only-if-absent precondition, renewed
    every `RENEW_SECONDS` while the run lives and stale `LEASE_SECONDS` after its last renewal (a preempted VM).
    A lease of this host whose process is gone is stale at once.
Readers (`checkpoints.load`, `plot`, `reproduce --aggregate`, `analysis`) take no lock: Orbax publishes a
checkpoint step only when it is complete, so they read a consistent one while a run trains.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator, Mapping, Optional

import jax
import ml_collections
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import storage
from resnet_jax.errors import UserError

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'
LOCK_FILE = 'run.lock'

#: A bucket lease not renewed for this long is stale and may be taken over (a preempted VM renews nothing).
LEASE_SECONDS = 300.0
#: How often a live run renews its bucket lease.
RENEW_SECONDS = 60.0

#: Config fields a rerun may change without --allow_config_change, as they change when or how often things
#: happen, not what is trained: a longer run, other log/eval/save intervals, dispatch grouping, the cache.
#: (total_steps and total_epochs may only grow: a shorter run than the one recorded needs the flag.)
FREELY_CHANGED = ('total_steps', 'total_epochs', 'log_every_steps', 'eval_every_steps', 'eval_every_epochs',
                  'checkpoint_every_steps', 'checkpoint_every_epochs', 'keep_checkpoints', 'steps_per_dispatch',
                  'compilation_cache_dir')
#: Fields no rerun may change: the checkpoints could not be restored into another model or dataset, and the
#: initialisation already happened from the first run's source.
NEVER_CHANGED = ('model', 'dataset', 'init_from', 'init_exclude')


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def _holder_description(holder: Mapping[str, Any]) -> str:
  return (f"{holder.get('purpose', 'a run')} by pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
          f"started {holder.get('started', '?')}")


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except OSError as error:
    return error.errno == errno.EPERM
  return True


class WorkdirLock:
  """The lock of one workdir (see the module docstring). `acquire()` raises UserError naming the holder."""

  def __init__(self, workdir: str, purpose: str = 'training'):
    self.workdir = workdir
    self.path = storage.resolve(workdir) / LOCK_FILE
    self.holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': _now(), 'purpose': purpose,
                   'token': uuid.uuid4().hex}
    self._file = None
    self._renewer: Optional[threading.Thread] = None
    self._stop = threading.Event()

  def _refuse(self, holder: Mapping[str, Any]) -> UserError:
    return UserError(f"--workdir {self.workdir} is in use ({_holder_description(holder)}); wait for it to finish, "
                     "stop it, or choose another --workdir")

  def check_free(self) -> None:
    """Raises the refusal if a live run holds the lock; reads only (takes nothing)."""
    if storage.is_remote(self.path):
      lease = self._read_lease()
      if lease and not self._stale(lease):
        raise self._refuse(lease)
      return
    import fcntl  # pylint: disable=g-import-not-at-top
    try:
      file = open(os.fspath(self.path))  # pylint: disable=consider-using-with
    except OSError:  # no lock file (or no workdir): nobody holds it
      return
    with file:
      try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        raise self._refuse(self._holder_of(file.read())) from None
      fcntl.flock(file, fcntl.LOCK_UN)

  @staticmethod
  def _holder_of(text: str) -> dict[str, Any]:
    try:
      return json.loads(text)
    except ValueError:
      return {}

  def acquire(self) -> None:
    if storage.is_remote(self.path):
      self._acquire_lease()
    else:
      self._acquire_local()

  def release(self) -> None:
    if self._file is not None:
      import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only, and only local workdirs lock a file)
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
    if self._renewer is not None:
      self._stop.set()
      self._renewer.join()
      self._renewer = None
      if self._read_lease().get('token') == self.holder['token']:
        storage.remove(self.path)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  # Local: an OS lock; the file's content only names the holder for the refusal message.
  def _acquire_local(self) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top
    file = open(os.fspath(self.path), 'a+')  # pylint: disable=consider-using-with  (held until release)
    try:
      fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      file.seek(0)
      holder = self._holder_of(file.read())
      file.close()
      raise self._refuse(holder) from None
    file.seek(0)
    file.truncate()
    file.write(json.dumps({k: v for k, v in self.holder.items() if k != 'token'}) + '\n')
    file.flush()
    self._file = file

  # Object stores: a lease object.
  def _lease_bytes(self) -> bytes:
    return json.dumps({**self.holder, 'renewed': time.time()}).encode()

  def _read_lease(self) -> dict[str, Any]:
    try:
      return json.loads(storage.read_text(self.path))
    except (FileNotFoundError, ValueError):
      return {}

  def _stale(self, lease: Mapping[str, Any]) -> bool:
    if not lease:
      return True
    if lease.get('host') == self.holder['host'] and not _process_alive(int(lease.get('pid', 0))):
      return True
    return time.time() - float(lease.get('renewed', 0)) > LEASE_SECONDS

  def _acquire_lease(self) -> None:
    if not storage.create_exclusive(self.path, self._lease_bytes()):
      lease = self._read_lease()
      if not self._stale(lease):
        raise self._refuse(lease)
      # Take over a stale lease: overwrite it, then read it back after a moment, so that of two runs taking
      # over the same stale lease at once, the one whose write landed last holds it and the other is refused.
      storage.write_bytes(self.path, self._lease_bytes())
      time.sleep(1.0)
      lease = self._read_lease()
      if lease.get('token') != self.holder['token']:
        raise self._refuse(lease)
    self._stop.clear()
    self._renewer = threading.Thread(target=self._renew, name='resnet_jax-lease', daemon=True)
    self._renewer.start()

  def _renew(self) -> None:
    while not self._stop.wait(RENEW_SECONDS):
      try:
        if self._read_lease().get('token') == self.holder['token']:
          storage.write_bytes(self.path, self._lease_bytes())
      except OSError:  # a transient store error: the next renewal tries again, well inside LEASE_SECONDS
        pass


def _on_process_zero(action, workdir: str) -> None:
  """Runs `action()` on process 0 only; every process raises if it raised a UserError (learnt by a broadcast),
  so that all processes of a run stop together with the same outcome."""
  refusal = None
  if jax.process_index() == 0:
    try:
      action()
    except UserError as error:
      refusal = error
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  (multi-process only)
    succeeded = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is None)))
    if not succeeded and refusal is None:
      refusal = UserError(f'--workdir {workdir} is in use (process 0 could not lock it; see its error line)')
  if refusal is not None:
    raise refusal


def check_free(workdir: str, purpose: str = 'training') -> None:
  """Refuses, naming the holder, a workdir that a live run holds; reads only. For the first checks of a run,
  before anything compiles; `locked` then takes the lock."""
  _on_process_zero(WorkdirLock(workdir, purpose).check_free, workdir)


@contextlib.contextmanager
def locked(workdir: str, purpose: str = 'training') -> Iterator[None]:
  """Holds the workdir's lock for the block: process 0 takes it, every process learns whether it did."""
  lock = WorkdirLock(workdir, purpose)
  _on_process_zero(lock.acquire, workdir)
  try:
    yield
  finally:
    if jax.process_index() == 0:
      lock.release()


# The config record.

def _flat(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _top(field: str) -> str:
  return field.split('.', 1)[0]


def recorded_config(workdir: str) -> Optional[dict[str, Any]]:
  """The config of the run in `workdir` as it stands now: config.json with config_history.jsonl's changes
  applied in order (a plain dict), or None for a workdir without a run."""
  root = storage.resolve(workdir)
  if not storage.exists(root / CONFIG_FILE):
    return None
  text = storage.read_text(root / CONFIG_FILE)
  try:
    config = json.loads(text)
  except ValueError:
    raise UserError(f"{root / CONFIG_FILE} is not valid JSON (cut short or edited?); restore it from the "
                    "checkpoints' copy or use a new --workdir") from None
  for change in read_history(workdir):
    for field, (_, new) in change['changes'].items():
      node = config
      *parents, leaf = field.split('.')
      for name in parents:
        node = node.setdefault(name, {})
      node[leaf] = new
  return config


def read_history(workdir: str) -> list[dict[str, Any]]:
  path = storage.resolve(workdir) / HISTORY_FILE
  if not storage.exists(path):
    return []
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def config_changes(saved: Mapping[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
  """{field: (saved, new)} for every field whose value differs (JSON values). A field the saved config lacks
  is no change when it has its configs/default.py value: a newer version added it, with the behaviour the run
  had (e.g. `ema.decay` 0)."""
  new = _flat(json.loads(config_lib.to_json(config)))
  old = _flat(saved)
  defaults = config_lib.default_config()
  defaults = _flat(json.loads(config_lib.to_json(defaults))) if defaults is not None else {}
  added_at_default = {field for field in set(new) - set(old) if field in defaults and new[field] == defaults[field]}
  return {field: (old.get(field), new.get(field)) for field in sorted(set(old) | set(new))
          if old.get(field) != new.get(field) and field not in added_at_default}


def _freely_changed(field: str, old: Any, new: Any) -> bool:
  if field not in FREELY_CHANGED:
    return False
  if field in ('total_steps', 'total_epochs') and old is not None and new is not None:
    return new >= old
  return True


def check_same_run(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict[str, tuple[Any, Any]]]:
  """Refuses a config for another run than the one in `workdir` (another model, dataset or init_from: its
  checkpoints could not be restored, or its initialisation already happened); reads only. Returns all the
  changes against the recorded config, or None for a workdir without a run."""
  saved = recorded_config(workdir)
  if saved is None:
    return None
  changes = config_changes(saved, config)
  never = {field: change for field, change in changes.items() if _top(field) in NEVER_CHANGED}
  if never:
    listed = ', '.join(f'{field} ({old!r} -> {new!r})' for field, (old, new) in never.items())
    sections = ' and '.join(f'config.{name}' for name in sorted({_top(field) for field in never}))
    raise UserError(f"--workdir {workdir} holds a run with a different {sections} ({listed}); use a new --workdir "
                    "to start another run, or the recorded config to resume this one")
  return changes


def check_config(config: ml_collections.ConfigDict, workdir: str, allow_change: bool = False
                 ) -> Optional[dict[str, tuple[Any, Any]]]:
  """Checks a rerun's config against the recorded one (reads only); returns the changes to record, or None
  for a workdir without a run.

  A change to the model, dataset or init_from is refused. Other changes are refused unless they are in
  FREELY_CHANGED or `allow_change` (`--allow_config_change`) is set."""
  changes = check_same_run(config, workdir)
  if changes is None:
    return None
  refused = {field: change for field, change in changes.items() if not _freely_changed(field, *change)}
  if refused and not allow_change:
    listed = ', '.join(f'{field} ({old!r} -> {new!r})' for field, (old, new) in refused.items())
    raise UserError(f"--workdir {workdir} holds a run recorded with other settings: {listed}. Resume with the "
                    "recorded config, use a new --workdir, or pass --allow_config_change to continue with the "
                    f"change (recorded in {HISTORY_FILE})")
  return changes


def record_config(config: ml_collections.ConfigDict, workdir: str, step: int,
                  allow_change: bool = False) -> None:
  """Writes config.json for a new run; for a rerun, checks the config (`check_config`) and appends its changes
  to config_history.jsonl with `step`, leaving config.json as the first run wrote it. Call it with the lock
  held; every process runs the check, process 0 writes."""
  changes = check_config(config, workdir, allow_change)
  if jax.process_index() != 0:
    return
  root = storage.resolve(workdir)
  if changes is None:
    storage.write_text(root / CONFIG_FILE, config_lib.to_json(config))
  elif changes:
    entry = {'step': int(step), 'time': _now(),
             'allowed_by_flag': any(not _freely_changed(field, *change) for field, change in changes.items()),
             'changes': {field: list(change) for field, change in changes.items()}}
    storage.append_text(root / HISTORY_FILE, json.dumps(entry) + '\n')
