"""Learning-rate schedules and optimizers (Optax), built from `config.schedule` and `config.optimizer`.

The papers' recipes:
  - CIFAR (He et al. 2015 Sec. 4.2, 2016 appendix): SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1
    divided by 10 at 32k and 48k iterations, stop at 64k; a constant warm-up at 0.01 for the first 400
    iterations (2016: "in all CIFAR experiments"; 2015: ResNet-110 only).
  - ImageNet (He et al. 2015 Sec. 3.4, fb.resnet.torch): lr 0.1 for batch 256, divided by 10 at epochs 30 and
    60 of 90.
Weight decay is the papers' coupled L2: `wd * param` is added to the gradient before momentum, exactly as
Caffe/Torch SGD do.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax.config import resolve_steps
from resnet_jax.errors import UserError

OPTIMIZERS = ('sgd',)
SCHEDULES = ('step', 'cosine', 'constant')
WARMUPS = ('none', 'constant', 'linear')
WEIGHT_DECAY_TARGETS = ('all', 'kernels')


def base_learning_rate(schedule_config: ml_collections.ConfigDict, batch_size: int) -> float:
  """`base_lr`, scaled linearly with the batch if `reference_batch_size` is set (Goyal et al. 2017)."""
  lr = float(schedule_config.base_lr)
  reference = schedule_config.get('reference_batch_size')
  if reference:
    lr *= batch_size / reference
  return lr


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: float, total_steps: int) -> optax.Schedule:
  """Builds the learning-rate schedule; raises UserError for an inconsistent one (before any compile)."""
  schedule_config = config.schedule
  if schedule_config.name not in SCHEDULES:
    raise UserError(f"unknown schedule {schedule_config.name!r}; choose one of {', '.join(SCHEDULES)}")
  warmup_kind = schedule_config.get('warmup') or 'none'
  if warmup_kind not in WARMUPS:
    raise UserError(f"unknown warmup {warmup_kind!r}; choose one of {', '.join(WARMUPS)}")
  base_lr = base_learning_rate(schedule_config, config.batch_size)
  warmup_steps = 0 if warmup_kind == 'none' else resolve_steps(schedule_config, 'warmup', steps_per_epoch, default=0)
  if warmup_steps >= total_steps and warmup_steps > 0:
    raise UserError(f"warm-up of {warmup_steps} steps is not shorter than training ({total_steps} steps); "
                    "shorten config.schedule.warmup_steps/warmup_epochs or train longer")

  boundaries: Sequence[int] = ()
  if schedule_config.name == 'step':
    boundaries = _boundaries(schedule_config, steps_per_epoch)
    increasing = all(earlier < later for earlier, later in zip(boundaries, boundaries[1:]))
    if any(boundary <= 0 for boundary in boundaries) or not increasing:
      raise UserError(f"learning-rate boundaries must be positive and strictly increasing, got {list(boundaries)}")
    # Boundaries past the end are allowed: a shortened (debug) or to-be-extended run keeps the recipe.
  decay_factor = float(schedule_config.decay_factor)
  boundaries_array = jnp.asarray(boundaries, jnp.int32)
  warmup_factor = float(schedule_config.get('warmup_factor') or 0.0)

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    if schedule_config.name == 'step':
      decays = jnp.sum(step >= boundaries_array) if boundaries else 0
      lr = base_lr * decay_factor ** decays
    elif schedule_config.name == 'cosine':
      progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
      lr = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
      lr = jnp.asarray(base_lr, jnp.float32)
    if warmup_kind == 'constant':
      lr = jnp.where(step < warmup_steps, base_lr * warmup_factor, lr)
    elif warmup_kind == 'linear':
      lr = jnp.where(step < warmup_steps, base_lr * step / max(warmup_steps, 1), lr)
    return jnp.asarray(lr, jnp.float32)

  return schedule


def _boundaries(schedule_config: ml_collections.ConfigDict, steps_per_epoch: float) -> tuple[int, ...]:
  in_steps, in_epochs = schedule_config.get('boundaries_steps'), schedule_config.get('boundaries_epochs')
  if in_steps is not None and in_epochs is not None:
    raise UserError("config.schedule sets both boundaries_steps and boundaries_epochs; keep one")
  as_tuple = lambda value: tuple(value) if isinstance(value, (tuple, list)) else (value,)  # '8' -> (8,)
  if in_steps is not None:
    return tuple(int(boundary) for boundary in as_tuple(in_steps))
  if in_epochs is not None:
    return tuple(int(round(float(epoch) * steps_per_epoch)) for epoch in as_tuple(in_epochs))
  return ()


def weight_decay_mask(target: str) -> Callable:
  if target not in WEIGHT_DECAY_TARGETS:
    raise UserError(f"unknown config.optimizer.weight_decay_on {target!r}; choose one of "
                    f"{', '.join(WEIGHT_DECAY_TARGETS)}")
  if target == 'all':
    return lambda params: jax.tree.map(lambda _: True, params)

  def kernels_only(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)
  return kernels_only


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  optimizer_config = config.optimizer
  decay = optax.identity()
  if optimizer_config.weight_decay:
    decay = optax.add_decayed_weights(float(optimizer_config.weight_decay),
                                      mask=weight_decay_mask(optimizer_config.weight_decay_on))
  if optimizer_config.name not in OPTIMIZERS:
    raise UserError(f"unknown optimizer {optimizer_config.name!r}; choose one of {', '.join(OPTIMIZERS)}")
  # Torch/Caffe SGD: v <- momentum * v + g; p <- p - lr * v (optax.sgd is the same update).
  update = optax.sgd(schedule, momentum=float(optimizer_config.momentum) or None,
                     nesterov=bool(optimizer_config.nesterov))
  return optax.chain(decay, update)
