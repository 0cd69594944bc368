"""Training: `train_and_evaluate(config, workdir)` and the jitted train step.

One step (DESIGN.md): uint8 batch sharded over `data` -> jit(train_step): augment on device -> model.apply
(compute dtype per config, float32 params) -> float32 logits -> cross-entropy (float32) -> grads -> coupled L2 +
SGD -> new state (donated). Metrics stay on the devices, summed over steps, and are fetched once per log
interval: no host synchronisation per step.

Everything a run needs is built and validated by `build_experiment` before anything is compiled or written,
so a bad config fails with one UserError line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import checkpoints
from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import metrics as metrics_lib
from resnet_jax import optim
from resnet_jax import parallel
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.errors import UserError
from resnet_jax.losses import cross_entropy

NONFINITE_POLICIES = ('stop', 'skip')
_NO_STEP = np.iinfo(np.int32).max


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. Pure pytree: jit- and Orbax-friendly."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict[str, Any]:
    return {'params': self.params, 'batch_stats': self.batch_stats}


@dataclasses.dataclass
class Experiment:
  """A validated run: model, optimizer, data and durations, nothing compiled yet."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model: classifier.Classifier
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  train_data: Any  # pipelines.DeviceResidentData (kind 'device') or streaming.StreamingTrainData ('grain')
  eval_data: Any   # streaming.EvalData: padded, masked global batches
  steps_per_epoch: float
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  @property
  def augment(self) -> Callable[[jax.Array, jax.Array], jax.Array]:
    return self.train_data.device_augment

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_data.image_shape)

  @property
  def num_classes(self) -> int:
    return int(self.train_data.num_classes)

  def model_info(self) -> dict[str, Any]:
    """What `checkpoints.load` needs besides the config to rebuild the model."""
    return {'num_classes': self.num_classes, 'mean': self.model.mean, 'std': self.model.std,
            'image_shape': list(self.image_shape)}

  def checkpoint_meta(self) -> dict[str, Any]:
    meta = {'model': self.model_info(), 'config': self.config.to_dict()}
    if self.train_data.kind == 'grain':
      meta['data_state'] = self.train_data.get_state()
    return meta

  def close(self) -> None:
    if hasattr(self.train_data, 'close'):
      self.train_data.close()


def build_experiment(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, start_step: int = 0) -> Experiment:
  """Validates the config against data, model and devices, then loads the data (device-resident sets) or
  starts the input pipeline at `start_step` (streamed sets). Compiles and writes nothing."""
  config_lib.validate(config)
  parallel.check_batch_divisible(config.batch_size, mesh)
  if config.get('on_nonfinite', 'stop') not in NONFINITE_POLICIES:
    raise UserError(f"unknown config.on_nonfinite {config.on_nonfinite!r}; choose stop or skip")
  pipelines.input_options(config)  # raises for unknown input options
  ds = config.dataset
  train_source = sources.open_split(ds.name, ds.train_split, ds.get('data_dir'))
  eval_source = sources.open_split(ds.name, ds.eval_split, ds.get('data_dir'))

  # Model options and the BN group size are checked before the data is loaded.
  group = classifier.bn_group_size(config)
  per_device = config.batch_size // mesh.devices.size
  if group is not None and per_device % group:
    raise UserError(f"config.batch_norm.group_size={group} does not divide the per-device batch {per_device} "
                    f"(batch_size {config.batch_size} over {mesh.devices.size} devices); use a divisor of "
                    f"{per_device}, or --config.batch_norm.mode=global")
  classifier.model_from_config(config, train_source.num_classes)  # raises for unknown names/options

  steps_per_epoch = len(train_source) / config.batch_size
  total_steps = config_lib.resolve_steps(config, 'total', steps_per_epoch)
  if total_steps <= 0:
    raise UserError(f"training length is {total_steps} steps; set config.total_steps or total_epochs > 0")
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, schedule)
  every = lambda name, default: config_lib.resolve_steps(config, name, steps_per_epoch, default) or total_steps
  log_every = every('log_every', 100)
  eval_every = every('eval_every', total_steps)
  checkpoint_every = every('checkpoint_every', total_steps)

  eval_data = pipelines.make_eval_batches(config, mesh, eval_source)
  train_data = pipelines.make_train_data(config, mesh, train_source, start_step=start_step)
  model = classifier.model_from_config(config, train_data.num_classes, train_data.mean, train_data.std)
  return Experiment(config=config, mesh=mesh, model=model, tx=tx, schedule=schedule, train_data=train_data,
                    eval_data=eval_data, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                    log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every)


# ----------------------------------------------------------------------------------------------------------
# State and step.


def init_train_state(model: classifier.Classifier, tx: optax.GradientTransformation, image_shape, seed: int,
                     mesh: jax.sharding.Mesh) -> TrainState:
  """Initialises parameters directly as replicated global arrays (no host round trip)."""
  def init(key):
    variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))
  key = jax.random.fold_in(jax.random.key(seed), 0)
  # Initialisation runs once, so it is compiled without backend optimisation: the per-parameter random
  # number generation otherwise dominates start-up (quickstart on CPU: 10.8 s -> 1.4 s to compile).
  compiled = jax.jit(init, out_shardings=parallel.replicated(mesh)).lower(key).compile(
      compiler_options={'xla_backend_optimization_level': 0})
  return compiled(key)


def abstract_train_state(model, tx, image_shape, mesh) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without computing it (for restoring)."""
  def init(key):
    variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(variables['params']))
  shapes = jax.eval_shape(init, jax.random.key(0))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def step_keys(seed: int, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(augmentation, dropout) keys for `step`: a pure function of (seed, step), so resumes are exact."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
  return jax.random.split(key)


def make_train_step(model, tx, augment, config) -> Callable:
  """Returns train_step(state, batch) -> (state, metrics) for uint8 batches {'image', 'label'}."""
  label_smoothing = float(config.get('label_smoothing', 0.0))
  skip_nonfinite = config.get('on_nonfinite', 'stop') == 'skip'
  seed = int(config.seed)

  def train_step(state: TrainState, batch):
    augment_key, dropout_key = step_keys(seed, state.step)
    images = augment(augment_key, batch['image'])
    labels = batch['label']

    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, images, train=True,
                                    rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      loss = jnp.mean(cross_entropy(logits, labels, label_smoothing))
      return loss, (logits, updates.get('batch_stats', state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    if skip_nonfinite:  # keep the previous parameters and statistics for this step
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params, opt_state, batch_stats = keep(params, state.params), keep(opt_state, state.opt_state), \
          keep(batch_stats, state.batch_stats)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    metrics = {'loss': jnp.where(finite, loss, 0.0) * labels.shape[0], 'correct': correct.astype(jnp.float32),
               'examples': jnp.float32(labels.shape[0]), 'finite': finite}
    return new_state, metrics

  return train_step


def zero_accumulator() -> dict[str, jax.Array]:
  return {'loss': jnp.float32(0), 'correct': jnp.float32(0), 'examples': jnp.float32(0),
          'first_nonfinite_step': jnp.int32(_NO_STEP), 'nonfinite_steps': jnp.int32(0)}


def accumulate(acc, metrics, step):
  bad = ~metrics['finite']
  return {'loss': acc['loss'] + metrics['loss'], 'correct': acc['correct'] + metrics['correct'],
          'examples': acc['examples'] + jnp.where(bad, 0.0, metrics['examples']),
          'first_nonfinite_step': jnp.where(bad, jnp.minimum(acc['first_nonfinite_step'], step),
                                            acc['first_nonfinite_step']),
          'nonfinite_steps': acc['nonfinite_steps'] + bad.astype(jnp.int32)}


def make_resident_runner(exp: Experiment) -> Callable:
  """jit(run(state, acc, arrays, num_steps)): `num_steps` train steps on device-resident data per dispatch."""
  train_step = make_train_step(exp.model, exp.tx, exp.augment, exp.config)
  data = exp.train_data
  replicated = parallel.replicated(exp.mesh)

  def one(carry, _):
    state, acc, arrays = carry
    step = state.step
    state, metrics = train_step(state, data.batch(arrays, step))
    return (state, accumulate(acc, metrics, step), arrays), None

  @functools.partial(jax.jit, static_argnums=(3,), donate_argnums=(0, 1), out_shardings=(replicated, replicated))
  def run(state, acc, arrays, num_steps):
    if num_steps == 1:
      (state, acc, _), _ = one((state, acc, arrays), None)
    else:
      (state, acc, _), _ = jax.lax.scan(one, (state, acc, arrays), None, length=num_steps)
    return state, acc

  return run


def make_streaming_runner(model, tx, augment, config, mesh: jax.sharding.Mesh) -> Callable:
  """jit(run(state, acc, batch)): one train step on a batch fed from the host pipeline.

  Built from parts rather than an Experiment so that benchmarks can run the very same step on synthetic
  batches (`augment` is the on-device part of the input's augmentation)."""
  train_step = make_train_step(model, tx, augment, config)
  replicated = parallel.replicated(mesh)

  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=(replicated, replicated))
  def run(state, acc, batch):
    step = state.step
    state, metrics = train_step(state, batch)
    return state, accumulate(acc, metrics, step)

  return run


class _Steps:
  """Runs n train steps from the experiment's input, compiling ahead of time so compile time is reported."""

  def __init__(self, exp: Experiment, on_compile: Callable[[float, int], None], steps_per_dispatch: int = 1):
    self.exp = exp
    self.on_compile = on_compile
    self.steps_per_dispatch = steps_per_dispatch
    self.resident = exp.train_data.kind == 'device'
    self.runner = (make_resident_runner(exp) if self.resident else
                   make_streaming_runner(exp.model, exp.tx, exp.augment, exp.config, exp.mesh))
    self.compiled: dict[int, Any] = {}

  def _compile(self, key: int, *args) -> Any:
    if key not in self.compiled:
      started = time.perf_counter()
      self.compiled[key] = self.runner.lower(*args).compile()
      self.on_compile(time.perf_counter() - started, key)
    return self.compiled[key]

  def __call__(self, state: TrainState, acc, num_steps: int):
    if self.resident:
      # Two programs at most: steps_per_dispatch steps, and one. A shorter stretch (up to a log, eval or checkpoint
      # step that steps_per_dispatch does not divide, e.g. with fractional epochs) runs one step per dispatch
      # rather than compiling a program per length (~10 s each for a ResNet-56 on an H100).
      chunk = num_steps if num_steps == self.steps_per_dispatch else 1
      arrays = self.exp.train_data.arrays
      for _ in range(num_steps // chunk):
        state, acc = self._compile(chunk, state, acc, arrays, chunk)(state, acc, arrays)
      return state, acc
    for _ in range(num_steps):
      batch = next(self.exp.train_data)
      state, acc = self._compile(1, state, acc, batch)(state, acc, batch)
    return state, acc


# ----------------------------------------------------------------------------------------------------------
# The loop.


class _Preemption:
  """Turns SIGTERM (cluster preemption) into 'save at the next step boundary and exit cleanly'.

  One process: a SIGTERM handler sets a flag. Several processes: JAX's coordination service propagates the
  notice to every process and `reached_preemption_sync_point` names the same step on all of them, at no
  per-step communication cost.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` (or checks it is a writable directory); the first write of a run, after validation."""
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise UserError(f"--workdir {workdir} is a file, not a directory; choose another path")
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"--workdir {workdir} is not writable; choose a directory you can write to")
    return
  try:
    os.makedirs(path, exist_ok=True)  # several processes may race here
  except OSError as e:
    raise UserError(f"--workdir {workdir} cannot be created ({e.strerror}); choose a writable path") from None


def check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir resumes only the run it holds: the model and dataset must match its config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = config_lib.from_json(f.read())
  for section in ('model', 'dataset'):
    if saved.get(section) is not None and saved[section].to_dict() != config[section].to_dict():
      raise UserError(f"--workdir {workdir} holds a run with a different config.{section} "
                      f"({json.dumps(saved[section].to_dict(), sort_keys=True)}); use a new --workdir to start "
                      "another run, or the same config to resume this one")


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA compilation cache for every later compile of this process: a resumed or repeated run loads
  its compiled steps instead of compiling them (every entry, however quick to compile)."""
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"config.compilation_cache_dir {path!r} cannot be created ({e.strerror}); choose a writable "
                    "directory, or '' for no cache") from None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains and evaluates per `config`, resuming from the latest checkpoint in `workdir` if there is one.

  Returns the final evaluation metrics.
  """
  mesh = parallel.make_mesh()
  check_same_run(config, workdir)
  if config.get('compilation_cache_dir'):
    enable_compilation_cache(config.compilation_cache_dir)
  exp = build_experiment(config, mesh, start_step=checkpoints.latest_step(workdir) or 0)
  try:
    prepare_workdir(workdir)
    return _train_loop(exp, workdir)
  finally:
    exp.close()


def _train_loop(exp: Experiment, workdir: str) -> dict[str, float]:
  """The loop of train_and_evaluate, on a built experiment and a prepared workdir."""
  config, mesh = exp.config, exp.mesh

  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config_lib.to_json(config))
  ckpt = checkpoints.Checkpointer(workdir, keep=int(config.get('keep_checkpoints', 3)),
                                  best_metric=config.get('best_metric', 'test_accuracy'))
  state = None
  start_step = ckpt.latest_step()
  if start_step is not None:
    state, meta = ckpt.restore(start_step, abstract_train_state(exp.model, exp.tx, exp.image_shape, mesh))
    if exp.train_data.kind == 'grain':
      exp.train_data.set_state(meta.get('data_state', {'step': start_step}))
    logging.info('Resumed from step %d', start_step)
  else:
    state = init_train_state(exp.model, exp.tx, exp.image_shape, config.seed, mesh)
    start_step = 0

  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step)
  progress = metrics_lib.Progress(exp.total_steps, start_step)
  def on_compile(seconds: float, num_steps: int) -> None:
    progress.message(f'compiled the train step ({num_steps} step{"s" * (num_steps > 1)} per dispatch) in '
                     f'{seconds:.1f}s')
    writer.write(step, {'compile_s': seconds})
    progress.restart_clock()

  steps_per_dispatch = max(1, int(config.get('steps_per_dispatch', 1)))
  run = _Steps(exp, on_compile, steps_per_dispatch)
  evaluator = evaluate.Evaluator(exp.model, mesh)
  acc = jax.device_put(zero_accumulator(), parallel.replicated(mesh))
  eval_metrics: dict[str, float] = {}
  last_saved = start_step
  if start_step >= exp.total_steps:
    progress.message(f'{workdir}: training already finished at step {start_step}; evaluating')

  def run_eval(step):
    result = evaluator.evaluate(state.variables, exp.eval_data)
    writer.write(step, result)
    progress.message(f"step {step}: test_accuracy {result['test_accuracy']:.4f} "
                     f"(error {100 * result['test_error']:.2f}%), test_loss {result['test_loss']:.4f}")
    progress.restart_clock()  # evaluation time is not training throughput
    return result

  step = start_step
  with _Preemption() as preemption:
    while step < exp.total_steps:
      boundaries = [exp.total_steps, step + steps_per_dispatch]
      boundaries += [(step // every + 1) * every for every in (exp.log_every, exp.eval_every, exp.checkpoint_every)]
      stop = min(boundaries)
      state, acc = run(state, acc, stop - step)
      step = stop
      log_due = step % exp.log_every == 0 or step == exp.total_steps
      eval_due = step % exp.eval_every == 0 or step == exp.total_steps
      ckpt_due = step % exp.checkpoint_every == 0 or step == exp.total_steps
      stop_now = preemption.should_stop(step)
      if log_due or eval_due or ckpt_due or stop_now:
        summary = parallel.fetch(acc)  # the one host sync: before logging, evaluating or saving
        if summary['nonfinite_steps'] and config.get('on_nonfinite', 'stop') == 'stop':
          ckpt.wait()
          raise FloatingPointError(
              f"loss or gradients became NaN/Inf at step {int(summary['first_nonfinite_step'])}; stopped. The "
              f"last good checkpoint (step {ckpt.latest_step()}) in {workdir} is kept. Lower the learning rate, "
              "add warm-up, or set config.on_nonfinite=skip")
        if log_due and summary['examples'] > 0:
          loss = float(summary['loss'] / summary['examples'])
          lr = float(exp.schedule(step - 1))
          images_per_sec = progress.update(step, config.batch_size, loss=loss, lr=lr)
          writer.write(step, {'train_loss': loss, 'train_accuracy': float(summary['correct'] / summary['examples']),
                              'learning_rate': lr, 'images_per_sec': images_per_sec,
                              'epoch': step / exp.steps_per_epoch,
                              **({'nonfinite_steps': int(summary['nonfinite_steps'])}
                                 if summary['nonfinite_steps'] else {})})
          acc = jax.device_put(zero_accumulator(), parallel.replicated(mesh))
      if eval_due:
        eval_metrics = run_eval(step)
        writer.plot_curves()
      if ckpt_due or stop_now:
        ckpt.save(step, state, exp.checkpoint_meta(), metrics=eval_metrics if eval_due else None)
        last_saved = step
      if stop_now and step < exp.total_steps:
        progress.message(f'SIGTERM: saved a checkpoint at step {step} in {workdir}; rerun the same command to resume')
        ckpt.wait()
        writer.close()
        return eval_metrics
  if not eval_metrics:
    eval_metrics = run_eval(step)
  if last_saved != step:
    ckpt.save(step, state, exp.checkpoint_meta(), metrics=eval_metrics)
  ckpt.wait()
  writer.plot_curves()
  writer.close()
  return eval_metrics
