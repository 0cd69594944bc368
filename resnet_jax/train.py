"""Training: `train_and_evaluate(config, workdir)` and the jitted train step.

One step: uint8 batch sharded over `data` -> jit(train_step): augment on device -> model.apply
(compute dtype per config, float32 params) -> float32 logits -> cross-entropy (float32) -> grads -> coupled L2 +
SGD -> new state (donated). Metrics stay on the devices, summed over steps, and are fetched once per log
interval: no host synchronisation per step.

Everything a run needs is built and validated by `build_experiment` before anything is compiled or written,
so a bad config fails with one UserError line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import checkpoints
from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import finetune
from resnet_jax import losses
from resnet_jax import metrics as metrics_lib
from resnet_jax import optim
from resnet_jax import parallel
from resnet_jax import state as state_lib
from resnet_jax import storage
from resnet_jax import workdir as workdir_lib
from resnet_jax.data import augment as augment_lib
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.errors import UserError

NONFINITE_POLICIES = ('stop', 'skip')
_NO_STEP = np.iinfo(np.int32).max


@dataclasses.dataclass
class Experiment:
  """A validated run: model, optimizer, data and durations, nothing compiled yet."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: classifier.Classifier
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  train_data: Any  # the train-data interface (data/pipelines.py): DeviceResidentData or StreamingTrainData
  eval_data: Any   # streaming.EvalData: padded, masked global batches
  steps_per_epoch: float
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  @property
  def augment(self) -> augment_lib.SmallImageAugment:
    """The per-batch device operations of the train data (`augment.DEVICE_OPERATIONS`), run by the step."""
    return self.train_data.device_augment

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_data.image_shape)

  @property
  def num_classes(self) -> int:
    return int(self.train_data.num_classes)

  def model_info(self) -> dict[str, Any]:
    """What `checkpoints.load` needs besides the config to rebuild the model."""
    return classifier.describe(self.model, self.num_classes, self.image_shape)

  def restore_data(self, meta: dict[str, Any], start_step: int) -> None:
    """Positions the train data where the checkpoint with metadata `meta` (of step `start_step`) left it; raises
    UserError for a saved position this run cannot continue exactly (`data.order.resume_step`). Checkpoints of
    device-resident runs of earlier versions hold no position: their order is unchanged, so the step is enough."""
    self.train_data.set_state(meta.get('data_state', {'step': start_step}))

  def checkpoint_meta(self) -> dict[str, Any]:
    """What each checkpoint keeps beside the train state: the model, the config, whether the state holds a moving
    average, the train data's position, and when it was written."""
    return {'model': self.model_info(), 'config': self.config.to_dict(), 'ema': bool(self.config.ema.decay),
            'data_state': self.train_data.get_state(),
            'saved_at': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}

  @property
  def intervals(self) -> tuple[int, int, int]:
    """(log, evaluation, checkpoint) intervals, in steps."""
    return self.log_every, self.eval_every, self.checkpoint_every

  def is_due(self, step: int, every: int) -> bool:
    """Whether an interval of `every` steps ends at `step` (the last step ends every interval)."""
    return step % every == 0 or step == self.total_steps

  def next_boundary(self, step: int) -> int:
    """Where the steps dispatched from `step` on stop: the next end of an interval, `steps_per_dispatch` steps
    later, or the last step, whichever comes first."""
    ends = [(step // every + 1) * every for every in self.intervals]
    return min([self.total_steps, step + self.config.steps_per_dispatch] + ends)

  def close(self) -> None:
    self.train_data.close()


def build_experiment(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, start_step: int = 0,
                     splits: tuple[sources.ExampleSource, sources.ExampleSource] | None = None) -> Experiment:
  """Validates the config against data, model and devices, then loads the data (device-resident sets) or
  starts the input pipeline at `start_step` (streamed sets). Compiles and writes nothing. `splits` (train, eval)
  replaces the config's dataset (the benchmark's synthetic data)."""
  config_lib.validate(config)
  parallel.check_batch_divisible(config.batch_size, mesh)
  losses.check_loss(config.loss, config.bce_target_threshold)
  if config.on_nonfinite not in NONFINITE_POLICIES:
    raise UserError(f"unknown config.on_nonfinite {config.on_nonfinite!r}; choose stop or skip")
  dispatch = config.steps_per_dispatch
  if isinstance(dispatch, bool) or not isinstance(dispatch, int) or dispatch < 1:
    raise UserError(f"config.steps_per_dispatch must be a positive integer (train steps per dispatch), got {dispatch!r}")
  pipelines.input_options(config)  # raises for unknown input options
  dataset = config.dataset
  train_source, eval_source = splits or [sources.open_split(dataset.name, split, dataset.get('data_dir'))
                                         for split in (dataset.train_split, dataset.eval_split)]
  check_eval_settings(config, train_source, eval_source)

  # Model options and the BN group size are checked before the data is loaded.
  group = classifier.bn_group_size(config)
  per_device = config_lib.check_accumulate_steps(config, mesh.devices.size)  # the micro-batch's, per device
  if group is not None and per_device % group:
    micro = f" in {config.accumulate_steps} micro-batches" if config.accumulate_steps > 1 else ""
    raise UserError(f"config.batch_norm.group_size={group} does not divide the per-device batch {per_device} "
                    f"(batch_size {config.batch_size} over {mesh.devices.size} devices{micro}); use a divisor of "
                    f"{per_device}, or --config.batch_norm.mode=global")
  classifier.model_from_config(config, train_source.num_classes)  # raises for unknown names/options

  steps_per_epoch = len(train_source) / config.batch_size
  total_steps = config_lib.resolve_steps(config, 'total', steps_per_epoch)
  if total_steps <= 0:
    raise UserError(f"training length is {total_steps} steps; set config.total_steps or total_epochs > 0")
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, schedule)

  def every(name: str, default: int) -> int:
    steps = config_lib.resolve_steps(config, name, steps_per_epoch, default)
    if steps == 0:
      when = 'every 100 steps' if name == 'log_every' else 'once, at the end of training'
      raise UserError(f"config.{name}_steps/{name}_epochs gives an interval of 0 steps; use a positive interval, "
                      f"or None for the default ({when})")
    return steps or total_steps

  log_every = every('log_every', 100)
  eval_every = every('eval_every', total_steps)
  checkpoint_every = every('checkpoint_every', total_steps)

  eval_data = pipelines.make_eval_batches(config, mesh, eval_source)
  train_data = pipelines.make_train_data(config, mesh, train_source, start_step=start_step)
  model = classifier.model_from_config(config, train_data.num_classes, *train_data.normalization)
  finetune.check_parameter_groups(config, model, train_data.image_shape)  # config.freeze, lr_multipliers
  return Experiment(config=config, mesh=mesh, model=model, tx=tx, schedule=schedule, train_data=train_data,
                    eval_data=eval_data, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                    log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every)


#: The metrics an evaluation records, i.e. the names config.best_metric can choose from, with the direction in
#: which each gets better (the best checkpoint is the one with the highest accuracy, or the lowest error or loss).
BEST_MODE = {'test_accuracy': 'max', 'test_error': 'min', 'test_loss': 'min'}
#: ... and of the moving average of the weights (config.ema), when the run keeps one.
BEST_MODE.update({f'ema_{name}': mode for name, mode in BEST_MODE.items()})


def check_eval_settings(config: ml_collections.ConfigDict, train_source, eval_source) -> None:
  """What the first evaluation or save would otherwise find after training: the splits' classes and image
  format, and the metric that picks the best checkpoint."""
  if train_source.num_classes < 2:
    raise UserError(f"{train_source.dataset}: the training split {train_source.split!r} has "
                    f"{train_source.num_classes} class(es); a classifier needs at least 2 (are the labels all 0?)")
  sources.check_same_classes(train_source, eval_source)
  if train_source.channels != eval_source.channels:
    raise UserError(f"{train_source.dataset}: training images ({train_source.split!r}) have {train_source.channels} "
                    f"channel(s) but evaluation images ({eval_source.split!r}) have {eval_source.channels}; store "
                    "both splits in the same format (grey or RGB)")
  crop = pipelines.resolve_eval_crop(pipelines.input_options(config), eval_source)
  if (crop == 'none' and train_source.image_shape is not None and eval_source.image_shape is not None and
      tuple(train_source.image_shape) != tuple(eval_source.image_shape)):
    raise UserError(f"{train_source.dataset}: training images are {tuple(train_source.image_shape)} but evaluation "
                    f"images are {tuple(eval_source.image_shape)}; store both splits at one size, or set "
                    "config.input.eval_crop_mode='center' with config.input.eval_crop")
  if config.best_metric and config.best_metric not in BEST_MODE:
    raise UserError(f"config.best_metric {config.best_metric!r} is not a metric of the evaluation; choose one of "
                    f"{', '.join(BEST_MODE)} (or None to keep only the latest checkpoints)")


# ----------------------------------------------------------------------------------------------------------
# The step.


def step_keys(seed: int, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(augmentation, dropout) keys for `step`: a pure function of (seed, step), so resumes are exact."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
  return jax.random.split(key)


def make_train_step(model, tx, augment, config) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics) for uint8 batches {'image', 'label'}.

  With config.accumulate_steps = k > 1 the batch is cut into k micro-batches (`split_micro_batches`), each
  augmented, mixed and normalised by BatchNorm on its own, as one GPU's batch of the recipes; the gradients
  are averaged and the optimizer steps once (`accumulated_gradients`)."""
  label_smoothing = float(config.label_smoothing)
  skip_nonfinite = config.on_nonfinite == 'skip'
  seed = int(config.seed)
  accumulate_steps = int(config.accumulate_steps)
  apply = finetune.training_apply(model, config)  # model.apply; frozen BatchNorm in inference mode

  def loss_fn(params, batch_stats, batch, augment_key, dropout_key):
    images, label_weight = augment.apply(augment_key, batch['image'])  # label_weight: mixup/CutMix's lambda
    logits, updates = apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                            rngs={'dropout': dropout_key}, mutable=['batch_stats'])
    # Smoothed, then mixed with the partners' targets as the images were (timm's mixup_target): soft targets
    # that the softmax and the BCE loss both take.
    labels = batch['label']
    targets = augment.mix_targets(losses.one_hot_targets(labels, logits.shape[-1], label_smoothing), label_weight)
    loss = jnp.mean(losses.classification_loss(logits, targets, config.loss, config.bce_target_threshold))
    return loss, (logits, updates.get('batch_stats', batch_stats))

  gradients = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: state_lib.TrainState, batch):
    keys = step_keys(seed, state.step)  # (augmentation, dropout)
    if accumulate_steps == 1:
      (loss, (logits, batch_stats)), grads = gradients(state.params, state.batch_stats, batch, *keys)
    else:
      loss, logits, batch_stats, grads = accumulated_gradients(gradients, state, batch, keys, accumulate_steps)
    labels = batch['label']
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(grad)) for grad in jax.tree.leaves(grads)]))
    if skip_nonfinite:  # keep the previous parameters and statistics for this step
      keep = lambda new, old: jax.tree.map(lambda new_leaf, old_leaf: jnp.where(finite, new_leaf, old_leaf), new, old)
      params, opt_state, batch_stats = keep(params, state.params), keep(opt_state, state.opt_state), \
          keep(batch_stats, state.batch_stats)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    if state.ema is not None:  # the run keeps a moving average (config.ema.decay > 0)
      new_state = new_state.replace(ema=updated_ema(new_state, config.ema))
    # Train accuracy counts each image against its own label, mixed or not (README, Modern baselines).
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    metrics = {'loss': jnp.where(finite, loss, 0.0) * labels.shape[0], 'correct': correct.astype(jnp.float32),
               'examples': jnp.float32(labels.shape[0]), 'finite': finite}
    return new_state, metrics

  return train_step


def split_micro_batches(batch: Any, steps: int) -> Any:
  """[B, ...] -> [steps, B / steps, ...]: micro-batch j holds examples j, j + steps, j + 2 * steps, ... of the
  global batch. Each device holds a contiguous block of the batch whose size `steps` divides (checked before
  compiling), so every micro-batch takes B / (steps * devices) examples from each device's own block: no
  example moves between devices, and a micro-batch is sharded as the batch is."""
  return jax.tree.map(lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch)


def merge_micro_batches(values: jax.Array) -> jax.Array:
  """The inverse of `split_micro_batches`: [steps, B / steps, ...] -> [B, ...] in the batch's order."""
  return values.swapaxes(0, 1).reshape(-1, *values.shape[2:])


def accumulated_gradients(gradients: Callable, state: state_lib.TrainState, batch, keys, steps: int):
  """Gradient accumulation (config.accumulate_steps): the mean loss and gradients of `steps` micro-batches,
  run one after another (lax.scan) with the BatchNorm statistics threaded through them, as `steps` GPUs'
  per-GPU BatchNorm would see them. Micro-batch j takes the step's keys folded with j, so each is augmented
  (and mixed, with its own lambda: timm mixes each loader batch, i.e. each GPU's batch) independently.
  Returns (loss, logits in the batch's order, batch_stats, gradients)."""
  augment_key, dropout_key = keys

  def one_micro_batch(carry, inputs):
    gradient_sum, loss_sum, batch_stats = carry
    index, micro_batch = inputs
    (loss, (logits, batch_stats)), grads = gradients(state.params, batch_stats, micro_batch,
                                                     jax.random.fold_in(augment_key, index),
                                                     jax.random.fold_in(dropout_key, index))
    return (jax.tree.map(jnp.add, gradient_sum, grads), loss_sum + loss, batch_stats), logits

  start = (jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0), state.batch_stats)
  (gradient_sum, loss_sum, batch_stats), logits = jax.lax.scan(
      one_micro_batch, start, (jnp.arange(steps), split_micro_batches(batch, steps)))
  grads = jax.tree.map(lambda total: total / steps, gradient_sum)
  return loss_sum / steps, merge_micro_batches(logits), batch_stats, grads


def _fresh_totals(mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  return jax.device_put(zero_accumulator(), parallel.replicated(mesh))


def ema_decay(updates: jax.Array, ema_config: ml_collections.ConfigDict) -> jax.Array:
  """The decay of the `updates`-th EMA update (1-based): config.ema.decay, or with config.ema.warmup timm's
  ModelEmaV3 ramp min(decay, 1 - (1 + t)^(-2/3)) with t = updates - 1 (t = 0 copies the weights;
  timm/utils/model_ema.py, get_decay with warmup_gamma 1, warmup_power 2/3)."""
  if not ema_config.warmup:
    return jnp.float32(ema_config.decay)
  ramp = 1.0 - (1.0 + (updates - 1).astype(jnp.float32)) ** (-2.0 / 3.0)
  return jnp.minimum(jnp.float32(ema_config.decay), ramp)


def updated_ema(state: state_lib.TrainState, ema_config: ml_collections.ConfigDict) -> Any:
  """The moving average of the weights and BatchNorm statistics after `state.step` steps: every
  `ema_config.every_steps` steps, ema = decay * ema + (1 - decay) * variables (timm and torchvision alike)."""
  due = state.step % ema_config.every_steps == 0
  decay = ema_decay(state.step // ema_config.every_steps, ema_config)
  averaged = optax.incremental_update(state.variables, state.ema, step_size=1.0 - decay)
  return jax.tree.map(lambda new, old: jnp.where(due, new, old), averaged, state.ema)


def zero_accumulator() -> dict[str, jax.Array]:
  return {'loss': jnp.float32(0), 'correct': jnp.float32(0), 'examples': jnp.float32(0),
          'first_nonfinite_step': jnp.int32(_NO_STEP), 'nonfinite_steps': jnp.int32(0)}


def accumulate(totals, metrics, step):
  bad = ~metrics['finite']
  return {'loss': totals['loss'] + metrics['loss'], 'correct': totals['correct'] + metrics['correct'],
          'examples': totals['examples'] + jnp.where(bad, 0.0, metrics['examples']),
          'first_nonfinite_step': jnp.where(bad, jnp.minimum(totals['first_nonfinite_step'], step),
                                            totals['first_nonfinite_step']),
          'nonfinite_steps': totals['nonfinite_steps'] + bad.astype(jnp.int32)}


def make_runner(model, tx, augment, config, mesh: jax.sharding.Mesh, batch_in_program: Callable) -> Callable:
  """jit(run(state, totals, inputs, num_steps)): `num_steps` train steps in one dispatch, on any train data.

  `inputs` is what the train data's `program_inputs(step, num_steps)` returned (the resident split, or the
  streamed batches of those steps) and `batch_in_program(inputs, step, index)` picks the batch of each step inside
  the program. Built from parts rather than an Experiment so that benchmarks run the very same program on
  synthetic batches (`augment` is the on-device part of the input's augmentation)."""
  train_step = make_train_step(model, tx, augment, config)
  replicated = parallel.replicated(mesh)

  def one_step(carry, index):
    state, totals, inputs = carry
    step = state.step
    state, metrics = train_step(state, batch_in_program(inputs, step, index))
    return (state, accumulate(totals, metrics, step), inputs), None

  @functools.partial(jax.jit, static_argnums=(3,), donate_argnums=(0, 1), out_shardings=(replicated, replicated))
  def run(state, totals, inputs, num_steps):
    if num_steps == 1:
      (state, totals, _), _ = one_step((state, totals, inputs), None)
    else:
      (state, totals, _), _ = jax.lax.scan(one_step, (state, totals, inputs), jnp.arange(num_steps))
    return state, totals

  return run


class StepDispatcher:
  """Advances training by n steps from the experiment's input, dispatching compiled programs. Each program is
  compiled ahead of time, so that `on_compile(seconds, steps_per_program, step)` can report its compile time."""

  def __init__(self, experiment: Experiment, on_compile: Callable[[float, int, int], None],
               steps_per_dispatch: int = 1):
    self.experiment = experiment
    self.on_compile = on_compile
    self.steps_per_dispatch = steps_per_dispatch
    self.jitted = make_runner(experiment.model, experiment.tx, experiment.augment, experiment.config,
                              experiment.mesh, experiment.train_data.batch_in_program)
    self.compiled: dict[int, Any] = {}

  def _program(self, num_steps: int, step: int, *args) -> Any:
    if num_steps not in self.compiled:
      started = time.perf_counter()
      self.compiled[num_steps] = self.jitted.lower(*args, num_steps).compile()
      self.on_compile(time.perf_counter() - started, num_steps, step)
    return self.compiled[num_steps]

  def advance(self, state: state_lib.TrainState, totals, step: int, num_steps: int):
    """Runs train steps step .. step + num_steps - 1; returns the new state and metric totals."""
    # Two programs at most: steps_per_dispatch steps, and one. A shorter stretch (up to a log, eval or checkpoint
    # step that steps_per_dispatch does not divide, e.g. with fractional epochs) runs one step per dispatch
    # rather than compiling a program per length: each program costs a full compile (README, Performance).
    chunk = num_steps if num_steps == self.steps_per_dispatch else 1
    for first in range(step, step + num_steps, chunk):
      inputs = self.experiment.train_data.program_inputs(first, chunk)
      state, totals = self._program(chunk, first, state, totals, inputs)(state, totals, inputs)
    return state, totals


# ----------------------------------------------------------------------------------------------------------
# The loop.


class _Preemption:
  """Turns SIGTERM (cluster preemption) and SIGINT (Ctrl-C) into 'save at the next step boundary and exit
  cleanly' (status 0; rerun the command to resume). A second SIGINT exits at once (KeyboardInterrupt), keeping
  the checkpoints already saved.

  One process: a SIGTERM handler sets a flag. Several processes: JAX's coordination service propagates the
  notice to every process and `reached_preemption_sync_point` names the same step on all of them, at no
  per-step communication cost.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name = 'SIGTERM'
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1:
      for signum in self.SIGNALS:
        try:
          self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
          pass
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:  # a second Ctrl-C: stop now
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      print('\nSIGINT: saving a checkpoint at the next step boundary, then stopping (Ctrl-C again to stop now)',
            file=sys.stderr, flush=True)

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      if previous is not None:
        signal.signal(signum, previous)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def prepare_workdir(workdir: str) -> None:
  """Checks that `workdir` can hold a run and creates it; the first write of a run, after validation. A bucket
  URL stays a URL (never a local folder named `gs:`): its bucket must exist, and needs no directories."""
  path = storage.resolve(workdir)
  if storage.is_remote(path):
    bucket = '/'.join(str(path).split('/')[:3])  # gs://name
    try:
      found = storage.exists(bucket)
    except Exception as error:  # pylint: disable=broad-except  (credentials, network: the client's own words)
      raise UserError(f"--workdir {workdir} cannot be reached ({checkpoints.describe_error(error)}); check the "
                      "bucket name and the application-default credentials") from None
    if not found:
      raise UserError(f"--workdir {workdir}: the bucket {bucket} does not exist; create it first "
                      f"(gcloud storage buckets create {bucket}) or choose another")
    return
  local = os.fspath(path)
  # The deepest file a run writes (an Orbax array file under checkpoints/STEP/) lies about 200 bytes below the
  # workdir: a longer workdir would train and then fail at its first save.
  limit = os.pathconf('/', 'PC_PATH_MAX') if hasattr(os, 'pathconf') else 4096
  length = len(os.fsencode(os.path.abspath(local)))
  if length + _RUN_PATH_ROOM > limit:
    raise UserError(f"--workdir is {length} bytes long: the files of a run need at most {limit - _RUN_PATH_ROOM} "
                    f"(the system's path limit is {limit}); choose a shorter path")
  if os.path.exists(local):
    if not os.path.isdir(local):
      raise UserError(f"--workdir {workdir} is a file, not a directory; choose another path")
    if not os.access(local, os.W_OK | os.X_OK):
      raise UserError(f"--workdir {workdir} is not writable; choose a directory you can write to")
    inner = os.path.join(local, checkpoints.CHECKPOINT_DIR)
    if os.path.exists(inner) and not os.path.isdir(inner):
      raise UserError(f"{inner} is a file, but the run keeps its checkpoints in that directory; move the file "
                      "away or choose another --workdir")
    return
  try:
    os.makedirs(local, exist_ok=True)  # several processes may race here
  except OSError as error:
    raise UserError(f"--workdir {workdir} cannot be created ({error.strerror}); choose a writable path") from None
  except RecursionError:  # os.makedirs recurses once per missing directory
    raise UserError(f"--workdir {workdir[:80]}... cannot be created (more nested directories than Python creates "
                    "at once); choose a shallower path") from None


#: Bytes below the workdir a run's files need (see prepare_workdir).
_RUN_PATH_ROOM = 200


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA compilation cache for every later compile of this process: a resumed or repeated run loads
  its compiled steps instead of compiling them (every entry, however quick to compile)."""
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as error:
    raise UserError(f"config.compilation_cache_dir {path!r} cannot be created ({error.strerror}); choose a writable "
                    "directory, or '' for no cache") from None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> dict[str, float]:
  """Trains and evaluates per `config`, resuming from the latest checkpoint in `workdir` if there is one.

  A rerun's config must match the recorded one but for the fields `workdir.FREELY_CHANGED` lists, unless
  `allow_config_change` (then the change is appended to config_history.jsonl). The workdir is locked while
  the run writes to it (`workdir.locked`). Returns the final evaluation metrics.
  """
  mesh = parallel.make_mesh()
  checkpoints.check_location(workdir)
  workdir_lib.check_same_run(config, workdir)  # another model or dataset: said before the config's own checks
  if config.compilation_cache_dir:
    enable_compilation_cache(config.compilation_cache_dir)
  resume_step = checkpoints.latest_step(workdir)
  experiment = build_experiment(config, mesh, start_step=resume_step or 0)  # the config's own checks first
  try:
    # Refused before anything compiles or is written: a workdir a live run holds (naming it), then a config
    # that differs from the recorded one.
    workdir_lib.check_free(workdir)
    workdir_lib.check_config(config, workdir, allow_config_change)
    # config.init_from is read only to start a run: a workdir with its own checkpoint resumes from that.
    init = None if resume_step is not None else finetune.load_initialization(
        config, experiment.model, experiment.image_shape)
    prepare_workdir(workdir)
    with workdir_lib.locked(workdir, 'training'):
      return _train_loop(experiment, workdir, init, allow_config_change)
  finally:
    experiment.close()


def _train_loop(experiment: Experiment, workdir: str, init: finetune.Initialization | None = None,
                allow_config_change: bool = False) -> dict[str, float]:
  """The loop of train_and_evaluate, on a built experiment and a prepared workdir: train up to the next log,
  evaluation or save step, then do what is due there."""
  config, total_steps = experiment.config, experiment.total_steps
  # Restore first, write after: a resume that fails leaves config.json and the checkpoints as they were.
  state, start_step, opening = _initial_state(experiment, workdir, init)
  workdir_lib.record_config(config, workdir, start_step, allow_config_change)  # config.json, or the change
  log = RunLog(experiment, workdir, start_step)
  for line in opening:
    log.message(line)
  dispatcher = StepDispatcher(experiment, log.compiled, config.steps_per_dispatch)
  evaluator = evaluate.Evaluator(experiment.model, experiment.mesh)
  totals = _fresh_totals(experiment.mesh)
  eval_metrics: dict[str, float] = {}
  skipped = 0  # steps whose update was skipped (on_nonfinite=skip), this invocation
  step = start_step
  with _checkpointer(experiment, workdir, start_step) as saver, _Preemption() as preemption:
    while step < total_steps:
      stop = experiment.next_boundary(step)
      state, totals = dispatcher.advance(state, totals, step, stop - step)
      step = stop
      log_due, eval_due, save_due = (experiment.is_due(step, every) for every in experiment.intervals)
      preempted = preemption.should_stop(step)
      if not (log_due or eval_due or save_due or preempted):
        continue
      summary = parallel.fetch(totals)  # the one host sync: before logging, evaluating or saving
      if summary['nonfinite_steps'] and config.on_nonfinite == 'stop':
        raise saver.nonfinite_error(int(summary['first_nonfinite_step']))
      if log_due:
        skipped += log.train(step, summary)
        totals = _fresh_totals(experiment.mesh)
      if eval_due:
        eval_metrics = log.evaluation(step, _evaluate(evaluator, state, experiment.eval_data))
      if save_due or preempted:
        saver.save(step, state, eval_metrics if eval_due else None)
      if preempted and step < total_steps:
        saver.wait()
        log.message(f'{preemption.signal_name}: saved a checkpoint at step {step} in {workdir}; rerun the same '
                    'command to resume')
        log.close()
        return eval_metrics
    if not eval_metrics:  # a run that was already finished: evaluate its last step
      eval_metrics = log.evaluation(step, _evaluate(evaluator, state, experiment.eval_data))
    if saver.last_saved != step:
      saver.save(step, state, eval_metrics)
    saver.wait()
  log.close()
  _check_skipped(skipped, step - start_step, workdir)
  return eval_metrics


def _evaluate(evaluator: evaluate.Evaluator, state: state_lib.TrainState, eval_data) -> dict[str, float]:
  """The evaluation of the weights, and of their moving average (`ema_test_accuracy`, ...) when kept."""
  result = evaluator.evaluate(state.variables, eval_data)
  if state.ema is not None:
    averaged = evaluator.evaluate(state.ema, eval_data)
    result.update({f'ema_{name}': averaged[name] for name in BEST_MODE if name in averaged})
  return result


def _initial_state(experiment: Experiment, workdir: str, init: finetune.Initialization | None):
  """(state, start step, lines to print): the latest checkpoint of `workdir` with the train data positioned
  after it, or a fresh state initialised per config.init_from."""
  def abstract_state(meta):  # the checkpoint's own shape: with a moving average or without
    return state_lib.abstract_train_state(experiment.model, experiment.tx, experiment.image_shape,
                                          experiment.mesh, ema=bool(meta.get('ema')))
  resumed = checkpoints.resume(workdir, abstract_state)
  if resumed is not None:
    start_step, state, meta = resumed
    experiment.restore_data(meta, start_step)
    saved_at = meta.get('saved_at') or 'before this version recorded the time'
    opening = [f'resumed from step {start_step} of {workdir} (checkpoint written {saved_at})']
    if bool(experiment.config.ema.decay) != (state.ema is not None):  # config.ema changed (allow_config_change)
      state = state_lib.with_ema(state) if experiment.config.ema.decay else state.replace(ema=None)
      opening.append(f'the checkpoint has no moving average of the weights: it starts from the step-{start_step} '
                     'weights' if experiment.config.ema.decay else 'config.ema.decay is 0: the checkpoint\'s moving '
                     'average of the weights is dropped')
  else:
    start_step = 0
    state = state_lib.init_train_state(experiment.model, experiment.tx, experiment.image_shape,
                                       experiment.config.seed, experiment.mesh, ema=bool(experiment.config.ema.decay))
    state = finetune.initialize(state, init)  # config.init_from
    opening = [init.summary()] if init is not None else []
  if start_step >= experiment.total_steps:
    opening.append(f'{workdir}: training already finished at step {start_step}; evaluating')
  return state, start_step, opening


class RunLog:
  """Everything a run reports: metrics.jsonl and TensorBoard (`metrics.MetricWriter`), the progress line, and
  curves.png at each evaluation and at the end."""

  def __init__(self, experiment: Experiment, workdir: str, start_step: int):
    self.experiment = experiment
    self.writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
    self.progress = metrics_lib.Progress(experiment.total_steps, start_step)

  def message(self, text: str) -> None:
    self.progress.message(text)

  def compiled(self, seconds: float, num_steps: int, step: int) -> None:
    self.message(f'compiled the train step ({num_steps} step{"s" * (num_steps > 1)} per dispatch) in '
                 f'{seconds:.1f}s')
    self.writer.write(step, {'compile_s': seconds})
    self.progress.restart_clock()  # compile time is not training throughput

  def train(self, step: int, summary: dict[str, Any]) -> int:
    """Logs the steps since the last log (metric totals `summary`); returns how many of them were skipped."""
    skipped = int(summary['nonfinite_steps'])
    if summary['examples'] == 0:  # every step of the interval was skipped: say so
      self.writer.write(step, {'nonfinite_steps': skipped})
      self.message(f'step {step}: all {skipped} steps since the last log had NaN/Inf loss or gradients and were '
                   'skipped')
      return skipped
    experiment = self.experiment
    loss = float(summary['loss'] / summary['examples'])
    learning_rate = float(experiment.schedule(step - 1))
    images_per_sec = self.progress.update(step, experiment.config.batch_size, loss=loss, lr=learning_rate)
    self.writer.write(step, {'train_loss': loss, 'train_accuracy': float(summary['correct'] / summary['examples']),
                             'learning_rate': learning_rate, 'images_per_sec': images_per_sec,
                             'epoch': step / experiment.steps_per_epoch,
                             **({'nonfinite_steps': skipped} if skipped else {})})
    return skipped

  def evaluation(self, step: int, result: dict[str, float]) -> dict[str, float]:
    self.writer.write(step, result)
    self.message(f"step {step}: test_accuracy {result['test_accuracy']:.4f} "
                 f"(error {100 * result['test_error']:.2f}%), test_loss {result['test_loss']:.4f}"
                 + (f", ema_test_accuracy {result['ema_test_accuracy']:.4f}" if 'ema_test_accuracy' in result else ''))
    self.writer.plot_curves()
    self.progress.restart_clock()  # evaluation time is not training throughput
    return result

  def close(self) -> None:
    self.writer.close()


class _Saver:
  """Asynchronous saves into the run's Checkpointer; a failed save stops the run with one error line naming the
  step that failed (`_save_failed`)."""

  def __init__(self, experiment: Experiment, workdir: str, checkpointer: checkpoints.Checkpointer, start_step: int):
    self.experiment, self.workdir, self.checkpointer = experiment, workdir, checkpointer
    self.last_saved = start_step

  def save(self, step: int, state: state_lib.TrainState, metrics: dict[str, float] | None) -> None:
    self.wait()  # the previous save first (Orbax's save waits for it too): its failure names its own step
    try:
      self.checkpointer.save(step, state, self.experiment.checkpoint_meta(), metrics=metrics)
    except Exception as error:  # pylint: disable=broad-except
      raise _save_failed(self.workdir, step, self.checkpointer, error) from None
    self.last_saved = step

  def wait(self) -> None:
    try:
      self.checkpointer.wait()
    except Exception as error:  # pylint: disable=broad-except  (an asynchronous save that failed)
      raise _save_failed(self.workdir, self.last_saved, self.checkpointer, error) from None

  def nonfinite_error(self, first_step: int) -> FloatingPointError:
    """config.on_nonfinite=stop: the error that stops the run, naming the checkpoint that is kept."""
    self.wait()
    kept = self.checkpointer.latest_step()
    kept = (f"The last good checkpoint (step {kept}) in {self.workdir} is kept" if kept is not None else
            f"No checkpoint was saved before it (the first save is at step {self.experiment.checkpoint_every})")
    return FloatingPointError(f"loss or gradients became NaN/Inf at step {first_step}; stopped. {kept}. Lower the "
                              "learning rate, add warm-up, or set config.on_nonfinite=skip")


@contextlib.contextmanager
def _checkpointer(experiment: Experiment, workdir: str, start_step: int) -> Iterator[_Saver]:
  """The run's Checkpointer for the `with` block's lifetime (closed on every exit path; see its __exit__)."""
  config = experiment.config
  with checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints, best_metric=config.best_metric,
                                best_mode=BEST_MODE.get(config.best_metric, 'max')) as checkpointer:
    yield _Saver(experiment, workdir, checkpointer, start_step)


def outcome(workdir: str, result: dict[str, float]) -> str:
  """Where a run's outputs are, after training: what the CLI prints on stdout (progress goes to stderr)."""
  root = storage.resolve(workdir)
  step = checkpoints.latest_step(workdir)
  accuracy = (f", test_accuracy {result['test_accuracy']:.4f} (error {100 * result['test_error']:.2f}%)"
              if 'test_accuracy' in result else '')
  history = root / workdir_lib.HISTORY_FILE
  lines = [f'run in {root}: step {step}{accuracy}',
           f'  checkpoints  {root / checkpoints.CHECKPOINT_DIR} (latest step {step})',
           f'  metrics      {root / metrics_lib.METRICS_FILE}',
           f'  curves       {root / metrics_lib.CURVES_FILE}',
           f'  config       {root / workdir_lib.CONFIG_FILE}'
           + (f' (changes: {history})' if storage.exists(history) else '')]
  return '\n'.join(lines)


#: A run (invocation) that skipped more than this fraction of its steps (on_nonfinite=skip) fails with exit
#: status 3 after saving; any skipped step is reported.
MAX_SKIPPED_FRACTION = 0.5


def _check_skipped(skipped: int, steps: int, workdir: str) -> None:
  if not skipped or not steps:
    return
  message = (f"{skipped} of the {steps} steps of this run had NaN/Inf loss or gradients and were skipped "
             "(config.on_nonfinite=skip)")
  if skipped > MAX_SKIPPED_FRACTION * steps:
    raise FloatingPointError(f"{message}: more than {MAX_SKIPPED_FRACTION:.0%}, so the model in {workdir} is "
                             "not trained as configured. Lower the learning rate or add warm-up")
  checkpoints.warn(message)


# The operating system's words for a write that failed for want of room or rights; named first in the error,
# since TensorStore's messages put them past the first 160 characters.
_OS_WRITE_ERRORS = ('No space left on device', 'File too large', 'Disk quota exceeded', 'Read-only file system',
                    'Permission denied', 'Input/output error')


def _save_failed(workdir: str, step: int, checkpointer, error: BaseException) -> UserError:
  reason = checkpoints.describe_error(error)
  cause = next((cause for cause in _OS_WRITE_ERRORS if cause in str(error) and cause not in reason), None)
  reason = f'{cause}: {reason}' if cause else reason
  kept = [s for s in checkpointer.all_steps() if s < step]
  return UserError(f"saving the checkpoint of step {step} in {workdir} failed ({reason}); stopped. Free disk "
                   f"space or fix the directory and rerun the same command: it resumes from "
                   f"{f'step {max(kept)}' if kept else 'the start'}")
