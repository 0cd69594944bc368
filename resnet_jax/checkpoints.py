"""Orbax checkpoints in `workdir/checkpoints`, and `load(workdir)` for notebooks and evaluation.

Each checkpoint step holds two items:
  state  the TrainState pytree (step, params, batch_stats, opt_state), saved asynchronously;
  meta   JSON: the run's config, what rebuilding the model needs (num_classes, input normalisation, image
         shape) and, for streaming pipelines, the input position.
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact. The last `keep` steps are kept, plus the best by `best_metric`.
Randomness needs no saving: every random draw is a function of (config.seed, step).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Mapping, Optional

from absl import logging as absl_logging
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import optim
from resnet_jax import parallel
from resnet_jax import state as state_lib
from resnet_jax import storage
from resnet_jax.errors import UserError

CHECKPOINT_DIR = 'checkpoints'
#: Where training moves checkpoint steps that do not restore (never deleted: they may still be recoverable).
UNUSABLE_DIR = 'unusable_checkpoints'


def warn(message: str) -> None:
  """One `warning:` line on stderr (process 0 only)."""
  if jax.process_index() == 0:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def describe_error(error: BaseException) -> str:
  """The first line of an error, at most 160 characters (Orbax/TensorStore errors run to pages)."""
  text = (str(error).strip().splitlines() or [''])[0]
  text = text if len(text) <= 160 else text[:157] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def check_location(workdir: str) -> None:
  """Refuses a workdir Orbax cannot checkpoint to, before anything is compiled or written. Orbax 0.12's OCDBT
  writer builds a TensorStore spec for gs:// only and takes any other URL for a relative local path ("Checkpoint
  path should be absolute. Got s3:/..."); without OCDBT it expects directories, which S3 does not have. Both
  measured against moto's S3 server (docs/storage.md)."""
  if str(workdir).startswith('s3://'):
    raise UserError(f"{workdir}: Orbax {ocp.__version__} cannot write checkpoints to s3:// (its TensorStore "
                    "specs support gs:// and local paths); use a gs:// bucket, a local or network file system "
                    "(e.g. an S3 bucket mounted with mountpoint-s3), or copy the run to S3 afterwards")


class Checkpointer:
  """A CheckpointManager over `workdir/checkpoints` with the items `state` and `meta`."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: Optional[str] = 'test_accuracy',
               best_mode: str = 'max', read_only: bool = False):
    self.directory = storage.resolve(workdir) / CHECKPOINT_DIR
    policies = [checkpoint_managers.LatestN(n=max(1, keep))]
    if best_metric:
      sign = 1.0 if best_mode == 'max' else -1.0
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: sign * float(metrics[best_metric]), n=1,
          keep_checkpoints_without_metrics=False))
    # A read-only manager logs warnings that it is read-only; for evaluation and `load` that is the intent.
    verbosity = absl_logging.get_verbosity()
    if read_only:
      absl_logging.set_verbosity(absl_logging.ERROR)
    try:
      options = ocp.CheckpointManagerOptions(
          preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
          enable_async_checkpointing=not read_only, read_only=read_only, create=not read_only)
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'meta'))
    finally:
      absl_logging.set_verbosity(verbosity)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: state_lib.TrainState, meta: Mapping[str, Any],
           metrics: Optional[Mapping[str, float]] = None):
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_lib.as_tree(state)),
                                                    meta=ocp.args.JsonSave(dict(meta))),
                      metrics=dict(metrics) if metrics else None, force=True)

  def restore(self, step: int, abstract_state: state_lib.TrainState) -> tuple[state_lib.TrainState, dict[str, Any]]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_lib.as_tree(abstract_state)), meta=ocp.args.JsonRestore()))
    return state_lib.from_tree(restored['state']), restored['meta']

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore_newest(self, abstract_state_fn, steps: Optional[list[int]] = None):
    """Restores the newest of `steps` (default: all) that restores, trying older steps when newer ones are
    damaged (files deleted, truncated or garbage, metadata gone). `abstract_state_fn(meta)` gives the target
    structure. Returns (step, state, meta, failures) with failures [(step, reason)] for the newer steps that did
    not restore, or None when there are no steps; raises UserError when none restores."""
    failures = []
    for step in sorted(self.all_steps() if steps is None else steps, reverse=True):
      verbosity = absl_logging.get_verbosity()
      absl_logging.set_verbosity(absl_logging.FATAL)  # Orbax logs each failed read at length
      try:
        meta = self.restore_meta(step)
        state, meta = self.restore(step, abstract_state_fn(meta))
      except UserError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        failures.append((step, describe_error(error)))
        continue
      finally:
        absl_logging.set_verbosity(verbosity)
      return step, state, meta, failures
    if failures:
      reasons = '; '.join(f'step {step}: {reason}' for step, reason in failures)
      raise UserError(f"no checkpoint in {self.directory} can be restored ({reasons}). If the config changed "
                      "since they were written (optimizer, model options), rerun with the original config; "
                      "otherwise start a new --workdir")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, error_type, error, traceback) -> None:
    """Closes the manager (else its background threads keep a failed run's process alive). Leaving on an
    error, a failed close is not reported again (the failed save already was), and nothing is closed when
    another process of the run was lost: closing would wait at barriers that process never reaches."""
    del error_type, traceback
    if error is None:
      self.close()
    elif not parallel.lost_process(error):
      try:
        self.close()
      except Exception:  # pylint: disable=broad-except
        pass


def resume(workdir: str, abstract_state_fn) -> Optional[tuple[int, Any, dict[str, Any]]]:
  """For training: (step, state, meta) of the newest checkpoint of `workdir` that restores, or None if there is
  none; `abstract_state_fn(meta)` gives the structure of the state a checkpoint with metadata `meta` holds. Newer steps that do not restore are named in a warning and moved to `workdir/unusable_checkpoints/`
  (kept, not deleted), so that training can save those steps again. Writes nothing when all restore or none
  does (then UserError); reads before anything else of the workdir is written."""
  if not storage.is_dir(storage.resolve(workdir) / CHECKPOINT_DIR):
    return None
  with Checkpointer(workdir, read_only=True) as checkpointer:
    found = checkpointer.restore_newest(abstract_state_fn)
  if found is None:
    return None
  step, state, meta, failures = found
  if failures:
    moved = storage.make_dirs(storage.resolve(workdir) / UNUSABLE_DIR) if jax.process_index() == 0 else None
    if moved is not None:
      for bad_step, _ in failures:
        target = moved / str(bad_step)
        suffix = 1
        while storage.exists(target):
          target, suffix = moved / f'{bad_step}.{suffix}', suffix + 1
        storage.move(storage.resolve(workdir) / CHECKPOINT_DIR / str(bad_step), target)
    moved = storage.resolve(workdir) / UNUSABLE_DIR
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('resnet_jax.checkpoints.resume')
    bad = ', '.join(f'step {s} ({reason})' for s, reason in failures)
    warn(f"checkpoint {bad} in {workdir} cannot be restored; resuming from step {step}, the newest that "
         f"restores. The damaged step{'s were' if len(failures) > 1 else ' was'} moved to {moved}")
  return step, state, meta


def latest_step(workdir: str) -> Optional[int]:
  """The newest complete checkpoint step in `workdir`, or None; reads only (no directory is created)."""
  if not storage.is_dir(storage.resolve(workdir) / CHECKPOINT_DIR):
    return None
  with Checkpointer(workdir, read_only=True) as checkpointer:
    return checkpointer.latest_step()


def _not_a_run(workdir: str) -> str:
  """Why `workdir` holds no checkpoints, naming the path to pass instead when it is part of a run (a file of it,
  its checkpoints/ folder or one step of it) or a reproduce directory."""
  path = storage.resolve(workdir)
  parent, name = path.parent, path.name
  if not storage.exists(path):
    return (f"no checkpoints in {workdir}: no such directory; pass a run's --workdir (the directory holding "
            f"{CHECKPOINT_DIR}/)")
  if not storage.is_dir(path):
    return f"{workdir} is a file; pass the run's directory (the --workdir holding {CHECKPOINT_DIR}/)"
  if name == CHECKPOINT_DIR:
    return f"{workdir} is the {CHECKPOINT_DIR}/ folder of a run; pass the run's directory: {parent}"
  if parent.name == CHECKPOINT_DIR and name.isdigit():
    return (f"{workdir} is checkpoint step {name} of a run; load it with load({str(parent.parent)!r}, "
            f"step={name})")
  seeds = sorted(n for n in storage.list_names(path) if n.startswith('seed_') and storage.is_dir(path / n))
  if seeds:
    return (f"{workdir} is a reproduce directory of {len(seeds)} runs ({', '.join(seeds)}); load one of them, "
            f"e.g. {str(path / seeds[0])!r}")
  return (f"no checkpoints in {workdir} (expected {path / CHECKPOINT_DIR}); train first with "
          f"python -m resnet_jax.main --config CONFIG --workdir {workdir}")


@dataclasses.dataclass
class LoadedCheckpoint:
  """What `load` returns: `model.apply(variables, images_uint8, train=False)` gives logits. `variables` are
  the moving average of the weights when the run kept one (config.ema) and `ema` is True, else the weights."""
  model: Any
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  step: int
  ema: bool = False


def load(workdir: str, step: Optional[int] = None, ema: Optional[bool] = None) -> LoadedCheckpoint:
  """Loads a checkpoint of `workdir` (the latest if `step` is None) onto the local devices. `ema`: whether to
  take the moving average of the weights where the run kept one; None: the run's config.ema.use (True unless
  set otherwise)."""
  directory = storage.resolve(workdir) / CHECKPOINT_DIR
  if not storage.is_dir(directory):
    raise UserError(_not_a_run(workdir))
  if step is not None:
    if isinstance(step, bool) or not hasattr(step, '__index__'):
      raise UserError(f"step must be an integer (a checkpoint step of {workdir}) or None, got {step!r}")
    step = int(step)
  with Checkpointer(workdir, read_only=True) as checkpointer:
    steps = checkpointer.all_steps()
    if not steps:
      raise UserError(f"{directory} holds no complete checkpoint; train first")
    if step is not None and step not in steps:
      raise UserError(f"{directory} has no checkpoint for step {step}; available: {sorted(steps)}")
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    built = {}

    def abstract_state(meta):
      config = config_lib.from_json(json.dumps(meta['config']))
      info = meta['model']
      model = classifier.from_description(config, info)
      # The optimizer's state structure does not depend on the schedule's values: any schedule will do.
      tx = optim.make_optimizer(config, lambda count: 0.0)
      built.update(model=model, config=config)
      return state_lib.abstract_train_state(model, tx, info['image_shape'], mesh, ema=bool(meta.get('ema')))

    # The requested step, or else the newest that restores (a damaged newer one is named in a warning).
    found_step, state, _, failures = checkpointer.restore_newest(abstract_state,
                                                                  None if step is None else [step])
    if failures:
      bad = ', '.join(f'step {s} ({reason})' for s, reason in failures)
      warn(f"checkpoint {bad} in {workdir} cannot be restored; loaded step {found_step}, the newest that restores")
  config = built['config']
  use_ema = state.ema is not None and (config.ema.use if ema is None else ema)
  return LoadedCheckpoint(model=built['model'], variables=state.ema if use_ema else state.variables, config=config,
                          step=int(found_step), ema=use_ema)
