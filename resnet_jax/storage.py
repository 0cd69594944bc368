"""Where a run's files live: the one I/O layer for workdirs on a local disk or in a bucket (gs://, s3://).

Every file a run reads or writes (config.json, metrics.jsonl, eval_results.jsonl, curves.png, TensorBoard
events, analysis outputs, reproduce tables, converted weights) goes through this module; Orbax and TensorStore
write the checkpoints themselves, to the same location string. Underneath is `etils.epath`, the path type
Orbax itself uses, so a workdir is one value that both understand: a local path (made absolute, `~` expanded)
or a URL, which is never turned into a local path. epath reaches buckets through fsspec (gcsfs, s3fs) when
TensorFlow is absent, as it is here; the lease below uses fsspec's create-only-if-absent write directly.

Atomicity: a local file is written next to its target and renamed over it, so a reader (or a kill) sees the old
file or the new one, never half of one. An object store has no rename, but a single-object put is atomic: an
object is replaced whole. Appends to an object rewrite it (objects are immutable); the files appended to
(metrics, eval results) are small, and only process 0 writes them.

Endpoints (emulators, S3-compatible stores) are the libraries' own settings, documented in docs/storage.md:
`STORAGE_EMULATOR_HOST` for gcsfs, `TENSORSTORE_GCS_HTTP_URL` for TensorStore (Orbax), `AWS_ENDPOINT_URL`
for s3fs.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from typing import Union

from etils import epath
import fsspec

Location = Union[str, os.PathLike, epath.Path]

# Buckets are written by other clients too (TensorStore writes the checkpoints, other hosts their shards, a
# resumed run its files), so fsspec's listing cache, which by default never expires, would answer from a stale
# listing; and a request must not wait forever on a connection that died. fsspec applies these defaults to
# every file system it makes for the protocol, epath's included.
fsspec.config.conf.setdefault('gs', {}).update(use_listings_cache=False, requests_timeout=120)
fsspec.config.conf.setdefault('s3', {}).update(use_listings_cache=False)

#: URL schemes of object stores. Anything else is a local path.
REMOTE_SCHEMES = ('gs://', 's3://')


def is_remote(location: Location) -> bool:
  """True for a bucket URL (gs://, s3://)."""
  return str(location).startswith(REMOTE_SCHEMES)


def resolve(location: Location) -> epath.Path:
  """The path of `location`: a bucket URL as it is, a local path absolute with `~` expanded."""
  if isinstance(location, epath.Path) and is_remote(location):
    return location
  text = os.fspath(location)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def read_text(location: Location) -> str:
  return resolve(location).read_text()


def read_bytes(location: Location) -> bytes:
  return resolve(location).read_bytes()


def write_text(location: Location, text: str) -> None:
  """Writes `text` whole: a reader sees the old content or the new one (see the module docstring)."""
  write_bytes(location, text.encode('utf-8'))


def write_bytes(location: Location, data: bytes) -> None:
  """Writes `data` whole: local files through a temporary file and a rename, objects in one put."""
  path = resolve(location)
  if is_remote(path):
    path.write_bytes(data)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = os.fspath(path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp')
  try:
    with open(temporary, 'xb') as file:  # the umask's permissions, as for any file the run writes
      file.write(data)
    os.replace(temporary, os.fspath(path))
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def append_text(location: Location, text: str) -> None:
  """Appends `text`: a real append locally; on an object store the object is rewritten whole."""
  path = resolve(location)
  if is_remote(path):
    previous = path.read_bytes() if path.exists() else b''
    path.write_bytes(previous + text.encode('utf-8'))
    return
  with open(os.fspath(path), 'a') as file:
    file.write(text)


def exists(location: Location) -> bool:
  return resolve(location).exists()


def is_dir(location: Location) -> bool:
  return resolve(location).is_dir()


def is_file(location: Location) -> bool:
  return resolve(location).is_file()


def existing_ancestor(local_path: str) -> str:
  """A local path itself if it exists, else its nearest existing parent: what decides whether the path can be
  created (a file there means it cannot) and whether it may be (that folder's permissions)."""
  existing = os.path.abspath(local_path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  return existing


def make_dirs(location: Location) -> epath.Path:
  """Creates the directory (and its parents) if missing; on object stores directories need no creating."""
  path = resolve(location)
  if not is_remote(path):
    path.mkdir(parents=True, exist_ok=True)
  return path


def list_names(location: Location) -> list[str]:
  """The sorted names in a directory ([] if it does not exist)."""
  path = resolve(location)
  if not path.exists():
    return []
  return sorted(child.name for child in path.iterdir())


def move(source: Location, target: Location) -> None:
  """Moves a file or a directory tree (a rename locally; copy-then-delete on an object store)."""
  source, target = resolve(source), resolve(target)
  if is_remote(source):
    filesystem, key = _filesystem(source)
    filesystem.mv(key, _filesystem(target)[1], recursive=True)
    return
  os.replace(os.fspath(source), os.fspath(target))


def _filesystem(path: epath.Path):
  """The fsspec file system and key of a bucket path (fsspec is epath's backend for buckets)."""
  return fsspec.core.url_to_fs(os.fspath(path))


def download(source: Location, local_directory: str) -> None:
  """Copies the bucket folder `source` into the local folder `local_directory`, whole: into a temporary sibling
  first, renamed when complete, so a copy cut short is never taken for a finished one."""
  filesystem, key = _filesystem(resolve(source))
  partial = tempfile.mkdtemp(dir=os.path.dirname(local_directory) or '.', prefix='.partial-')
  try:
    filesystem.get(key.rstrip('/') + '/', partial + '/', recursive=True)
    os.replace(partial, local_directory)
  finally:
    if os.path.exists(partial):
      shutil.rmtree(partial, ignore_errors=True)


def remove(location: Location) -> None:
  """Deletes a file; missing is fine."""
  path = resolve(location)
  try:
    path.unlink()
  except FileNotFoundError:
    pass


def create_exclusive(location: Location, data: bytes) -> bool:
  """Creates the file only if it does not exist, atomically (an object store's create-only-if-absent
  precondition, O_EXCL locally). Returns False if it already existed."""
  path = resolve(location)
  if is_remote(path):
    filesystem, key = _filesystem(path)
    try:
      filesystem.pipe_file(key, data, mode='create')
    except FileExistsError:
      return False
    except OSError as error:  # a failed precondition is reported as HTTP 412 by some versions
      if '412' in str(error) or 'Precondition' in str(error):
        return False
      raise
    return True
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    handle = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(handle, 'wb') as file:
    file.write(data)
  return True


def save_figure(figure, location: Location, **savefig_options) -> None:
  """Saves a matplotlib Figure as PNG, whole (rendered in memory, then `write_bytes`)."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', **savefig_options)
  write_bytes(location, buffer.getvalue())


class ObjectFile:
  """A file that is only appended to, on an object store: writes are buffered and each flush puts the whole
  object (objects are immutable). For TensorBoard's event files (tensorboardX writer factories)."""

  def __init__(self, location: Location):
    self.path = resolve(location)
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    write_bytes(self.path, self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _ObjectFileFactory:
  """tensorboardX's writer-factory protocol (tensorboardX.record_writer.register_writer_factory)."""

  def open(self, path: str) -> ObjectFile:
    return ObjectFile(path)

  def directory_check(self, path: str) -> None:
    del path  # object stores have no directories to create


def register_tensorboard_writers() -> None:
  """Routes tensorboardX's gs:// and s3:// event files through this module (its own GCS/S3 writers need
  google-cloud-storage or boto3 and their own endpoint settings)."""
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top  (optional, as TensorBoard output)
  for scheme in REMOTE_SCHEMES:
    record_writer.register_writer_factory(scheme.split(':')[0], _ObjectFileFactory())
