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
import os
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
from resnet_jax.errors import UserError

CHECKPOINT_DIR = 'checkpoints'


class Checkpointer:
  """A CheckpointManager over `workdir/checkpoints` with the items `state` and `meta`."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: Optional[str] = 'test_accuracy',
               best_mode: str = 'max', read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
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

  def save(self, step: int, state: Any, meta: Mapping[str, Any], metrics: Optional[Mapping[str, float]] = None):
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(dict(meta))),
                      metrics=dict(metrics) if metrics else None, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def latest_step(workdir: str) -> Optional[int]:
  """The newest complete checkpoint step in `workdir`, or None; reads only (no directory is created)."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    return None
  with Checkpointer(workdir, read_only=True) as checkpointer:
    return checkpointer.latest_step()


@dataclasses.dataclass
class LoadedCheckpoint:
  """What `load` returns: `model.apply(variables, images_uint8, train=False)` gives logits."""
  model: Any
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  step: int


def load(workdir: str, step: Optional[int] = None) -> LoadedCheckpoint:
  """Loads a checkpoint of `workdir` (the latest if `step` is None) onto the local devices."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    raise UserError(f"no checkpoints in {workdir} (expected {directory}); train first with "
                    f"python -m resnet_jax.main --config CONFIG --workdir {workdir}")
  with Checkpointer(workdir, read_only=True) as checkpointer:
    steps = checkpointer.all_steps()
    if not steps:
      raise UserError(f"{directory} holds no complete checkpoint; train first")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise UserError(f"{directory} has no checkpoint for step {step}; available: {sorted(steps)}")
    meta = checkpointer.restore_meta(step)
    config = config_lib.from_json(json.dumps(meta['config']))
    info = meta['model']
    model = classifier.model_from_config(config, info['num_classes'], config_lib.nested_tuple(info['mean']),
                                         config_lib.nested_tuple(info['std']))
    # The optimizer's state structure does not depend on the schedule's values: any schedule will do.
    tx = optim.make_optimizer(config, lambda count: 0.0)
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    state, _ = checkpointer.restore(step, state_lib.abstract_train_state(model, tx, info['image_shape'], mesh))
  return LoadedCheckpoint(model=model, variables=state.variables, config=config, step=int(step))
